"""The order study on cluttered Fashion-MNIST (``experiments/orders-cluttered-fashion-mnist``): its report's
targets, verdicts against the paper's Tables 1 and 3, variants and dense report, on rows made up to test them
and on a real quick study."""

from __future__ import annotations

import importlib.util
import re
from dataclasses import replace
from pathlib import Path

import yaml
from PIL import Image

from semaim.study.payoff import PayoffConfig, PayoffPlan

FOLDER = Path(__file__).resolve().parents[2] / "experiments" / "orders-cluttered-fashion-mnist"


def load_report_module():
    spec = importlib.util.spec_from_file_location("orders_cluttered_report", FOLDER / "report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


study = load_report_module()


def planned_study() -> PayoffPlan:
    """The study's recorded plan: every order of Table 1, the control and the semantic order's variants."""
    return PayoffConfig.from_dict(yaml.safe_load((FOLDER / "config.yaml").read_text())).study.validate()


def test_the_reports_of_a_quick_study_read_its_variants_budget_and_dense_runs(quick_order_study, tmp_path):
    plan = PayoffConfig.from_dict(yaml.safe_load((quick_order_study.out / "config.yaml").read_text())).study
    rows = quick_order_study.rows
    path = tmp_path / f"{study.REPORT}-cluttered-fashion-mnist.md"
    study.write_orders_report(rows, plan, "cmd", path, path.with_suffix(".png"))
    report = path.read_text()
    loss = (
        f"{next(r['final_loss'] for r in rows if r['kind'] == 'pretrain' and r['encoder'] == 'semantic'):.4f}"
    )
    twin = f"(`semantic-twin`), just before it; final pretraining loss: seed 0 {loss} (`semantic` {loss})."
    assert twin in report and "| `semantic-source` |" in report
    assert re.search(
        r"its initialisation: [+-]\d+\.\d\d( ± \d+\.\d\d)? \((enough|too small a budget), \d seeds?\); "
        r"other metrics: frozen k-NN@20 [+-]\d",
        report,
    )  # the gain on every metric
    assert "## Table 1" in report and "## Table 3" in report
    dense = (tmp_path / "dense-cluttered-fashion-mnist.md").read_text()
    assert "copied as `orders-v2-<data>.jsonl`" in dense  # every report of the study names the one copy
    assert "| `semantic` − `scratch` |" in dense and "linear head (frozen): mIoU" in dense
    assert "dense-cluttered-fashion-mnist.png" in dense  # the masks figure, from the runs on disk
    ran = {
        mode: yaml.safe_load(
            (quick_order_study.out / "runs" / f"segment-{mode}-scratch-seed0" / "config.yaml").read_text()
        )["segment"]
        for mode in ("finetune", "linear")
    }
    used = f"peak lr: finetune {ran['finetune']['lr']:g}; linear {ran['linear']['linear_lr']:g}, as the runs used it"
    assert used in dense and ran["linear"]["linear_lr"] != ran["finetune"]["lr"]  # what the runs used
    with Image.open(tmp_path / "dense-cluttered-fashion-mnist.png") as figure:
        assert figure.size[0] > figure.size[1] > 100
    gone = [{**r, "run": str(tmp_path / "gone")} if "run" in r else r for r in rows]  # a fresh clone: no runs
    figure = (tmp_path / "dense-cluttered-fashion-mnist.png").read_bytes()
    study.write_orders_report(gone, plan, "cmd", path, path.with_suffix(".png"))
    assert "dense-cluttered-fashion-mnist.png" in (tmp_path / "dense-cluttered-fashion-mnist.md").read_text()
    assert (tmp_path / "dense-cluttered-fashion-mnist.png").read_bytes() == figure  # the figure is kept


def test_the_dense_report_states_each_runs_lr_and_flags_a_recipe_change(tmp_path):
    from semaim.config import SegmentRunConfig

    plan = PayoffPlan(data="cluttered-fashion-mnist", segment=("finetune", "linear"))
    rows = []
    for name, mode, lr in (("a", "finetune", 2e-3), ("b", "finetune", 8e-3), ("c", "linear", 2e-3)):
        cfg = SegmentRunConfig()
        cfg.segment.mode, cfg.segment.lr = mode, lr  # the old recipe: no linear_lr
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict()))
        rows.append({"kind": f"segment-{mode}", "run": str(tmp_path / name)})
    assert (
        study.run_lrs(rows, plan)
        == "finetune 0.002 / 0.008 (differs across runs); linear 0.002, as the runs used it"
    )
    gone = [{**row, "run": str(tmp_path / "gone")} for row in rows]  # only the rows, e.g. in a fresh clone
    assert study.run_lrs(gone, plan) == "finetune 0.008; linear 0.3, the recipe's"  # configs/segment/cpu.yaml
    recorded = [
        {**row, "lr": lr} for row, lr in zip(gone, (8e-3, 8e-3, 0.3), strict=True)
    ]  # rows that say it
    assert study.run_lrs(recorded, plan) == "finetune 0.008; linear 0.3, as the runs used it"


