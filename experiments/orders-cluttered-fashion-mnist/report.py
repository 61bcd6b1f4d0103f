"""The order study on cluttered Fashion-MNIST: the paper's Tables 1 and 3 again, on trained encoders and the
paper's metrics, with this project's targets and verdicts.

The plan (``config.yaml``) is ``semaim study orders``' on ``cluttered-fashion-mnist`` with the semantic
order's named variants: the official code's centre rule, the cls-attention centre, the order from a frozen
trained encoder (``semantic-source``, whose source ``semantic-twin`` is ``semantic`` pretrained once more
for the seed) and the decoder depths of Table 3 (each depth starts from the seed's same encoder
initialisation: ``train.encoder_init_depth``). Every encoder is scored by fine-tuning at 1 % of the labels,
frozen k-NN@20 and linear probe, and segmentation (fine-tuned and linear head). Three reports come from
the rows: ``orders-v2-<data>.md`` (Tables 1 and 3 with verdicts, the budget against its target, the
variants), ``payoff-<data>.md`` (scratch / semantic / raster at every label budget) and ``dense-<data>.md``
(segmentation side by side, a figure of predicted masks where the run folders are present).

    python experiments/orders-cluttered-fashion-mnist/report.py          # the reports, from results.jsonl
    python experiments/orders-cluttered-fashion-mnist/report.py --run    # (re)run the missing runs first
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # experiments/common.py

from common import study_for_report  # noqa: E402

from semaim.config import EncoderConfig, SegmentRunConfig
from semaim.study.orders import metrics, planned, plot_orders, ranking, table
from semaim.study.payoff import (
    PayoffConfig,
    PayoffPlan,
    by_seed,
    curve_rows,
    plot_payoff,
    segment_config,
    write_payoff_report,
)
from semaim.study.stats import (
    cell,
    how_it_was_run,
    mean_std,
    paired,
    seeds_counted,
    t_interval,
    write_markdown,
)

HERE = Path(__file__).resolve().parent
COMMAND = (
    "semaim study orders --data cluttered-fashion-mnist --out benchmarks/results/orders-cluttered-fashion-mnist "
    "--report-dir benchmarks/results"
)  # how the rows were made; the plan is config.yaml (variants included)
ORDER_SOURCE = "semantic-twin"  # semantic-source's order source: `semantic` once more for the seed

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
            rows,
            plan,
            command,
            dense,
            chart if plot_dense(rows, plan, chart) or chart.is_file() else None,
            REPORT,
        )


# --------------------------------------------------------------------------- the dense report
# The dense report (``dense-<data>.md`` + PNG): segmentation of the payoff study's encoders.
#
# The order study (:mod:`semaim.study.orders`) segments every encoder of a seed with ``semaim segment``'s
# recipe, fine-tuned (ViTDet pyramid + Semantic FPN head) and with a linear head on the frozen encoder; this
# report puts scratch, semantic and raster side by side over seeds (the paper's ADE20k column, Table S4, at
# small scale), with paired differences and a figure of predicted masks.

ENCODERS = ("scratch", "semantic", "raster")
TARGET_GAIN = 3.0  # mIoU points a pretrained encoder should gain over scratch
TARGET_MINUTES = 10.0  # one fine-tuned segmentation run on 2 CPU cores
SHOWN = (0, 1, 2, 3)  # test images in the figure


def columns(plan: PayoffPlan) -> list[tuple[str, str, str]]:
    names = {"finetune": "fine-tuned", "linear": "linear head (frozen)"}
    return [
        (f"{names[m]}: {t}", f"segment-{m}", metric)
        for m in plan.segment
        for t, metric in (("mIoU", "test_miou"), ("pixel acc.", "test_pixel_acc"))
    ]


def lines_for(rows: list[dict[str, Any]], plan: PayoffPlan, pairs: list[tuple[str, str | None]]) -> list[str]:
    """One table line per ``(encoder, base)``: mean ± std (no base) or the paired difference."""
    cols = columns(plan)
    out = ["| | " + " | ".join(c[0] for c in cols) + " |", "|---|" + "---|" * len(cols)]
    for encoder, base in pairs:
        cells = []
        for _, kind, metric in cols:
            mine = by_seed(rows, kind, encoder, 0)
            stats = (
                paired(mine, by_seed(rows, kind, base, 0), [metric])
                if base
                else mean_std({metric: [r[metric] for r in mine.values()]})
            )
            cells.append(cell(stats, metric, signed=base is not None))
        out.append(f"| {f'`{encoder}` − `{base}`' if base else f'`{encoder}`'} | " + " | ".join(cells) + " |")
    return out


def targets(rows: list[dict[str, Any]]) -> list[str]:
    """The dense study's targets, read from the rows: +3 mIoU over scratch, one fine-tuned run within 10 minutes."""
    lines = []
    for encoder in ENCODERS[1:]:
        stats = paired(
            by_seed(rows, "segment-finetune", encoder, 0),
            by_seed(rows, "segment-finetune", "scratch", 0),
            ["test_miou"],
        )
        if "test_miou" in stats:
            met = "met" if stats["test_miou"][0] >= TARGET_GAIN else "not met"
            lines.append(
                f"- `{encoder}` − scratch, fine-tuned mIoU: {cell(stats, 'test_miou', True)} "
                f"(target +{TARGET_GAIN:.0f}: {met})"
            )
    walls = [r["wall_s"] / 60 for r in rows if r["kind"] == "segment-finetune" and "wall_s" in r]
    if walls:
        lines.append(
            f"- one fine-tuned segmentation run: {min(walls):.1f}–{max(walls):.1f} min over {len(walls)} "
            f"runs (target ≤ {TARGET_MINUTES:.0f} min; wall time on a shared 2-core CPU)"
        )
    return lines


