"""Does pretraining pay off on Fashion-MNIST? ``semaim study payoff`` with this project's plan (``config.yaml``).

    python experiments/payoff-fashion-mnist/report.py          # the report, from results.jsonl
    python experiments/payoff-fashion-mnist/report.py --run    # (re)run the missing runs first

The checks of why the gain is what it is (``checks.py``), the pretraining-preset search (``preset.py``) and
the fine-tuning-recipe search (``recipe.py``) have their own reports beside this one.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # experiments/common.py

from common import study_for_report  # noqa: E402

from semaim.study.payoff import plot_payoff, write_payoff_report  # noqa: E402

HERE = Path(__file__).resolve().parent
COMMAND = (
    "semaim study payoff --data fashion-mnist --out benchmarks/results/payoff-fashion-mnist "
    "--report-dir benchmarks/results"
)  # how the rows were made


def main() -> None:
    """Regenerate the report (Markdown and chart) from ``results.jsonl``; ``--run`` first runs what the plan
    still lacks (resumable, as ``semaim study`` is)."""
    plan, rows, out = study_for_report(HERE, main.__doc__)
    path = out / f"payoff-{plan.data}.md"
    plot_payoff(rows, plan, path.with_suffix(".png"))
    write_payoff_report(rows, plan, COMMAND, path, path.with_suffix(".png"))


if __name__ == "__main__":
    main()
