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
    argv = [
        "study",
        "payoff",
        "--quick",
        "--seeds",
        "1",
        "--data",
        f"fashion-mnist:{tmp_path}",
        "--out",
        str(out),
        "--report-dir",
        str(reports),
        "--no-progress",
        "--set",
        "study.orders=[semantic]",
        "--set",
        "study.labels_per_class=[2]",
        "--set",
        "study.val_size=30",
        "--set",
        "study.finetune=[batch_size=10,limit=200,budget_steps=0]",
        "--set",
        "study.epochs=[1]",
        "--set",
        "study.curve_steps=[]",
    ]
    assert main(argv) == 0
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [(r["kind"], r["encoder"]) for r in rows] == [
        ("floor", "pixels"),
        ("finetune", "scratch"),
        ("pretrain", "semantic"),
        ("finetune", "semantic"),
    ]  # encoder by encoder: an encoder's runs before the next pretraining
    assert rows[0]["train_images"] == rows[1]["train_images"] == 20  # floors learn from fine-tuning's images
    import yaml

    from semaim.config import EncoderConfig
    from semaim.data import open_dataset
    from semaim.data.splits import labelled_subset
    from semaim.study.payoff import PayoffConfig, finetune_config

    plan = PayoffConfig.from_dict(yaml.safe_load((out / "config.yaml").read_text())).study
    assert plan.precision in ("fp32", "bf16")  # settled when the study started, recorded for every process
    ran = yaml.safe_load((out / "runs" / "finetune-semantic-K2-seed0" / "config.yaml").read_text())
    assert ran["finetune"]["precision"] == plan.precision
    ft = finetune_config(plan, EncoderConfig(random=True), 2, 0).finetune
    labels = open_dataset(f"fashion-mnist:{tmp_path}", "train").labels
    images, _ = labelled_subset(
        labels,
        val_size=ft.val_size,
        split_seed=ft.split_seed,
        per_class=2,
        fraction=None,
        seed=ft.seed,
        limit=ft.limit,
    )
    assert len(images) == 20 and int(images.max()) < 200 + 30  # drawn from the limited pool, as fine-tuning
    report = (reports / "payoff-fashion-mnist.md").read_text()
    assert "fine-tuned from semantic" in report and "`semantic` − scratch" in report
    assert (reports / "payoff-fashion-mnist.png").stat().st_size > 0 and (
        reports / "payoff-fashion-mnist.jsonl"
    ).is_file()

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

    import shutil  # the rows kept, the run folders lost (a fresh checkout): a run that needs them redoes them

    lines = (out / "results.jsonl").read_text().splitlines()
    (out / "results.jsonl").write_text("\n".join(lines[:-1]) + "\n")
    shutil.rmtree(out / "runs")
    capsys.readouterr()
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert (
        "[again] ('pretrain', 'semantic', -1, 0): its files were gone; done again, it reproduces its row"
        in printed
    )
    again = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert (
        len(again) == 4 and again[-1]["test_top1"] == rows[-1]["test_top1"]
    )  # the same encoder, the same score


def test_curve_scores_the_initialisation_every_kept_checkpoint_and_the_last(tmp_path):
    make_fmnist_dir(tmp_path, n_train=300, n_test=50)
    out = tmp_path / "study"
    argv = [
        "study",
        "payoff",
        "--quick",
        "--seeds",
        "1",
        "--data",
        f"fashion-mnist:{tmp_path}",
        "--out",
        str(out),
        "--report-dir",
        str(tmp_path / "reports"),
        "--no-progress",
        "--set",
        "study.orders=[semantic]",
        "--set",
        "study.labels_per_class=[2]",
        "--set",
        "study.epochs=[1]",
        "--set",
        "study.val_size=30",
        "--set",
        "study.finetune=[batch_size=10,limit=100,budget_steps=0]",
        "--set",
        "study.curve_labels=2",
    ]
    assert main(argv) == 0
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    curve = [r for r in rows if r["kind"] == "curve"]
    steps_per_epoch = 300 // 64  # pretraining reads the whole training split; batch 64, drop_last
    assert [r["step"] for r in curve] == [0, 4, 2 * steps_per_epoch]
    assert (out / "runs" / "pretrain-semantic-seed0" / "checkpoint-step4.pt").is_file()
    minutes = [r["pretrain_minutes"] for r in curve]
    assert minutes[0] == 0 < minutes[1] < minutes[2]
    tuned = {r["encoder"]: r["test_top1"] for r in rows if r["kind"] == "finetune"}
    assert (curve[0]["test_top1"], curve[-1]["test_top1"]) == (
        tuned["scratch"],
        tuned["semantic"],
    )  # reused runs
    assert not (out / "runs" / "curve-finetune-step8").exists()
    report = (tmp_path / "reports" / "payoff-fashion-mnist.md").read_text()
    assert "Quality against pretraining compute" in report and "| 4 |" in report


