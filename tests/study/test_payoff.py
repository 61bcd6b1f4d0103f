"""The payoff study: every run of a tiny plan, the report and chart, and a rerun that redoes only what is missing."""

from __future__ import annotations

import json

import pytest

from semaim.cli import main
from semaim.errors import ConfigError
from semaim.study.payoff import PayoffPlan, payoff_plan
from tests.conftest import make_fmnist_dir


def test_quick_study_end_to_end_then_resume_recomputes_only_the_missing_run(tmp_path, capsys):
    make_fmnist_dir(tmp_path, n_train=300, n_test=50)
    out, reports = tmp_path / "study", tmp_path / "reports"
    argv = ["study", "payoff", "--quick", "--seeds", "1", "--data", f"fashion-mnist:{tmp_path}", "--out", str(out),
            "--report-dir", str(reports), "--no-progress", "--set", "study.orders=[semantic]",
            "--set", "study.labels_per_class=[2]", "--set", "study.val_size=30",
            "--set", "study.finetune=[epochs=1,batch_size=10,limit=200]"]  # fmt: skip
    assert main(argv) == 0
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [(r["kind"], r["encoder"]) for r in rows] == [
        ("pretrain", "semantic"), ("floor", "pixels"), ("finetune", "scratch"), ("finetune", "semantic"),
    ]  # fmt: skip
    assert rows[1]["train_images"] == rows[2]["train_images"] == 20  # floors learn from fine-tuning's images
    report = (reports / "payoff-fashion-mnist.md").read_text()
    assert "fine-tuned from semantic" in report and "`semantic` − scratch" in report
    assert (reports / "payoff-fashion-mnist.png").stat().st_size > 0 and (reports / "payoff-fashion-mnist.jsonl").is_file()

    pretrained = out / "runs" / "pretrain-semantic-seed0" / "checkpoint-last.pt"
    before = pretrained.stat().st_mtime_ns
    lines = (out / "results.jsonl").read_text().splitlines()
    (out / "results.jsonl").write_text("\n".join(lines[:-1]) + "\n")  # as if cut before the last run ended
    capsys.readouterr()
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "[4] ('finetune', 'semantic', 2, 0)" in printed and "[3]" not in printed
    assert pretrained.stat().st_mtime_ns == before
    assert len((out / "results.jsonl").read_text().splitlines()) == 4


def test_plans_are_checked():
    assert payoff_plan("cluttered-fashion-mnist").pretrain[:2] == ("model.img_size=64", "model.patch_size=8")
    with pytest.raises(ConfigError, match="study.orders"):
        PayoffPlan(orders=("spiral",)).validate()
    with pytest.raises(ConfigError, match="study.labels_per_class"):
        PayoffPlan(labels_per_class=(-1,)).validate()
    with pytest.raises(ConfigError, match="finetune.epohcs|unknown field"):
        PayoffPlan(finetune=("epohcs=2",)).validate()
