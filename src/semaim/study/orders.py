"""Tables 1 and 3 again, on trained encoders and the paper's metrics (``semaim study orders``).

The payoff study's plan (:mod:`semaim.study.payoff`: the same pretraining budget, fine-tuning recipe and
seeds) with every order of Table 1, the ``center`` control, named variants of the semantic order (the
official code's centre rule, the cls-attention centre, the order from a frozen trained encoder) and the
decoder depths of Table 3. Every encoder is scored by fine-tuning at the first label budget (1 % of the
labels), frozen k-NN@20 and linear probe, and, on data with masks, segmentation (fine-tuned and linear
head). ``scratch`` (the pretraining initialisation, the same for every order of a seed) is each encoder's
own starting point (the decoder-depth variants too: ``train.encoder_init_depth`` draws the encoder's
initialisation as the full-depth model would, whatever the decoder). The encoders of the payoff study (scratch, semantic, raster) run first and are also
fine-tuned at every label budget, so one study folder gives both reports.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from .dense import plot_dense, write_dense_report
from .payoff import (
    ORDER_SOURCE,
    PayoffConfig,
    PayoffPlan,
    by_seed,
    curve_rows,
    payoff_plan,
    plot_payoff,
    write_payoff_report,
)
from .stats import Stats, cell, how_it_was_run, mean_std, paired, t_interval, write_markdown

ORDER_STUDY = (
    "semantic",
    "raster",
    "stochastic",
    "similarity",
    "center",
    "semantic-official",
    "semantic-attention",
    "semantic-source",
    "semantic-dec1",
    "semantic-dec-half",
)
"""The pretrained encoders: ``semantic`` first (the others' shape comes from it), ``raster`` second (the paired
baseline), then Table 1's other orders, the control and the variants."""

REPORT = (
    "orders-v2"  # the report's name: REPORT-<data>.md (v1, on barely trained encoders: `semaim reproduce`)
)
GAIN_TARGET = 5.0  # points an encoder must gain over its initialisation for the budget to count as enough
TABLE1_CLAIMS = (
    ("semantic", "stochastic", ">"),
    ("stochastic", "raster", "≥"),
    ("raster", "similarity", ">"),
)
TABLE3_CLAIMS = (("semantic", "semantic-dec-half", ">"), ("semantic-dec-half", "semantic-dec1", ">"))
QUICK_TABLE3_CLAIMS = (("semantic", "semantic-dec1", ">"),)  # --quick: a 2-block ViT has no half depth
"""The paper's rankings as pairs, read from its fine-tuning columns (Table 1: 83.5 > 83.0 ≥ 82.9 > 82.4;
Table 3: decoder depth 12 > 6 > 1, here as deep as the encoder > half > 1)."""
VARIANT_QUESTIONS = {
    "semantic-official": "the official code's centre rule: argmax of the unsmoothed map, λ = 1e-3",
    "semantic-attention": "the centre from the last block's cls attention instead of the cls similarity of Eq. 2",
    "semantic-source": "the order from a frozen trained `semantic` encoder instead of the online one",
}
"""What each variant of the semantic order changes: its paired difference against ``semantic`` answers it."""


