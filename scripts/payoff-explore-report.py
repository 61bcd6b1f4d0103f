"""Report of scripts/payoff-explore.sh (issue #12, step 0): validation top-1 of each fine-tuning recipe at
1 % labels, from scratch and from a 1-epoch cpu-tiny checkpoint. Choices are read from validation only;
the test split is not shown here (it is scored once, for the recipe chosen, by the study).

    python scripts/payoff-explore-report.py [runs/payoff-explore] [benchmarks/results/payoff-explore.md]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml

RECIPES = {
    "cpu": "`--recipe cpu` as shipped: 3 epochs, batch 128, mixup 0.8 + cutmix 1.0",
    "b32-e40": "batch 32, 40 epochs, warmup 4",
    "b32-e40-nomix": "batch 32, 40 epochs, warmup 4, no mixup / cutmix",
    "b32-e40-nomix-blr3e-3": "batch 32, 40 epochs, warmup 4, no mixup / cutmix, blr 3e-3",
}


def row(folder: Path, recipe: str, encoder: str) -> str:
    run = folder / f"ft-{encoder}-{recipe}"
    if not (run / "result.json").is_file():
        return "not run yet | | "
    evals = [json.loads(line) for line in (run / "eval.jsonl").read_text().splitlines() if line.strip()]
    best = max(evals, key=lambda e: e["val_top1"])
    steps = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    batch = yaml.safe_load((run / "config.yaml").read_text())["finetune"]["batch_size"]
    wall_text = f"{sum(batch / r['images_per_s'] for r in steps) / 60:.1f} min of steps"
    return f"{evals[-1]['val_top1']:.2f} | {best['val_top1']:.2f} (epoch {best['epoch']}) | {wall_text}"


def main() -> None:
    folder = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/payoff-explore")
    out = Path(sys.argv[2] if len(sys.argv) > 2 else "benchmarks/results/payoff-explore.md")
    lines = [
        "# Payoff study, step 0: the fine-tuning recipe at 1 % labels (Fashion-MNIST)",
        "",
        "`bash scripts/payoff-explore.sh` (resumable): `cpu-tiny` pretrained for one epoch (fp32 on an AVX2-only",
        "2-core CPU), then `semaim finetune --labels-per-class 60 --val-size 2000 --set eval_every=5` from that",
        "checkpoint (`pre`) and from the same ViT's random initialisation (`--random`, `scratch`), one seed.",
        "Validation top-1 (%) on 2000 images carved from the training split, after the last epoch and at the",
        "best evaluated epoch; the test split is not used for any choice here. Times are the sum of the",
        "optimiser steps (evaluation excluded), measured while tests shared the two cores: compare, don't quote.",
        "",
        "| recipe | scratch: last | scratch: best | scratch: time | pretrained: last | pretrained: best | pretrained: time |",
        "|---|---|---|---|---|---|---|",
    ]
    for recipe, text in RECIPES.items():
        lines.append(f"| {text} | {row(folder, recipe, 'scratch')} | {row(folder, recipe, 'pre')} |")
    out.write_text("\n".join(lines) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
