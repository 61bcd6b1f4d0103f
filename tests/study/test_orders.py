"""The order study: the payoff plan with more encoders, frozen and segmentation scores, two reports."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import pytest
import yaml
from PIL import Image

from semaim.cli import main
from semaim.config import PretrainConfig
from semaim.errors import ConfigError
from semaim.study import payoff as payoff_study
from semaim.study.orders import ORDER_STUDY, orders_plan
from semaim.study.payoff import PayoffPlan, payoff_plan, pretrain_config
from semaim.study.runner import machine_name
from tests.conftest import make_fmnist_dir

payoff_frozen_scores = payoff_study.frozen_scores


def test_quick_order_study_end_to_end_then_resume(tmp_path, capsys, monkeypatch):
    make_fmnist_dir(tmp_path, n_train=200, n_test=20)
    scored = []
    monkeypatch.setattr(
        payoff_study, "frozen_scores", lambda *a: scored.append(a) or payoff_frozen_scores(*a)
    )
    out, reports = tmp_path / "study", tmp_path / "reports"
    argv = [
        "study",
        "orders",
        "--quick",
        "--seeds",
        "1",
        "--data",
        f"cluttered-fashion-mnist:{tmp_path}",
        "--out",
        str(out),
        "--report-dir",
        str(reports),
        "--no-progress",
        "--set",
        "study.orders=[semantic,raster,semantic-source,stochastic]",
        "--set",
        "study.labels_per_class=[2,0]",
        "--set",
        "study.epochs=[1,1]",
        "--set",
        "study.val_size=30",
        "--set",
        "study.curve_steps=[2]",
        "--set",
        "study.curve_labels=2",
        "--set",
        "study.finetune=[batch_size=10,limit=60,budget_steps=0]",
    ]
    assert main(argv) == 0
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    runs = [(r["kind"], r["encoder"], r["labels"]) for r in rows]
    evaluated = ("frozen", "segment-finetune", "segment-linear")

    def encoder_runs(encoder: str, budgets: tuple[int, ...]) -> list[tuple]:
        pretrained = [] if encoder == "scratch" else [("pretrain", encoder, -1)]
        return (
            pretrained
            + [("finetune", encoder, k) for k in budgets]
            + [(kind, encoder, 0) for kind in evaluated]
        )

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
    assert len(scored) == 2 + 5 + 1  # floors, frozen rows, the middle curve point: the end points reuse rows
    segment = [r for r in rows if r["kind"].startswith("segment")]
    assert all(0 <= r["test_miou"] <= 100 and r["train_images"] == 40 for r in segment)
    assert {(r["kind"], r["lr"]) for r in segment} == {("segment-finetune", 8e-3), ("segment-linear", 0.3)}
    source = out / "runs" / "pretrain-semantic-twin-seed0" / "checkpoint-last.pt"
    saved = PretrainConfig.from_dict(
        yaml.safe_load((out / "runs" / "pretrain-semantic-source-seed0" / "config.yaml").read_text())
    )
    assert saved.train.order_source == str(source) and saved.model.order == "semantic"
    pretrained = {r["encoder"]: r["final_loss"] for r in rows if r["kind"] == "pretrain"}
    assert pretrained["semantic-twin"] == pretrained["semantic"]  # the same recipe and seed on one machine
    tuned = yaml.safe_load((out / "runs" / "finetune-scratch-K2-seed0" / "config.yaml").read_text())
    scratch = PretrainConfig.from_dict(yaml.safe_load(Path(tuned["encoder"]["preset"]).read_text())).model
    assert (scratch.img_size, scratch.patch_size, scratch.embed_dim) == (
        64,
        8,
        32,
    )  # the study's ViT, not the preset's

    report = (reports / "orders-v2-cluttered-fashion-mnist.md").read_text()
    assert "| `semantic-source` |" in report and "Paired differences against `raster`" in report
    loss = f"{pretrained['semantic']:.4f}"
    assert (
        f"(`semantic-twin`), just before it; final pretraining loss: seed 0 {loss} (`semantic` {loss})."
        in report
    )
    assert "segmentation mIoU (linear head)" in report and "its initialisation" in report
    assert f"- runs' machines: {machine_name()}: {len(rows)}" in report  # every row says where it ran
    assert re.search(
        r"its initialisation: [+-]\d+\.\d\d( ± \d+\.\d\d)? \((enough|too small a budget), \d seeds?\); "
        r"other metrics: frozen k-NN@20 [+-]\d",
        report,
    )  # the gain on every metric
    payoff = (reports / "payoff-cluttered-fashion-mnist.md").read_text()
    assert (
        "fine-tuned from raster" in payoff and "semantic-source" not in payoff.split("## How it was run")[0]
    )
    assert (reports / "orders-v2-cluttered-fashion-mnist.png").stat().st_size > 0
    assert (reports / "orders-v2-cluttered-fashion-mnist.jsonl").read_text() == (
        out / "results.jsonl"
    ).read_text()
    assert (reports / "payoff-cluttered-fashion-mnist.png").stat().st_size > 0
    dense = (reports / "dense-cluttered-fashion-mnist.md").read_text()
    assert "copied as `orders-v2-<data>.jsonl`" in dense  # every report of the study names the one copy
    assert "| `semantic` − `scratch` |" in dense and "linear head (frozen): mIoU" in dense
    assert "dense-cluttered-fashion-mnist.png" in dense  # the masks figure, from the runs on disk
    ran = {
        mode: yaml.safe_load((out / "runs" / f"segment-{mode}-scratch-seed0" / "config.yaml").read_text())[
            "segment"
        ]
        for mode in ("finetune", "linear")
    }
    used = f"peak lr: finetune {ran['finetune']['lr']:g}; linear {ran['linear']['linear_lr']:g}, as the runs used it"
    assert used in dense and ran["linear"]["linear_lr"] != ran["finetune"]["lr"]  # what the runs used
    with Image.open(reports / "dense-cluttered-fashion-mnist.png") as figure:
        assert figure.size[0] > figure.size[1] > 100

    lines = (out / "results.jsonl").read_text().splitlines()
    (out / "results.jsonl").write_text("\n".join(lines[:-1]) + "\n")  # the last segmentation was cut
    capsys.readouterr()
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert f"[{len(lines)}] ('segment-linear', 'semantic-source', 0, 0)" in printed
    assert printed.count("('") == 1  # nothing else ran again

    import shutil  # the run folders gone (a fresh clone): the report is rewritten from the rows, figure kept

    shutil.rmtree(out / "runs")
    figure = (reports / "dense-cluttered-fashion-mnist.png").read_bytes()
    assert main([*argv, "--only-seeds", "99"]) == 0
    assert "dense-cluttered-fashion-mnist.png" in (reports / "dense-cluttered-fashion-mnist.md").read_text()
    assert (reports / "dense-cluttered-fashion-mnist.png").read_bytes() == figure


def test_order_plans_are_checked():
    plan = orders_plan("cluttered-fashion-mnist")
    assert plan.orders == ORDER_STUDY and plan.segment == ("finetune", "linear") and plan.frozen
    assert plan.pretrain == payoff_plan("cluttered-fashion-mnist").pretrain  # the payoff study's encoders
    assert orders_plan("fashion-mnist").segment == ()
    cfg = pretrain_config(plan, "semantic-dec-half", 2)
    assert (cfg.model.order, cfg.model.decoder_depth, cfg.train.seed) == ("semantic", 3, 2)
    base = pretrain_config(plan, "semantic", 2)
    assert cfg.train.encoder_init_depth == base.model.decoder_depth == 6  # paired with `semantic`'s init
    assert base.train.encoder_init_depth is None
    cfg = pretrain_config(plan, "semantic-official", 0)
    assert (cfg.model.center_filter, cfg.model.lam) == ("none", 0.001)
    assert pretrain_config(plan, "semantic-attention", 0).model.center_map == "attention"
    twin = pretrain_config(plan, "semantic-twin", 1)
    assert twin.to_dict() == pretrain_config(plan, "semantic", 1).to_dict()  # semantic-source's order source
    assert pretrain_config(plan, "semantic-source", 1, Path("s")).train.order_source == str(
        Path("s") / "runs" / "pretrain-semantic-twin-seed1" / "checkpoint-last.pt"
    )
    with pytest.raises(ConfigError, match="study.segment"):
        PayoffPlan(segment=("finetune",)).validate()  # fashion-mnist has no masks
    with pytest.raises(ConfigError, match="study.every_budget"):
        PayoffPlan(every_budget=("stochastic",)).validate()
    with pytest.raises(ConfigError, match="study.every_budget"):  # every gain is over scratch
        PayoffPlan(every_budget=("semantic", "raster")).validate()


def test_the_dense_report_states_each_runs_lr_and_flags_a_recipe_change(tmp_path):
    from semaim.config import SegmentRunConfig
    from semaim.study.dense import run_lrs

    plan = PayoffPlan(data="cluttered-fashion-mnist", segment=("finetune", "linear"))
    rows = []
    for name, mode, lr in (("a", "finetune", 2e-3), ("b", "finetune", 8e-3), ("c", "linear", 2e-3)):
        cfg = SegmentRunConfig()
        cfg.segment.mode, cfg.segment.lr = mode, lr  # the old recipe: no linear_lr
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict()))
        rows.append({"kind": f"segment-{mode}", "run": str(tmp_path / name)})
    assert (
        run_lrs(rows, plan)
        == "finetune 0.002 / 0.008 (differs across runs); linear 0.002, as the runs used it"
    )
    gone = [{**row, "run": str(tmp_path / "gone")} for row in rows]  # only the rows, e.g. in a fresh clone
    assert run_lrs(gone, plan) == "finetune 0.008; linear 0.3, the recipe's"  # configs/segment/cpu.yaml
    recorded = [
        {**row, "lr": lr} for row, lr in zip(gone, (8e-3, 8e-3, 0.3), strict=True)
    ]  # rows that say it
    assert run_lrs(recorded, plan) == "finetune 0.008; linear 0.3, as the runs used it"


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


def test_the_papers_claims_are_read_from_paired_intervals():
    from semaim.study.orders import TABLE1_CLAIMS, claim_outcome, verdict

    assert claim_outcome(1.0, 0.1, 3, ">")[0] == "held"  # t(0.975, 2) = 4.30: [+0.75, +1.25]
    assert claim_outcome(1.0, 1.0, 3, ">") == ("unresolved", "95 % interval [-1.48, +3.48] over 3 seeds")
    assert claim_outcome(0.0, 0.0, 2, ">")[0] == "unresolved"  # a tie does not hold a ">"
    assert claim_outcome(1.0, 1.0, 3, "≥")[0] == "not contradicted"  # equality is allowed: only a drop counts
    assert claim_outcome(-1.0, 0.1, 3, "≥")[0] == "contradicted"
    assert claim_outcome(5.0, 0.0, 1, ">")[0] == "unresolved"  # one seed has no interval
    plan = orders_plan("cluttered-fashion-mnist")
    scores = {
        "semantic": (64, 65, 66),
        "stochastic": (62, 63, 64),
        "raster": (63, 63, 63),
        "similarity": (60, 61, 61),
    }
    rows = [
        {"kind": "finetune", "labels": 60, "encoder": e, "seed": s, "test_top1": float(v)}
        for e, vs in scores.items()
        for s, v in enumerate((*vs, 0))
    ]  # seed 3: not planned
    lines = verdict(rows, plan, TABLE1_CLAIMS)
    assert (
        lines[0]
        == "- `semantic` > `stochastic`: +2.00 ± 0.00 (95 % interval [+2.00, +2.00] over 3 seeds): held"
    )
    assert lines[1].endswith(": not contradicted") and lines[2].endswith(
        ": held"
    )  # stochastic − raster: 0 ± 1
    assert lines[-2].startswith("**Reproduced**")
    unsure = [
        {**r, "test_top1": r["test_top1"] + (3 * (r["seed"] == 1) if r["encoder"] == "similarity" else 0)}
        for r in rows
    ]  # raster − similarity: +3, 0, +2
    assert verdict(unsure, plan, TABLE1_CLAIMS)[-2] == (
        "**Not resolved at this scale**: `raster` > `similarity` "
        "within the spread of the seeds; nothing contradicts the "
        "paper's ranking, nothing confirms it."
    )
    lines = verdict([r for r in rows if r["encoder"] != "similarity"], plan, TABLE1_CLAIMS)
    assert lines[2] == "- `raster` > `similarity`: not run yet" and lines[-2].startswith(
        "**Not decided yet**"
    )
    flipped = [{**r, "test_top1": -r["test_top1"]} for r in rows]
    assert verdict(flipped, plan, TABLE1_CLAIMS)[-2].startswith(
        "**Not reproduced**: the data contradict `semantic`"
    )
    partway = [r for r in flipped if r["encoder"] != "similarity" or r["seed"] < 2]  # 2 of 3 seeds
    lines = verdict(partway, plan, TABLE1_CLAIMS)
    assert lines[2].endswith("so far, 2 of 3 planned seeds")
    assert lines[-2] == (
        "**Not decided yet**: `raster` > `similarity` still without every planned seed; "
        "contradicted so far: `semantic` > `stochastic`."
    )


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


def test_the_budget_section_says_how_the_gain_grows_along_the_curve_on_validation():
    from semaim.study.orders import budget_trend

    plan = orders_plan("cluttered-fashion-mnist")
    point = {"kind": "curve", "encoder": "semantic", "labels": 60, "seed": 0}
    rows = [
        {**point, "step": step, "best_val_top1": val, "test_top1": 0.0}
        for step, val in ((936, 63.0), (0, 61.0), (117, 61.5), (468, 62.5))
    ]  # any row order
    assert budget_trend(rows, plan)[1] == (
        "Along seed 0's `semantic` pretraining (the payoff report's curve), the validation fine-tuning gain over the "
        "initialisation is +0.50 at step 117, +1.50 at step 468, +2.00 at step 936: its last 2.0× more steps "
        "added +0.50."
    )
    assert budget_trend(rows[:2], plan) == []  # the initialisation and one checkpoint: no trend to read


def test_each_semantic_variant_is_read_against_semantic_with_its_interval():
    from semaim.study.orders import variants

    plan = orders_plan("cluttered-fashion-mnist")
    row = {"kind": "finetune", "labels": 60}
    scores = {"semantic": (60, 61, 62), "semantic-official": (58, 59, 60), "semantic-attention": (61, 61, 64)}
    rows = [
        {**row, "encoder": e, "seed": s, "test_top1": float(v)}
        for e, vs in scores.items()
        for s, v in enumerate(vs)
    ]
    lines = variants(rows, plan)
    assert lines[0] == "## The semantic order's variants (paired against `semantic`)"
    assert "| `semantic-official` | -2.00 ± 0.00 |" in lines[4]  # the table's first cell: paired, not raw
    official, attention, source = (
        next(x for x in lines if x.startswith(f"- `{n}`"))
        for n in ("semantic-official", "semantic-attention", "semantic-source")
    )
    assert official.endswith("-2.00 ± 0.00 (95 % interval [-2.00, -2.00] over 3 seeds): behind `semantic`")
    assert attention.endswith("over 3 seeds): unresolved")  # +1, 0, +2
    assert source.endswith("fine-tuning: not run yet")
    assert (
        variants(rows, replace(plan, orders=("semantic", "raster"))) == []
    )  # no variant planned: no section
    partway = [r for r in rows if r["encoder"] != "semantic-attention" or r["seed"] < 2]
    attention = next(x for x in variants(partway, plan) if x.startswith("- `semantic-attention`"))
    assert attention.endswith("over 2 seeds): unresolved, so far: 2 of 3 planned seeds")


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


def test_table3_pairs_each_shallower_decoder_against_the_full_depth_on_every_metric():
    from semaim.study.orders import depths

    plan = orders_plan("cluttered-fashion-mnist")
    rows = [
        {
            "kind": kind,
            "labels": 60 if kind == "finetune" else 0,
            "encoder": e,
            "seed": s,
            metric: float(v + s),
        }
        for kind, metric in (("finetune", "test_top1"), ("frozen", "knn_top1"))
        for e, v in (("semantic", 60), ("semantic-dec-half", 59), ("semantic-dec1", 57))
        for s in range(3)
    ]
    lines = depths(rows, plan, ("semantic-dec1", "semantic-dec-half", "semantic"))
    half, one = (
        next(x for x in lines if x.startswith(f"| `{n}` |")) for n in ("semantic-dec-half", "semantic-dec1")
    )
    assert half.startswith("| `semantic-dec-half` | -1.00 ± 0.00 | -1.00 ± 0.00 | – |")  # paired, per metric
    assert one.startswith("| `semantic-dec1` | -3.00 ± 0.00 | -3.00 ± 0.00 |")
    assert not any("| `semantic` |" in x for x in lines)  # the full depth is the baseline, not a row
    assert depths(rows, plan, ("semantic-dec1",)) == []  # no full depth planned: nothing to pair against