def orders_plan(data: str, quick: bool = False, seeds: int | None = None) -> PayoffPlan:
    """The payoff plan for ``data`` with every order and variant; segmentation where the data has masks."""
    plan = payoff_plan(data, quick, seeds)
    segment = ("finetune", "linear") if data.startswith("cluttered") else ()
    orders = ORDER_STUDY
    if quick:  # the smoke test's tiny ViT has 2 blocks: half the depth is 1, the same as dec1
        orders = tuple(o for o in orders if o != "semantic-dec-half")
    return replace(
        plan, orders=orders, every_budget=("scratch", "semantic", "raster"), frozen=True, segment=segment
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


def gains(rows: list[dict[str, Any]], plan: PayoffPlan) -> list[str]:
    """Each encoder's fine-tuning gain over its own initialisation, against :data:`GAIN_TARGET`, and its
    gains on the other metrics (the budget is meant to move at least one of them by that much)."""
    lines = []
    for encoder in plan.orders:
        diffs = [
            (c[0], c[2], paired(planned(rows, plan, encoder, c), planned(rows, plan, "scratch", c), [c[2]]))
            for c in metrics(plan)
        ]
        (_, metric, tuned), *others = diffs
        if metric not in tuned:
            continue
        mean, _, seeds = tuned[metric]
        verdict = "enough" if mean >= GAIN_TARGET else "too small a budget"
        rest = [f"{title} {cell(stats, m, signed=True)}" for title, m, stats in others if m in stats]
        also = f"; other metrics: {', '.join(rest)}" if rest else ""
        lines.append(
            f"- `{encoder}` − its initialisation: {cell(tuned, metric, signed=True)} ({verdict}, "
            f"{seeds} seed{'s' * (seeds != 1)}){also}"
        )
    return lines


def budget_trend(rows: list[dict[str, Any]], plan: PayoffPlan) -> list[str]:
    """How the fine-tuning gain grows along curve (b)'s pretraining, read on validation (the split a budget
    would be chosen on): whether a longer run of this recipe can be expected to reach :data:`GAIN_TARGET`."""
    points = curve_rows(rows, plan)
    if len(points) < 3 or points[0]["step"] != 0:
        return []
    start = points[0]["best_val_top1"]
    growth = ", ".join(f"{r['best_val_top1'] - start:+.2f} at step {r['step']}" for r in points[1:])
    before, last = points[-2:]
    if before["step"] <= 0:  # a repeated step-0 row: no growth to read
        return []
    return [
        "",
        f"Along seed {plan.seeds[0]}'s `{plan.curve_order}` pretraining (the payoff report's curve), the "
        f"validation fine-tuning gain over the initialisation is {growth}: its last "
        f"{last['step'] / before['step']:.1f}× more steps added {last['best_val_top1'] - before['best_val_top1']:+.2f}.",
    ]


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
    """Table 1's orders sorted by their mean fine-tuning score (ties and spreads are in the tables); while the
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


def order_source(rows: list[dict[str, Any]], plan: PayoffPlan) -> list[str]:
    """``semantic-source``'s order source against ``semantic``, seed by seed: the same recipe and seed, so the same
    final loss where both ran on one kind of CPU (fp32 elsewhere drifts a little)."""
    twins, semantic = (by_seed(rows, "pretrain", name, -1) for name in (ORDER_SOURCE, "semantic"))
    if "semantic-source" not in plan.orders or not twins:
        return []
    losses = [
        f"seed {s} {r['final_loss']:.4f}"
        + (f" (`semantic` {semantic[s]['final_loss']:.4f})" if s in semantic else "")
        for s, r in sorted(twins.items())
    ]
    return [
        "",
        f"`semantic-source`'s order source is `semantic` pretrained once more for the seed (`{ORDER_SOURCE}`"
        f"), just before it; final pretraining loss: {', '.join(losses)}.",
    ]


def depths(rows: list[dict[str, Any]], plan: PayoffPlan, decoders: tuple[str, ...]) -> list[str]:
    """Table 3's shallower decoders paired against ``semantic`` (the full depth) on every metric, not fine-tuning
    alone: the paper reads depth on fine-tuning only, the frozen and dense scores say whether the others agree."""
    shallower = tuple(d for d in decoders if d != "semantic")
    if not shallower or "semantic" not in decoders:
        return []
    return [
        "Each shallower decoder against `semantic`, paired seed by seed, every metric:",
        "",
        *table(rows, plan, shallower, "semantic"),
        "",
    ]


def variants(rows: list[dict[str, Any]], plan: PayoffPlan) -> list[str]:
    """The semantic order's variants paired against ``semantic`` (the comparison each one asks about), every metric,
    then each one's fine-tuning difference with its 95 % t-interval."""
    names = tuple(v for v in VARIANT_QUESTIONS if v in plan.orders)
    if not names or "semantic" not in plan.orders:
        return []
    metric = metrics(plan)[0][2]
    lines = [
        "## The semantic order's variants (paired against `semantic`)",
        "",
        *table(rows, plan, names, "semantic"),
        "",
    ]
    for name in names:
        diff = paired(planned(rows, plan, name), planned(rows, plan, "semantic"), [metric])
        result = "not run yet"
        if metric in diff:
            outcome, interval = claim_outcome(*diff[metric], ">")
            reading = {"held": "ahead of `semantic`", "contradicted": "behind `semantic`"}.get(
                outcome, "unresolved"
            )
            seeds = diff[metric][2]
            so_far = (
                f", so far: {seeds} of {len(plan.seeds)} planned seeds" if seeds < len(plan.seeds) else ""
            )
            result = f"{cell(diff, metric, signed=True)} ({interval}): {reading}{so_far}"
        lines.append(f"- `{name}` ({VARIANT_QUESTIONS[name]}) − `semantic`, fine-tuning: {result}")
    return [*lines, *order_source(rows, plan), ""]


def claim_outcome(mean: float, std: float, n: int, relation: str) -> tuple[str, str]:
    """One pairwise claim ``a relation b`` against the per-seed differences ``a − b`` and its 95 % t-interval:
    ``contradicted`` when the interval lies below 0; otherwise a ">" ``held`` when it lies above 0 and is
    ``unresolved`` when it holds 0, and a "≥" (equality allowed) is ``not contradicted``. One seed: no
    interval, ``unresolved``."""
    assert relation in (">", "≥"), relation
    if n < 2:
        return "unresolved", "1 seed, no interval"
    low, high = t_interval(mean, std, n)
    interval = f"95 % interval [{low:+.2f}, {high:+.2f}] over {n} seeds"
    if high < 0:
        return "contradicted", interval
    if relation == "≥":
        return "not contradicted", interval
    return ("held" if low > 0 else "unresolved"), interval


def verdict(
    rows: list[dict[str, Any]], plan: PayoffPlan, claims: tuple[tuple[str, str, str], ...]
) -> list[str]:
    """The paper's pairwise claims read from the paired fine-tuning differences over the plan's seeds, one line
    each, then the verdict in one sentence, given only once every claim stands on all the planned seeds:
    reproduced, not reproduced (a claim contradicted) or not resolved; before that, not decided yet."""
    metric = metrics(plan)[0][2]
    lines, outcomes, partway = [], {}, []
    for a, b, relation in (c for c in claims if c[0] in plan.orders and c[1] in plan.orders):
        name = f"`{a}` {relation} `{b}`"
        diff = paired(planned(rows, plan, a), planned(rows, plan, b), [metric])
        if metric not in diff:
            partway.append(name)
            lines.append(f"- {name}: not run yet")
            continue
        outcomes[name], interval = claim_outcome(*diff[metric], relation)
        seeds = diff[metric][2]
        so_far = f" so far, {seeds} of {len(plan.seeds)} planned seeds" if seeds < len(plan.seeds) else ""
        partway += [name] if so_far else []
        lines.append(f"- {name}: {cell(diff, metric, signed=True)} ({interval}): {outcomes[name]}{so_far}")
    if not lines:
        return []
    against = [n for n, o in outcomes.items() if o == "contradicted"]
    unresolved = [n for n, o in outcomes.items() if o == "unresolved"]
    if partway:
        sentence = f"**Not decided yet**: {', '.join(partway)} still without every planned seed" + (
            f"; contradicted so far: {', '.join(against)}." if against else "."
        )
    elif against:
        sentence = f"**Not reproduced**: the data contradict {', '.join(against)}."
    elif unresolved:
        sentence = (
            f"**Not resolved at this scale**: {', '.join(unresolved)} within the spread of the seeds; "
            "nothing contradicts the paper's ranking, nothing confirms it."
        )
    else:
        sentence = '**Reproduced**: every ">" lies above 0 and no "≥" below it.'
    return [*lines, "", sentence, ""]


def write_orders_report(
    rows: list[dict[str, Any]],
    plan: PayoffPlan,
    command: str,
    path: str | Path,
    chart: str | Path | None = None,
) -> None:
    """``orders-v2-<data>.md`` (Tables 1 and 3, every metric, paired against raster), and beside it the payoff
    report of the same folder's scratch / semantic / raster runs and, with segmentation, the dense report."""
    table1 = tuple(
        o for o in ("semantic", "stochastic", "raster", "similarity", "center") if o in plan.orders
    )
    decoders = tuple(o for o in ("semantic-dec1", "semantic-dec-half", "semantic") if o in plan.orders)
    encoders = ("scratch", *plan.orders)
    lines = [
        f"# Tables 1 and 3 again: autoregression orders on `{plan.data}`",
        "",
        f"Every encoder is the `{plan.preset}` ViT pretrained with one order ({', '.join(plan.pretrain) or 'preset'}"
        f"), mean ± sample std over seeds {', '.join(map(str, plan.seeds))} (a cell on fewer says how many); `scratch` is the initialisation every order of a "
        "seed starts from. Fine-tuning: the payoff study's recipe and validation split; frozen scores: cls "
        "token, every training label but the validation split; segmentation: the `semaim segment` "
        f"`{plan.segment_recipe}` recipe. Each run scores the test split once.",
        "",
        "## Scores",
        "",
        *table(rows, plan, encoders, None),
        "",
        "## Paired differences against `raster` (points, seed by seed)",
        "",
        *table(rows, plan, tuple(e for e in encoders if e != "raster"), "raster"),
        "",
        "## Is the pretraining budget enough?",
        "",
        f"Target: every encoder gains at least {GAIN_TARGET:.0f} points over its initialisation on fine-tuning; its "
        "gains on the other metrics show whether the budget moves any of them that much.",
        "",
        *gains(rows, plan),
        *budget_trend(rows, plan),
        "",
        "## Table 1 (paper, ViT-B/16 ImageNet fine-tuning: semantic 83.5 > stochastic 83.0 ≥ raster 82.9 > "
        "similarity 82.4)",
        "",
        f"Here, by mean fine-tuning score: {ranking(rows, plan, table1) or 'no runs yet'}. The paper's pairs, "
        "paired seed by seed (each a 95 % t-interval on its own, not widened for reading several claims at once):",
        "",
        *verdict(rows, plan, TABLE1_CLAIMS),
        "## Table 3 (paper: decoder depth 1 → 82.1, 6 → 83.3, 12 → 83.5)",
        "",
        f"Here, on `semantic` (the paper's best order, fixed in the plan before Table 1 is known; each depth "
        "starts from the seed's same encoder initialisation; `semantic-dec1`: 1 block, `semantic-dec-half`: half, "
        f"`semantic`: as deep as the encoder): {ranking(rows, plan, decoders) or 'no runs yet'}.",
        "",
        *depths(rows, plan, decoders),
        *verdict(rows, plan, TABLE3_CLAIMS if "semantic-dec-half" in plan.orders else QUICK_TABLE3_CLAIMS),
        *variants(rows, plan),
        *how_it_was_run(command, rows, PayoffConfig(plan).to_dict()["study"], REPORT),
    ]
    write_markdown(path, lines, chart, "orders")
    path = Path(path)
    payoff = path.with_name(path.name.replace(f"{REPORT}-", "payoff-", 1))
    plot_payoff(rows, plan, payoff.with_suffix(".png"))
    write_payoff_report(rows, plan, command, payoff, payoff.with_suffix(".png"), REPORT)
    if plan.segment:
        dense = path.with_name(path.name.replace(f"{REPORT}-", "dense-", 1))
        chart = dense.with_suffix(".png")
        write_dense_report(
            rows, plan, command, dense, chart if plot_dense(rows, plan, chart) else None, REPORT
        )


def plot_orders(rows: list[dict[str, Any]], plan: PayoffPlan, path: str | Path, dpi: int = 100) -> None:
    """Paired differences against raster, one panel per metric, one bar per encoder (error bars: std)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = metrics(plan)
    encoders = [e for e in ("scratch", *plan.orders) if e != "raster"]
    fig, axes = plt.subplots(
        1, len(columns), figsize=(3.2 * len(columns), 3.8), constrained_layout=True, squeeze=False
    )
    for ax, column in zip(axes[0], columns, strict=True):
        title, metric = column[0], column[2]
        stats = [
            paired(planned(rows, plan, e, column), planned(rows, plan, "raster", column), [metric])
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
    fig.suptitle(f"{plan.data}: each encoder against raster, paired by seed", fontsize=9)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
