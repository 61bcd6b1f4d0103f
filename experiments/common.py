"""What the experiments' scripts share: where the repository is, how a report names a path, and the
``report.py`` command line (regenerate from the committed rows, or ``--run`` the missing runs first).

Each script puts this folder on ``sys.path`` and imports from here; the library itself knows nothing of it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from semaim.study.payoff import PayoffPlan, read_study, run_payoff

ROOT = Path(__file__).resolve().parents[1]  # the repository: reports name paths from here, on every machine


def shown(path: Path) -> str:
    """``path`` as a report names it: from the repository root when it lies inside it, else as given."""
    try:
        return path.resolve().relative_to(ROOT).as_posix()
    except ValueError:
        return str(path)


def study_for_report(folder: Path, description: str) -> tuple[PayoffPlan, list[dict], Path]:
    """``report.py``'s command line: ``(plan, rows, output folder)`` of the study in ``folder``, after running
    what its plan still lacks when ``--run`` is given (resumable, as ``semaim study`` is)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--out", type=Path, default=folder, help="where the reports go (default: the study's)"
    )
    parser.add_argument("--run", action="store_true", help="run the missing runs first (CPU-hours to -days)")
    args = parser.parse_args()
    plan, _ = read_study(folder)
    if args.run:
        run_payoff(plan, folder)
    plan, rows = read_study(folder)
    args.out.mkdir(parents=True, exist_ok=True)
    return plan, rows, args.out
