"""Which autoregression order is best on my data? (``semaim study orders``)

The payoff study's plan (:mod:`semaim.study.payoff`: the same pretraining budget, fine-tuning recipe and
seeds) with every order of the registry (:data:`semaim.model.orders.ORDERS`) and any named variants of the
plan. Every encoder is scored by fine-tuning at the first label budget, frozen k-NN@20 and linear probe,
and, on data with masks, segmentation (fine-tuned and linear head). ``scratch`` (the pretraining
initialisation, the same for every order of a seed) is each encoder's starting point. The encoders of the
payoff study (scratch, semantic, raster) run first and are also fine-tuned at every label budget, so one
study folder gives both reports.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from ..model.orders import ORDERS
from .payoff import PayoffConfig, PayoffPlan, by_seed, payoff_plan, plot_payoff, write_payoff_report
from .stats import Stats, cell, how_it_was_run, mean_std, paired, write_markdown

BASELINE = "raster"
"""The order every other is paired against: the plain row-major order of autoregressive image models."""


def orders_plan(data: str, quick: bool = False, seeds: int | None = None) -> PayoffPlan:
    """The payoff plan for ``data`` with every order of the registry (``semantic`` first: the others' shape
    comes from it; ``raster`` second: the paired baseline); segmentation where the data has masks."""
    plan = payoff_plan(data, quick, seeds)
    segment = ("finetune", "linear") if data.startswith("cluttered") else ()
    orders = ("semantic", BASELINE, *(o for o in ORDERS if o not in ("semantic", BASELINE)))
    return replace(
        plan, orders=orders, every_budget=("scratch", "semantic", BASELINE), frozen=True, segment=segment
    )


def metrics(plan: PayoffPlan) -> list[tuple[str, str, str, int]]:
    """``(column title, row kind, metric, label budget)`` of every score the report shows."""
    first = plan.labels_per_class[0]
    columns = [(f"fine-tuned, {first or 'all'} labels/class: test top-1", "finetune", "test_top1", first)]
    if plan.frozen:
        columns += [
            ("frozen k-NN@20", "frozen", "knn_top1", 0),
            ("frozen linear", "frozen", "linear_top1", 0),
        ]
    names = {"finetune": "segmentation mIoU (fine-tuned)", "linear": "segmentation mIoU (linear head)"}
    return columns + [(names[mode], f"segment-{mode}", "test_miou", 0) for mode in plan.segment]


def table(
    rows: list[dict[str, Any]], plan: PayoffPlan, encoders: tuple[str, ...], base: str | None
) -> list[str]:
    """One line per encoder, one column per metric: mean ± std, or the paired difference against ``base``, over
    the plan's seeds; a cell on fewer of them says how many."""
    columns = metrics(plan)
    lines = ["| encoder | " + " | ".join(c[0] for c in columns) + " |", "|---|" + "---|" * len(columns)]
    for encoder in encoders:
        cells = []
        for column in columns:
            mine, metric = planned(rows, plan, encoder, column), column[2]
            if base is None:
                stats = mean_std({metric: [r[metric] for r in mine.values() if metric in r]})
            else:
                stats = paired(mine, planned(rows, plan, base, column), [metric])
            cells.append(counted(stats, metric, plan, signed=base is not None))
        lines.append(f"| `{encoder}` | " + " | ".join(cells) + " |")
    return lines


def counted(stats: Stats, metric: str, plan: PayoffPlan, signed: bool = False) -> str:
    """:func:`cell`, followed by its number of seeds where that is fewer than the plan's (``"62.13 ± 0.69 (2 seeds)"``):
    the ± of a partway study stands on fewer seeds than its header says."""
    n = stats[metric][2] if metric in stats else len(plan.seeds)
    return cell(stats, metric, signed) + (f" ({n} seed{'s' * (n != 1)})" if n < len(plan.seeds) else "")


def planned(
    rows: list[dict[str, Any]],
    plan: PayoffPlan,
    encoder: str,
    column: tuple[str, str, str, int] | None = None,
) -> dict[int, dict[str, Any]]:
    """``{seed: row}`` of ``encoder``'s runs for one of :func:`metrics`' columns (by default fine-tuning at the
    first label budget), the plan's seeds only: rows of other seeds in the folder are not this report's."""
    _, kind, _, labels = column or metrics(plan)[0]
    return {s: r for s, r in by_seed(rows, kind, encoder, labels).items() if s in plan.seeds}


