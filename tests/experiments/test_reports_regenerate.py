"""Every study report in ``experiments/`` regenerates from its committed rows, byte for byte: the report is
what the rows say, and nothing in it depends on the machine that writes it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"
REPORTS = {
    "payoff-fashion-mnist": ("payoff-fashion-mnist.md",),
    "orders-cluttered-fashion-mnist": (
        "orders-v2-cluttered-fashion-mnist.md",
        "payoff-cluttered-fashion-mnist.md",
        "dense-cluttered-fashion-mnist.md",
    ),
    "reproduce": ("reproduce-fashion-mnist.md", "reproduce-cluttered-fashion-mnist.md"),
}


@pytest.mark.parametrize("study", sorted(REPORTS))
def test_the_report_regenerates_identically_from_its_rows(study, tmp_path):
    folder = EXPERIMENTS / study
    for name in REPORTS[study]:  # a chart named by a report is referenced only when it exists
        if (folder / name).with_suffix(".png").is_file():
            (tmp_path / name).with_suffix(".png").write_bytes(
                (folder / name).with_suffix(".png").read_bytes()
            )
    result = subprocess.run(
        [sys.executable, str(folder / "report.py"), "--out", str(tmp_path)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    for name in REPORTS[study]:
        assert (tmp_path / name).read_text() == (folder / name).read_text(), name
