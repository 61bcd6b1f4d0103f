"""The order study: every order of the registry (and the plan's named variants) pretrained and scored by
fine-tuning, frozen probes and segmentation; the orders report and the payoff report beside it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from semaim.cli import main
from semaim.config import PretrainConfig
from semaim.errors import ConfigError
from semaim.model.orders import ORDERS
from semaim.study.orders import orders_plan
from semaim.study.payoff import PayoffPlan, payoff_plan, pretrain_config
from semaim.study.runner import machine_name


def test_quick_order_study_end_to_end_then_resume(quick_order_study, tmp_path, capsys):
    study = quick_order_study
    rows = study.rows
    runs = [(r["kind"], r["encoder"], r["labels"]) for r in rows]
    evaluated = ("frozen", "segment-finetune", "segment-linear")

    def encoder_runs(encoder: str, budgets: tuple[int, ...]) -> list[tuple]:
        pretrained = [] if encoder == "scratch" else [("pretrain", encoder, -1)]
        finetuned = [("finetune", encoder, k) for k in budgets]
        return pretrained + finetuned + [(kind, encoder, 0) for kind in evaluated]

    payoff_part = [
        ("floor", "pixels", 2),
        ("floor", "pixels", 0),
        *(run for e in ("scratch", "semantic", "raster") for run in encoder_runs(e, (2, 0))),
    ]
    curve = [("curve", "semantic", 2)] * 3  # steps 0, 2 and the last (6: 200 images, batch 64, 2 epochs)
    twin = [("pretrain", "semantic-twin", -1)]  # semantic-source's order source, just before it
    others = encoder_runs("stochastic", (2,)) + twin + encoder_runs("semantic-source", (2,))
    # the payoff encoders, the other orders, the variants; each encoder's runs before the next pretraining
    assert runs == payoff_part + curve + others
    frozen = {r["encoder"]: r for r in rows if r["kind"] == "frozen"}
    ends = [r for r in rows if r["kind"] == "curve" and r["step"] in (0, 6)]
    assert [r["knn_top1"] for r in ends] == [frozen["scratch"]["knn_top1"], frozen["semantic"]["knn_top1"]]
    assert study.frozen_calls == 2 + 5 + 1  # floors, frozen rows, the middle curve point: the ends reuse rows
    segment = [r for r in rows if r["kind"].startswith("segment")]
    assert all(0 <= r["test_miou"] <= 100 and r["train_images"] == 40 for r in segment)
    assert {(r["kind"], r["lr"]) for r in segment} == {("segment-finetune", 8e-3), ("segment-linear", 0.3)}
    out, reports = study.out, study.reports
    source = out / "runs" / "pretrain-semantic-twin-seed0" / "checkpoint-last.pt"
    saved = PretrainConfig.from_dict(
        yaml.safe_load((out / "runs" / "pretrain-semantic-source-seed0" / "config.yaml").read_text())
    )
    assert saved.train.order_source == str(source) and saved.model.order == "semantic"
    pretrained = {r["encoder"]: r["final_loss"] for r in rows if r["kind"] == "pretrain"}
    assert pretrained["semantic-twin"] == pretrained["semantic"]  # the same recipe and seed on one machine
    tuned = yaml.safe_load((out / "runs" / "finetune-scratch-K2-seed0" / "config.yaml").read_text())
    scratch = PretrainConfig.from_dict(yaml.safe_load(Path(tuned["encoder"]["preset"]).read_text())).model
    shape = (scratch.img_size, scratch.patch_size, scratch.embed_dim)
    assert shape == (64, 8, 32)  # the study's ViT, not the preset's

    report = (reports / "orders-cluttered-fashion-mnist.md").read_text()
    assert "| `semantic-source` |" in report and "Paired differences against `raster`" in report
    assert "By mean fine-tuning score: `" in report and "segmentation mIoU (linear head)" in report
    assert f"- runs' machines: {machine_name()}: {len(rows)}" in report  # every row says where it ran
    assert "Table 1" not in report and "target" not in report  # no verdicts or plans of ours
    payoff = (reports / "payoff-cluttered-fashion-mnist.md").read_text()
    assert "fine-tuned from raster" in payoff
    assert "semantic-source" not in payoff.split("## How it was run")[0]
    assert (reports / "orders-cluttered-fashion-mnist.png").stat().st_size > 0
    copied = (reports / "orders-cluttered-fashion-mnist.jsonl").read_text()
    assert copied == (out / "results.jsonl").read_text()
    assert (reports / "payoff-cluttered-fashion-mnist.png").stat().st_size > 0

    again = tmp_path / "study"  # resume a copy: the shared study stays as it was
    shutil.copytree(out, again)
    argv = [*study.argv, "--out", str(again), "--report-dir", str(tmp_path / "reports")]
    lines = (again / "results.jsonl").read_text().splitlines()
    (again / "results.jsonl").write_text("\n".join(lines[:-1]) + "\n")  # the last segmentation was cut
    capsys.readouterr()
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert f"[{len(lines)}] ('segment-linear', 'semantic-source', 0, 0)" in printed
    assert printed.count("('") == 1  # nothing else ran again


def test_order_plans_are_checked():
    plan = orders_plan("cluttered-fashion-mnist")
    assert plan.orders[:2] == ("semantic", "raster") and set(plan.orders) == set(ORDERS)
    assert plan.segment == ("finetune", "linear") and plan.frozen
    assert plan.pretrain == payoff_plan("cluttered-fashion-mnist").pretrain  # the payoff study's encoders
    assert orders_plan("fashion-mnist").segment == ()
    with pytest.raises(ConfigError, match="study.segment"):
        PayoffPlan(segment=("finetune",)).validate()  # fashion-mnist has no masks
    with pytest.raises(ConfigError, match="study.every_budget"):
        PayoffPlan(every_budget=("stochastic",)).validate()
    with pytest.raises(ConfigError, match="study.every_budget"):  # every gain is over scratch
        PayoffPlan(every_budget=("semantic", "raster")).validate()


def test_named_variants_set_their_assignments_and_read_their_source():
    variants = (
        "dec-half: semantic model.decoder_depth={half_depth} train.encoder_init_depth={decoder_depth}",
        "official: semantic model.center_filter=none model.lam=0.001",
        "twin: semantic",
        "source: semantic train.order_source={pretrained:twin}",
    )
    plan = PayoffPlan(
        data="cluttered-fashion-mnist", orders=("semantic", "dec-half", "source"), variants=variants
    )
    plan = plan.validate()
    cfg = pretrain_config(plan, "dec-half", 2)
    assert (cfg.model.order, cfg.model.decoder_depth, cfg.train.seed) == ("semantic", 3, 2)
    base = pretrain_config(plan, "semantic", 2)
    assert cfg.train.encoder_init_depth == base.model.decoder_depth == 6  # paired with `semantic`'s init
    assert base.train.encoder_init_depth is None
    cfg = pretrain_config(plan, "official", 0)
    assert (cfg.model.center_filter, cfg.model.lam) == ("none", 0.001)
    assert pretrain_config(plan, "twin", 1).to_dict() == pretrain_config(plan, "semantic", 1).to_dict()
    assert pretrain_config(plan, "source", 1, Path("s")).train.order_source == str(
        Path("s") / "runs" / "pretrain-twin-seed1" / "checkpoint-last.pt"
    )
    assert plan.variant("source").source == "twin" and plan.variant("official").source is None
    assert plan.variant("semantic") is None  # an order of the registry
    bad = {
        "study.variants": (
            "spiral: zigzag",
            "x: semantic model.nope=1",
            "x: semantic",
            "y: semantic {pretrained:z}",
        ),
        "study.orders": ("semantic-dec1",),
    }
    with pytest.raises(ConfigError, match="study.variants.*ORDER one of"):
        PayoffPlan(variants=bad["study.variants"][:1]).validate()
    with pytest.raises(ConfigError, match="model.nope"):
        PayoffPlan(variants=bad["study.variants"][1:2]).validate()
    with pytest.raises(ConfigError, match="distinct names"):
        PayoffPlan(variants=bad["study.variants"][2:3] * 2).validate()
    with pytest.raises(ConfigError, match="pretrained:NAME"):
        PayoffPlan(variants=("y: semantic train.order_source={pretrained:z}",)).validate()
    with pytest.raises(ConfigError, match="study.orders"):
        PayoffPlan(orders=bad["study.orders"]).validate()  # a variant must be declared


def test_table1_ranking_says_how_many_seeds_each_mean_stands_on():
    from semaim.study.orders import ranking

    plan = orders_plan("cluttered-fashion-mnist")
    row = {"kind": "finetune", "labels": 60}
    rows = [{**row, "encoder": "semantic", "seed": s, "test_top1": v} for s, v in ((0, 60.0), (1, 62.0))]
    rows.append({**row, "encoder": "raster", "seed": 0, "test_top1": 63.0})
    assert (
        ranking(rows, plan, ("semantic", "raster", "stochastic"))
        == "`raster` 63.00 (1 seed) > `semantic` 61.00 (2 seeds)"
    )
    rows.append({**row, "encoder": "raster", "seed": 1, "test_top1": 58.0})  # as many seeds: no counts
    assert ranking(rows, plan, ("semantic", "raster")) == "`semantic` 61.00 > `raster` 60.50"


def test_a_bad_deadline_exits_2_naming_it_before_any_run(tmp_path, capsys):
    out = tmp_path / "study"
    assert (
        main(
            [
                "study",
                "orders",
                "--quick",
                "--data",
                f"cluttered-fashion-mnist:{tmp_path}",
                "--out",
                str(out),
                "--deadline",
                "tomorrowish",
            ]
        )
        == 2
    )
    assert "--deadline 'tomorrowish'" in capsys.readouterr().err and not out.exists()


def test_score_tables_stand_on_the_planned_seeds_and_say_when_a_cell_has_fewer():
    from semaim.study.orders import table

    plan = orders_plan("cluttered-fashion-mnist")
    row = {"kind": "finetune", "labels": 60}
    scores = {"semantic": (60, 62, 64, 99), "raster": (59, 60), "center": (61,)}  # seed 3: not planned
    rows = [
        {**row, "encoder": e, "seed": s, "test_top1": float(v)}
        for e, vs in scores.items()
        for s, v in enumerate(vs)
    ]
    rows.append(
        {**row, "labels": 600, "encoder": "center", "seed": 1, "test_top1": 0.0}
    )  # another label budget
    lines = table(rows, plan, ("semantic", "raster", "center", "similarity"), None)
    assert [line.split(" | ")[1] for line in lines[2:]] == [
        "62.00 ± 2.00",
        "59.50 ± 0.71 (2 seeds)",
        "61.00 (1 seed)",
        "–",
    ]
    paired = table(rows, plan, ("semantic", "center"), "raster")
    assert [line.split(" | ")[1] for line in paired[2:]] == ["+1.50 ± 0.71 (2 seeds)", "+2.00 (1 seed)"]
