"""The reports of the payoff study's side investigations regenerate from their committed rows, byte for byte:
the checks (``checks.py``: the payoff study's and the order study's ``<study>-checks.md``, and
``dense-<data>-checks.md``), the pretraining-preset search (``preset.py``) and the fine-tuning-recipe search
(``recipe.py``). None of these reports names the machine that wrote it, so nothing is left out of the
comparison."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"
PAYOFF = EXPERIMENTS / "payoff-fashion-mnist"
ORDERS = EXPERIMENTS / "orders-cluttered-fashion-mnist"
REPORTS = {  # report -> (script, its report-only arguments)
    PAYOFF / "payoff-fashion-mnist-checks.md": ("checks", ["report"]),
    ORDERS / "orders-cluttered-fashion-mnist-checks.md": ("checks", ["report", "--study", str(ORDERS)]),
    ORDERS / "dense-cluttered-fashion-mnist-checks.md": (
        "checks",
        ["seg-steps-report", "--study", str(ORDERS), "--order", "center", "--seed", "0"],
    ),
    PAYOFF / "payoff-preset.md": ("preset", ["report"]),
    PAYOFF / "payoff-recipe.md": ("recipe", ["report"]),
}


@pytest.fixture(scope="module")
def scripts():
    """The three scripts as modules, loaded by path (``experiments/`` is not a package)."""
    modules = {}
    for name in ("checks", "preset", "recipe"):
        spec = importlib.util.spec_from_file_location(f"payoff_fashion_mnist_{name}", PAYOFF / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
        spec.loader.exec_module(module)
        modules[name] = module
    yield modules
    for module in modules.values():
        sys.modules.pop(module.__name__, None)


@pytest.mark.parametrize("committed", list(REPORTS), ids=[path.name for path in REPORTS])
def test_the_report_regenerates_identically_from_its_committed_rows(scripts, committed, tmp_path):
    script, args = REPORTS[committed]
    scripts[script].main([*args, "--out", str(tmp_path)])
    assert sorted(p.name for p in tmp_path.iterdir()) == [committed.name]  # that report, nothing else
    assert (tmp_path / committed.name).read_text() == committed.read_text()


def test_a_changed_row_changes_the_report(scripts, tmp_path, monkeypatch):
    """The comparison can fail: the recipe report with one score of its rows changed differs."""
    rows = scripts["recipe"].ROWS.read_text()
    assert '"last_val_top1": 69.5,' in rows
    changed = tmp_path / "rows.jsonl"
    changed.write_text(rows.replace('"last_val_top1": 69.5,', '"last_val_top1": 69.6,', 1))
    monkeypatch.setattr(scripts["recipe"], "ROWS", changed)
    scripts["recipe"].main(["report", "--out", str(tmp_path)])
    assert (tmp_path / "payoff-recipe.md").read_text() != (PAYOFF / "payoff-recipe.md").read_text()