def test_the_papers_claims_are_read_from_paired_intervals():

    assert study.claim_outcome(1.0, 0.1, 3, ">")[0] == "held"  # t(0.975, 2) = 4.30: [+0.75, +1.25]
    assert study.claim_outcome(1.0, 1.0, 3, ">") == (
        "unresolved",
        "95 % interval [-1.48, +3.48] over 3 seeds",
    )
    assert study.claim_outcome(0.0, 0.0, 2, ">")[0] == "unresolved"  # a tie does not hold a ">"
    assert (
        study.claim_outcome(1.0, 1.0, 3, "≥")[0] == "not contradicted"
    )  # equality is allowed: only a drop counts
    assert study.claim_outcome(-1.0, 0.1, 3, "≥")[0] == "contradicted"
    assert study.claim_outcome(5.0, 0.0, 1, ">")[0] == "unresolved"  # one seed has no interval
    plan = planned_study()
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
    lines = study.verdict(rows, plan, study.TABLE1_CLAIMS)
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
    assert study.verdict(unsure, plan, study.TABLE1_CLAIMS)[-2] == (
        "**Not resolved at this scale**: `raster` > `similarity` "
        "within the spread of the seeds; nothing contradicts the "
        "paper's ranking, nothing confirms it."
    )
    lines = study.verdict([r for r in rows if r["encoder"] != "similarity"], plan, study.TABLE1_CLAIMS)
    assert lines[2] == "- `raster` > `similarity`: not run yet" and lines[-2].startswith(
        "**Not decided yet**"
    )
    flipped = [{**r, "test_top1": -r["test_top1"]} for r in rows]
    assert study.verdict(flipped, plan, study.TABLE1_CLAIMS)[-2].startswith(
        "**Not reproduced**: the data contradict `semantic`"
    )
    partway = [r for r in flipped if r["encoder"] != "similarity" or r["seed"] < 2]  # 2 of 3 seeds
    lines = study.verdict(partway, plan, study.TABLE1_CLAIMS)
    assert lines[2].endswith("so far, 2 of 3 planned seeds")
    assert lines[-2] == (
        "**Not decided yet**: `raster` > `similarity` still without every planned seed; "
        "contradicted so far: `semantic` > `stochastic`."
    )


def test_the_budget_section_says_how_the_gain_grows_along_the_curve_on_validation():

    plan = planned_study()
    point = {"kind": "curve", "encoder": "semantic", "labels": 60, "seed": 0}
    rows = [
        {**point, "step": step, "best_val_top1": val, "test_top1": 0.0}
        for step, val in ((936, 63.0), (0, 61.0), (117, 61.5), (468, 62.5))
    ]  # any row order
    assert study.budget_trend(rows, plan)[1] == (
        "Along seed 0's `semantic` pretraining (the payoff report's curve), the validation fine-tuning gain over the "
        "initialisation is +0.50 at step 117, +1.50 at step 468, +2.00 at step 936: its last 2.0× more steps "
        "added +0.50."
    )
    assert study.budget_trend(rows[:2], plan) == []  # the initialisation and one checkpoint: no trend to read


def test_each_semantic_variant_is_read_against_semantic_with_its_interval():

    plan = planned_study()
    row = {"kind": "finetune", "labels": 60}
    scores = {"semantic": (60, 61, 62), "semantic-official": (58, 59, 60), "semantic-attention": (61, 61, 64)}
    rows = [
        {**row, "encoder": e, "seed": s, "test_top1": float(v)}
        for e, vs in scores.items()
        for s, v in enumerate(vs)
    ]
    lines = study.variants(rows, plan)
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
        study.variants(rows, replace(plan, orders=("semantic", "raster"))) == []
    )  # no variant planned: no section
    partway = [r for r in rows if r["encoder"] != "semantic-attention" or r["seed"] < 2]
    attention = next(x for x in study.variants(partway, plan) if x.startswith("- `semantic-attention`"))
    assert attention.endswith("over 2 seeds): unresolved, so far: 2 of 3 planned seeds")


def test_table3_pairs_each_shallower_decoder_against_the_full_depth_on_every_metric():

    plan = planned_study()
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
    lines = study.depths(rows, plan, ("semantic-dec1", "semantic-dec-half", "semantic"))
    half, one = (
        next(x for x in lines if x.startswith(f"| `{n}` |")) for n in ("semantic-dec-half", "semantic-dec1")
    )
    assert half.startswith("| `semantic-dec-half` | -1.00 ± 0.00 | -1.00 ± 0.00 | – |")  # paired, per metric
    assert one.startswith("| `semantic-dec1` | -3.00 ± 0.00 | -3.00 ± 0.00 |")
    assert not any("| `semantic` |" in x for x in lines)  # the full depth is the baseline, not a row
    assert (
        study.depths(rows, plan, ("semantic-dec1",)) == []
    )  # no full depth planned: nothing to pair against