def ranking(rows: list[dict[str, Any]], plan: PayoffPlan, orders: tuple[str, ...]) -> str:
    """The orders sorted by their mean fine-tuning score (ties and spreads are in the tables); while the
    orders stand on different numbers of seeds, each mean says how many (a 1-seed mean is not a 3-seed one)."""
    metric = metrics(plan)[0][2]
    means, counts = {}, {}
    for order in orders:
        scores = [r[metric] for r in planned(rows, plan, order).values()]
        if scores:
            means[order], counts[order] = mean_std({metric: scores})[metric][0], len(scores)
    uneven = len(set(counts.values())) > 1
    return " > ".join(
        f"`{o}` {m:.2f}" + (f" ({counts[o]} seed{'s' * (counts[o] > 1)})" if uneven else "")
        for o, m in sorted(means.items(), key=lambda item: -item[1])
    )


def write_orders_report(
    rows: list[dict[str, Any]],
    plan: PayoffPlan,
    command: str,
    path: str | Path,
    chart: str | Path | None = None,
) -> None:
    """``orders-<data>.md`` (every encoder on every metric, paired against :data:`BASELINE`), and beside it the
    payoff report of the same folder's scratch / semantic / raster runs."""
    encoders = ("scratch", *plan.orders)
    orders = tuple(o for o in plan.orders if o in ORDERS)
    lines = [
        f"# Which autoregression order is best on `{plan.data}`?",
        "",
        f"Every encoder is the `{plan.preset}` ViT pretrained with one order ({', '.join(plan.pretrain) or 'preset'}"
        f"), mean ± sample std over seeds {', '.join(map(str, plan.seeds))} (a cell on fewer says how many); "
        "`scratch` is the initialisation every order of a seed starts from. Fine-tuning: the payoff study's "
        "recipe and validation split; frozen scores: cls token, every training label but the validation split"
        + (f"; segmentation: the `semaim segment` `{plan.segment_recipe}` recipe" if plan.segment else "")
        + ". Each run scores the test split once.",
        "",
        "## Scores",
        "",
        *table(rows, plan, encoders, None),
        "",
        f"## Paired differences against `{BASELINE}` (points, seed by seed)",
        "",
        *table(rows, plan, tuple(e for e in encoders if e != BASELINE), BASELINE),
        "",
        f"By mean fine-tuning score: {ranking(rows, plan, orders) or 'no runs yet'}. A difference whose ± is as "
        "large as itself is within the spread of the seeds.",
        "",
        *how_it_was_run(command, rows, PayoffConfig(plan).to_dict()["study"], "orders"),
    ]
    write_markdown(path, lines, chart, "orders")
    path = Path(path)
    payoff = path.with_name(path.name.replace("orders-", "payoff-", 1))
    plot_payoff(rows, plan, payoff.with_suffix(".png"))
    write_payoff_report(rows, plan, command, payoff, payoff.with_suffix(".png"), "orders")


def plot_orders(rows: list[dict[str, Any]], plan: PayoffPlan, path: str | Path, dpi: int = 100) -> None:
    """Paired differences against the baseline, one panel per metric, one bar per encoder (error bars: std)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = metrics(plan)
    encoders = [e for e in ("scratch", *plan.orders) if e != BASELINE]
    fig, axes = plt.subplots(
        1, len(columns), figsize=(3.2 * len(columns), 3.8), constrained_layout=True, squeeze=False
    )
    for ax, column in zip(axes[0], columns, strict=True):
        title, metric = column[0], column[2]
        stats = [
            paired(planned(rows, plan, e, column), planned(rows, plan, BASELINE, column), [metric])
            for e in encoders
        ]
        means = [s[metric][0] if metric in s else float("nan") for s in stats]
        stds = [s[metric][1] if metric in s else 0.0 for s in stats]
        ax.barh(range(len(encoders)), means, xerr=stds, capsize=2, color="C0")
        ax.axvline(0, color="k", lw=0.8)
        ax.set_yticks(
            range(len(encoders)), encoders if ax is axes[0][0] else [""] * len(encoders), fontsize=7
        )
        ax.invert_yaxis()
        ax.set_title(title, fontsize=8)
        ax.set_xlabel("− raster (points)", fontsize=8)
    fig.suptitle(f"{plan.data}: each encoder against the baseline, paired by seed", fontsize=9)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
