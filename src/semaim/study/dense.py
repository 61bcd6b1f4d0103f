"""The dense report (``dense-<data>.md`` + PNG): segmentation of the payoff study's encoders.

The order study (:mod:`semaim.study.orders`) segments every encoder of a seed with ``semaim segment``'s
recipe, fine-tuned (ViTDet pyramid + Semantic FPN head) and with a linear head on the frozen encoder; this
report puts scratch, semantic and raster side by side over seeds (the paper's ADE20k column, Table S4, at
small scale), with paired differences and a figure of predicted masks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from ..config import EncoderConfig, SegmentRunConfig
from .payoff import PayoffPlan, by_seed, segment_config
from .stats import cell, how_it_was_run, mean_std, paired, seeds_counted, write_markdown

ENCODERS = ("scratch", "semantic", "raster")
TARGET_GAIN = 3.0  # mIoU points a pretrained encoder should gain over scratch
TARGET_MINUTES = 10.0  # one fine-tuned segmentation run on this CPU
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
    """The issue's targets, read from the rows: +3 mIoU over scratch, one fine-tuned run within 10 minutes."""
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

    from ..evaluate.segmentation.segment import predict_masks

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