def test_only_seeds_runs_one_seed_now_and_the_rest_on_a_rerun(tmp_path):
    make_fmnist_dir(tmp_path, n_train=200, n_test=20)
    out = tmp_path / "study"
    argv = [
        "study",
        "payoff",
        "--quick",
        "--data",
        f"fashion-mnist:{tmp_path}",
        "--out",
        str(out),
        "--no-progress",
        "--set",
        "study.orders=[]",
        "--set",
        "study.labels_per_class=[2]",
        "--set",
        "study.epochs=[1]",
        "--set",
        "study.val_size=30",
        "--set",
        "study.finetune=[batch_size=10,limit=50,budget_steps=0]",
        "--set",
        "study.curve_steps=[]",
    ]
    assert main([*argv, "--only-seeds", "1"]) == 0
    seeds = [json.loads(line)["seed"] for line in (out / "results.jsonl").read_text().splitlines()]
    assert seeds == [1, 1]  # its floor and its scratch fine-tuning
    report = next(out.glob("payoff-*.md"))
    assert "over 1 of the 2 planned seeds (1);" in report.read_text()  # the ± stands on what is done
    assert main(argv) == 0
    assert "over 2 seeds;" in report.read_text()
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert sorted((r["kind"], r["seed"]) for r in rows) == [
        ("finetune", 0),
        ("finetune", 1),
        ("floor", 0),
        ("floor", 1),
    ]


def test_plans_are_checked():
    assert payoff_plan("cluttered-fashion-mnist").pretrain[:3] == (
        "train.epochs=2",
        "model.img_size=64",
        "model.patch_size=8",
    )
    with pytest.raises(ConfigError, match="study.orders"):
        PayoffPlan(orders=("spiral",)).validate()
    with pytest.raises(ConfigError, match="study.labels_per_class"):
        PayoffPlan(labels_per_class=(-1,)).validate()
    with pytest.raises(ConfigError, match="study.curve_labels"):
        PayoffPlan(labels_per_class=(600, 0), curve_labels=60).validate()
    with pytest.raises(ConfigError, match="study.epochs"):
        PayoffPlan(labels_per_class=(60, 0), epochs=(40,)).validate()
    assert payoff_plan("fashion-mnist", quick=True).validate()  # its epochs match its label budgets
    from semaim.config import EncoderConfig
    from semaim.study.payoff import finetune_config

    plan = PayoffPlan(labels_per_class=(60, 0), epochs=(40, 2), finetune=("epochs=40", "warmup_epochs=4"))
    ft = finetune_config(plan.validate(), EncoderConfig(random=True), 0, 0).finetune
    assert (ft.epochs, ft.warmup_epochs, ft.labels_per_class) == (2, 0.2, None)  # the schedule shrunk alike
    with pytest.raises(ConfigError, match="finetune.epohcs|unknown field"):
        PayoffPlan(finetune=("epohcs=2",)).validate()


def test_the_plan_settles_one_precision_for_every_run_of_the_study(tmp_path, monkeypatch):
    import yaml

    from semaim.config import EncoderConfig
    from semaim.study import payoff as study
    from semaim.study.payoff import PayoffConfig, settle_precision

    with pytest.raises(ConfigError, match="study.precision"):
        PayoffPlan(precision="fp8").validate()
    for native, expected in ((True, "bf16"), (False, "fp32")):  # a new study: this machine's native choice
        monkeypatch.setattr(
            study, "resolve_precision", lambda p, d, native=native: "bf16" if native else "fp32"
        )
        assert settle_precision(PayoffPlan(), tmp_path).precision == expected
    plan = PayoffPlan(data="cluttered-fashion-mnist", segment=("finetune",), precision="fp32")
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(PayoffConfig(plan).to_dict()))
    assert settle_precision(PayoffPlan(), tmp_path).precision == "fp32"  # the recorded one, on any machine
    assert settle_precision(PayoffPlan(precision="bf16"), tmp_path).precision == "bf16"  # asked for: kept
    older = PayoffConfig(plan).to_dict()
    del older["study"]["precision"]
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(older))  # a study from before the field: as it ran
    assert settle_precision(PayoffPlan(), tmp_path).precision == "auto"
    assert study.pretrain_config(plan, "semantic", 0).train.precision == "fp32"
    assert study.finetune_config(plan, EncoderConfig(random=True), 60, 0).finetune.precision == "fp32"
    assert study.segment_config(plan, EncoderConfig(random=True), "finetune", 0).segment.precision == "fp32"


def test_the_payoff_study_runs_on_an_image_folder(tmp_path):
    """``--data PATH``: a folder of the user's own images (train/ and val/ class sub-folders)."""
    from tests.conftest import make_image_folder

    classes = ("cat", "dog", "owl")
    make_image_folder(tmp_path / "photos" / "train", classes=classes, per_class=24)
    make_image_folder(tmp_path / "photos" / "val", classes=classes, per_class=6, seed=1)
    out = tmp_path / "study"
    argv = ["study", "payoff", "--quick", "--seeds", "1", "--data", str(tmp_path / "photos")]
    argv += ["--out", str(out), "--no-progress", "--set", "study.val_size=9"]
    assert main([*argv, "--set", "study.finetune=[batch_size=8,budget_steps=0]"]) == 0
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    tuned = {(r["encoder"], r["labels"]): r for r in rows if r["kind"] == "finetune"}
    assert set(tuned) == {(e, k) for e in ("scratch", "semantic", "raster") for k in (4, 0)}
    assert tuned["semantic", 4]["train_images"] == 4 * len(classes)  # 4 labelled images per class
    assert tuned["semantic", 0]["train_images"] == 3 * 24 - 9  # every label but the validation split
    report = (out / "payoff-photos.md").read_text()
    assert "Fine-tuning on `" in report and "fine-tuned from semantic" in report
