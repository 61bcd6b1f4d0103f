"""Training curves of runs: loss (raw and moving average), learning rate and throughput against step."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..engine.runlog import read_records
from ..errors import DataError, MissingFileError


def read_metrics(run: str | Path) -> list[dict]:
    path = Path(run) / "metrics.jsonl"
    if not path.is_file():
        raise MissingFileError(f"no metrics.jsonl in {run}")
    return read_records(path)


def metrics_figure(runs: list[str | Path], out: str | Path, smooth: int = 20, dpi: int = 110) -> Path:
    """Loss (raw and moving average), lr and images/s against step; one colour per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6), layout="constrained")
    for i, run in enumerate(runs):
        records = read_metrics(run)
        if not records:
            raise DataError(f"{run}/metrics.jsonl is empty")
        colour = f"C{i}"
        step = np.array([r["step"] for r in records])
        loss = np.array([r["loss"] for r in records])
        label = Path(run).name
        axes[0].plot(step, loss, color=colour, alpha=0.25, linewidth=0.8)
        if len(loss) >= smooth > 1:
            avg = np.convolve(loss, np.ones(smooth) / smooth, mode="valid")
            axes[0].plot(step[smooth - 1 :], avg, color=colour, label=label)
        else:
            axes[0].plot(step, loss, color=colour, label=label)
        axes[1].plot(step, [r["lr"] for r in records], color=colour, label=label)
        axes[2].plot(step, [r["images_per_s"] for r in records], color=colour, label=label, linewidth=0.8)
    for ax, name in zip(axes, ("loss", "learning rate", "images / s"), strict=True):
        ax.set_xlabel("optimizer step")
        ax.set_title(name)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=dpi)
    plt.close(fig)
    return out
