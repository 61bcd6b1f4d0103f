"""What every study report shares: means ± sample std over seeds, paired per-seed differences, the
machine line, and table cells."""

from __future__ import annotations

import json
import math
import platform
import statistics
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

Stats = dict[str, tuple[float, float, int]]
"""``metric -> (mean, sample std, n)``."""


def mean_std(values: dict[str, list[float]]) -> Stats:
    """``metric -> (mean, sample std, n)`` for every metric that has values."""
    return {
        m: (statistics.mean(v), statistics.stdev(v) if len(v) > 1 else 0.0, len(v))
        for m, v in values.items()
        if v
    }


def paired(a: dict[int, dict[str, Any]], b: dict[int, dict[str, Any]], metrics: Iterable[str]) -> Stats:
    """``a − b`` seed by seed (``{seed: row}`` each), over the seeds both have: runs of one seed share
    the initialisation, the data order and the augmentations, so this removes most of the seed noise."""
    seeds = sorted(a.keys() & b.keys())
    return mean_std({m: [a[s][m] - b[s][m] for s in seeds if m in a[s] and m in b[s]] for m in metrics})


def t_interval(mean: float, std: float, n: int) -> tuple[float, float]:
    """The two-sided 95 % confidence interval of a mean of ``n`` ≥ 2 values with sample std ``std`` (Student's
    t, n − 1 degrees of freedom): with 3 seeds its half-width is 2.48 std."""
    from scipy.stats import t

    half = t.ppf(0.975, n - 1) * std / math.sqrt(n)
    return mean - half, mean + half


def seeds_counted(rows: list[dict[str, Any]], planned: tuple[int, ...], kinds: tuple[str, ...]) -> str:
    """``"3 seeds"``, or ``"2 of the 3 planned seeds (0, 1)"`` while a study is partway: a report must say
    how many seeds its ± stands on, not how many the plan asks for."""
    done = sorted({r["seed"] for r in rows if r.get("kind") in kinds and r.get("seed") in planned})
    if len(done) == len(planned):
        return f"{len(planned)} seeds"
    return f"{len(done)} of the {len(planned)} planned seeds ({', '.join(map(str, done)) or 'none yet'})"


def cell(stats: Stats, metric: str, signed: bool = False) -> str:
    """``"81.20 ± 0.35"`` (``"+1.20 ± 0.35"`` signed); one value without ±; ``"–"`` when missing."""
    if metric not in stats:
        return "–"
    mean, std, n = stats[metric]
    value = f"{mean:+.2f}" if signed else f"{mean:.2f}"
    return f"{value} ± {std:.2f}" if n > 1 else value


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def ran_on(rows: list[dict[str, Any]]) -> list[str]:
    """The machines the runs record (a study's sessions may each have had another), most runs first."""
    counts = Counter(r.get("machine", "not recorded") for r in rows)
    return ["- runs' machines: " + "; ".join(f"{name}: {n}" for name, n in counts.most_common())]


def how_it_was_run(
    command: str, rows: list[dict[str, Any]], settings: dict[str, Any], kind: str
) -> list[str]:
    """The closing section of a study report: command, run time, the runs' machines, settings, where the rows
    are. Nothing in it depends on the machine that writes the report, so a report regenerates identically."""
    from ..engine.run import format_seconds

    wall = sum(r.get("wall_s", 0.0) for r in rows)
    return [
        "## How it was run",
        "",
        f"- command: `{command}`",
        f"- run time: {format_seconds(wall)} summed over {len(rows)} runs, each as timed by the process that "
        "finished it (processes side by side overlap; a run resumed after a kill counts from its resume)",
        *ran_on(rows),
        "- settings: " + json.dumps(settings),
        f"- per-run rows: `results.jsonl` in the study folder, copied as `{kind}-<data>.jsonl` beside this "
        "report when it is written elsewhere",
    ]


def write_markdown(path: str | Path, lines: list[str], chart: str | Path | None, alt: str) -> None:
    """The report's lines, then the chart beside it (linked by file name), as one Markdown file."""
    if chart:
        lines = [*lines, "", f"![{alt}]({Path(chart).name})"]
    Path(path).write_text("\n".join(lines) + "\n")
