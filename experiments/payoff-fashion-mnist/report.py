"""Does pretraining pay off on Fashion-MNIST? ``semaim study payoff`` with this project's plan (``config.yaml``).

    python experiments/payoff-fashion-mnist/report.py          # the report, from results.jsonl
    python experiments/payoff-fashion-mnist/report.py --run    # (re)run the missing runs first

The checks of why the gain is what it is (``checks.py``), the pretraining-preset search (``preset.py``) and
the fine-tuning-recipe search (``recipe.py``) have their own reports beside this one.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import yaml

from semaim.study.payoff import PayoffConfig, plot_payoff, run_payoff, write_payoff_report

HERE = Path(__file__).resolve().parent
COMMAND = (
    "semaim study payoff --data fashion-mnist --out benchmarks/results/payoff-fashion-mnist "
    "--report-dir benchmarks/results"
)  # how the rows were made


def main() -> None:
    """Regenerate the report (Markdown and chart) from ``results.jsonl``; ``--run`` first runs what the plan
    still lacks (resumable, as ``semaim study`` is)."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--out", type=Path, default=HERE, help="where the report goes (default: here)")
    parser.add_argument("--run", action="store_true", help="run the missing runs first (CPU-hours)")
    args = parser.parse_args()
    plan = PayoffConfig.from_dict(yaml.safe_load((HERE / "config.yaml").read_text())).study
    if args.run:
        run_payoff(plan, HERE)
    rows = [json.loads(line) for line in (HERE / "results.jsonl").read_text().splitlines() if line.strip()]
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"payoff-{plan.data}.md"
    plot_payoff(rows, plan, path.with_suffix(".png"))
    write_payoff_report(rows, plan, COMMAND, path, path.with_suffix(".png"))


if __name__ == "__main__":
    main()
