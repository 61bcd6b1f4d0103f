"""The order study: every configuration runs, the report and chart are written, a rerun resumes."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from PIL import Image

from semaim.cli import main
from semaim.study.reproduce import (
    StudyPlan,
    best_order,
    load_results,
    paired_difference,
    plot_study,
    run_study,
    study_plan,
    summarise,
    write_report,
)
from tests.conftest import make_fmnist_dir


def tiny_plan(root) -> StudyPlan:
    plan = study_plan(f"fashion-mnist:{root}", quick=True)
    return replace(plan, limit=64, batch_size=32, eval_train=64, eval_test=32, orders=("raster", "semantic"))


def test_study_runs_every_configuration_and_resumes(tmp_path):
    make_fmnist_dir(tmp_path, n_train=96, n_test=32)
    plan = tiny_plan(tmp_path)
    folder = tmp_path / "study"
    rows = run_study(plan, folder, progress=False)
    configs = [(r["order"], r["decoder_depth"], r["seed"]) for r in rows]
    best = best_order(rows, plan)
    expected = [("pixels", 0, 0), ("random", 0, 0), ("random", 0, 1)]
    expected += [(o, 2, s) for s in (0, 1) for o in ("raster", "semantic")]
    expected += [(best, 1, s) for s in (0, 1)]  # depth 2 (full) is already there
    assert configs == expected
    for r in rows:
        for metric in ("knn_cls", "linear_cls"):
            assert 0.0 <= r[metric] <= 100.0
        if r["order"] not in ("pixels", "random"):
            assert (
                r["steps"] == 2
                and (folder / "runs" / f"{r['order']}-dec{r['decoder_depth']}-seed{r['seed']}").is_dir()
            )
    mean, std, n = summarise(rows, "raster", 2)["knn_cls"]
    assert (
        n == 2
        and std >= 0
        and mean
        == pytest.approx(
            sum(r["knn_cls"] for r in rows if (r["order"], r["decoder_depth"]) == ("raster", 2)) / 2
        )
    )

    # An interrupted study (its last result lost) reruns only what is missing.
    lines = (folder / "results.jsonl").read_text().splitlines()
    (folder / "results.jsonl").write_text("\n".join(lines[:-1]) + "\n")
    again = run_study(plan, folder, progress=False)
    assert len(again) == len(rows) and again[:-1] == rows[:-1]
    assert len((folder / "results.jsonl").read_text().splitlines()) == len(rows)

    write_report(again, plan, "semaim reproduce --quick", folder / "report.md", folder / "chart.png")
    plot_study(again, plan, folder / "chart.png", dpi=50)
    text = (folder / "report.md").read_text()
    assert "| `semantic` − `raster` |" in text and "| `raster` − its initialisation |" in text
    assert "| `semantic` |" in text and "±" in text and "raw pixels" in text and f"order `{best}`" in text
    with Image.open(folder / "chart.png") as img:
        assert img.size == (int(12.8 * 50), int(3.4 * 50))


def test_a_study_folder_with_other_settings_is_refused(tmp_path):
    make_fmnist_dir(tmp_path, n_train=96, n_test=32)
    plan = tiny_plan(tmp_path)
    folder = tmp_path / "study"
    folder.mkdir()
    (folder / "config.yaml").write_text("study:\n  data: other\n")
    with pytest.raises(ValueError, match="other settings"):
        run_study(plan, folder, progress=False)


def test_reproduce_quick_command(tmp_path, capsys):
    # The --quick smoke test at its smallest: one seed on a small fake Fashion-MNIST.
    make_fmnist_dir(tmp_path, n_train=1024, n_test=500)
    out, reports = tmp_path / "study", tmp_path / "reports"
    argv = [
        "reproduce",
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
    ]
    assert main(argv) == 0
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert {r["order"] for r in rows} == {
        "pixels",
        "random",
        "raster",
        "stochastic",
        "similarity",
        "semantic",
        "center",
        "multi-center",
    }
    name = "fashion-mnist"
    assert (reports / f"reproduce-{name}.md").is_file() and (reports / f"reproduce-{name}.png").is_file()
    assert (reports / f"reproduce-{name}.jsonl").read_text() == (out / "results.jsonl").read_text()
    assert "--quick --seeds 1" in (reports / f"reproduce-{name}.md").read_text()


def test_paired_difference_is_taken_seed_by_seed():
    def row(order, seed, value):
        return {"order": order, "decoder_depth": 4, "seed": seed, "knn_cls": value}

    rows = [
        row("raster", 0, 60.0),
        row("raster", 1, 70.0),
        row("semantic", 0, 61.0),
        row("semantic", 1, 72.0),
        row("semantic", 2, 99.0),
    ]
    mean, std, n = paired_difference(rows, ("semantic", 4), ("raster", 4))["knn_cls"]
    assert n == 2 and mean == pytest.approx(1.5) and std == pytest.approx(0.5**0.5)
    assert summarise(rows, "semantic", 4)["knn_cls"][2] == 3  # the unpaired mean uses every seed


def test_load_results_drops_a_partial_last_line(tmp_path):
    path = tmp_path / "results.jsonl"
    path.write_text(json.dumps({"order": "raster", "seed": 0}) + '\n{"order": "ran')
    assert load_results(path) == [{"order": "raster", "seed": 0}]