def run_lrs(rows: list[dict[str, Any]], plan: PayoffPlan) -> str:
    """The peak lr of each mode, as the rows record it or read from the runs' ``config.yaml`` (a recipe can
    change under a study: more than one value is flagged); the recipe's when neither says."""
    found: dict[str, set[float]] = {}
    for row in (r for r in rows if r["kind"].startswith("segment-")):
        mode, saved = row["kind"].removeprefix("segment-"), Path(row["run"]) / "config.yaml"
        if "lr" in row:
            found.setdefault(mode, set()).add(row["lr"])
        elif saved.is_file():
            found.setdefault(mode, set()).add(
                SegmentRunConfig.from_dict(yaml.safe_load(saved.read_text())).segment.run_lr
            )
    if not found:
        recipe = {
            mode: segment_config(plan, EncoderConfig(random=True), mode, 0).segment for mode in plan.segment
        }
        return "; ".join(f"{mode} {sg.run_lr:g}" for mode, sg in recipe.items()) + ", the recipe's"
    listed = []
    for mode in (m for m in plan.segment if m in found):
        lrs = sorted(found[mode])
        flag = " (differs across runs)" if len(lrs) > 1 else ""
        listed.append(f"{mode} {' / '.join(f'{lr:g}' for lr in lrs)}{flag}")
    return "; ".join(listed) + ", as the runs used it"


def write_dense_report(
    rows: list[dict[str, Any]],
    plan: PayoffPlan,
    command: str,
    path: str | Path,
    chart: str | Path | None,
    study: str,
) -> None:
    """Markdown: mIoU and pixel accuracy of scratch / semantic / raster (mean ± std), paired differences.
    ``study``: the name of the rows' copy beside the study's main report (``<study>-<data>.jsonl``)."""
    pairs = [(e, "scratch") for e in ENCODERS[1:]] + [("semantic", "raster")]
    seeds = seeds_counted(rows, plan.seeds, ("segment-finetune",))  # the seeds the ± stands on
    lines = [
        f"# Dense prediction: semantic segmentation on `{plan.data}`",
        "",
        f"`semaim segment` with recipe `{plan.segment_recipe}` ({', '.join(plan.segment_set) or 'as shipped'}; "
        f"peak lr: {run_lrs(rows, plan)}) from "
        "scratch (the initialisation pretraining starts from) and from the payoff study's semaim encoders "
        f"({', '.join(plan.pretrain)}), mean ± sample std over {seeds}; the validation split "
        "is carved from the training split, the test split (10,000 images) scored once per run. mIoU over the "
        "ten item classes and the background.",
        "",
        *lines_for(rows, plan, [(e, None) for e in ENCODERS]),
        "",
        "Paired differences (points), seed by seed:",
        "",
        *lines_for(rows, plan, pairs),
        "",
        *targets(rows),
        "",
        *how_it_was_run(
            command, rows, {"segment": list(plan.segment), "segment_recipe": plan.segment_recipe}, study
        ),
    ]
    write_markdown(path, lines, chart, "dense")


def plot_dense(rows: list[dict[str, Any]], plan: PayoffPlan, path: str | Path, dpi: int = 100) -> bool:
    """A few test images: the image, the true mask, and the masks the fine-tuned scratch, semantic and raster
    models of the first seed whose runs are all on disk predict. Without such a seed (the run folders are
    gone) the figure drawn before is kept: ``True`` when there is one at ``path``."""
    seed, runs = next(
        ((s, r) for s in plan.seeds if len(r := seed_runs(rows, s)) == len(ENCODERS)), (None, {})
    )
    if not runs:
        return Path(path).is_file()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    from semaim.evaluate.segmentation.segment import predict_masks

    predictions = {e: predict_masks(r, list(SHOWN)) for e, r in runs.items()}
    images, truth, _ = next(iter(predictions.values()))
    colours = ListedColormap(["black", *plt.get_cmap("tab10").colors])  # background + ten item classes
    titles = ["image", "true mask", *(f"{e} (fine-tuned)" for e in predictions)]
    fig, axes = plt.subplots(
        len(SHOWN),
        len(titles),
        figsize=(1.6 * len(titles), 1.6 * len(SHOWN)),
        squeeze=False,
        constrained_layout=True,
    )
    for row in range(len(SHOWN)):
        panels = [images[row].permute(1, 2, 0), truth[row], *(p[2][row] for p in predictions.values())]
        for col, panel in enumerate(panels):
            ax = axes[row][col]
            if col == 0:
                ax.imshow(panel.numpy())
            else:
                ax.imshow(panel.numpy(), cmap=colours, vmin=0, vmax=10, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(titles[col], fontsize=7)
    fig.suptitle(f"{plan.data}: test images, seed {seed}", fontsize=8)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return True


def seed_runs(rows: list[dict[str, Any]], seed: int) -> dict[str, str]:
    """The fine-tuned segmentation run folders of ``seed`` still on disk, by encoder."""
    runs = {e: by_seed(rows, "segment-finetune", e, 0).get(seed, {}).get("run") for e in ENCODERS}
    return {e: r for e, r in runs.items() if r and (Path(r) / "checkpoint-last.pt").is_file()}


def main() -> None:
    """Regenerate the three reports (Markdown and charts) from ``results.jsonl``; ``--run`` first runs what the
    plan still lacks (resumable, as ``semaim study`` is)."""
    plan, rows, out = study_for_report(HERE, main.__doc__)
    path = out / f"{REPORT}-{plan.data}.md"
    plot_orders(rows, plan, path.with_suffix(".png"))
    write_orders_report(rows, plan, COMMAND, path, path.with_suffix(".png"))


if __name__ == "__main__":
    main()
