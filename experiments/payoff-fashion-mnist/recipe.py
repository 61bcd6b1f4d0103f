"""The payoff study's first step: choose the small-budget fine-tuning recipe on the validation split, at
1 % labels.

Every recipe of ``GRID`` fine-tunes the same ViT from scratch (``--random``) and from a semaim checkpoint
(``--checkpoint``) on 60 labelled images per class, validating on 2000 images carved from the training
split every 5 epochs. Each finished run is a row of ``ROWS`` (committed): its last and best validation
top-1 and its minutes. Resumable: a run with a row is skipped, a cut run resumes. The report shows
validation top-1 only; the test split is never used for a choice (each run scores it once at its end, as
every fine-tuning run does, but the report leaves it out).

The report (``payoff-recipe.md``, beside this script; ``--out``: another folder) reads ``ROWS`` only;
``report`` runs nothing. The rows of the grid's runs so far were taken from the report they first wrote
(their run folders are not committed), so they hold its rounding: two decimals, minutes to one.

    python experiments/payoff-fashion-mnist/recipe.py run --checkpoint CKPT [--arms scratch pre]
        [--only NAME ...]
    python experiments/payoff-fashion-mnist/recipe.py report [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # experiments/common.py
from common import ROOT, shown  # noqa: E402

HERE = Path(__file__).resolve().parent
FOLDER = HERE / "runs" / "recipe"  # the run folders (ignored, as every study's runs/)
REPORT = "payoff-recipe.md"
ROWS = HERE / "payoff-recipe.jsonl"  # one row per finished run
CHECKPOINT = ROOT / "runs/curve-fmnist/checkpoint-step468.pt"  # the grid's `pre` encoder (not committed)
COMMON = [
    "--labels-per-class",
    "60",
    "--val-size",
    "2000",
    "--no-progress",
    "--set",
    "finetune.workers=1",
    "--set",
    "eval_every=5",
    "--set",
    "budget_steps=0",
]
# Batch 32 and 40 epochs (750 steps on 600 images), no Mixup / CutMix (they need many more steps).
BASE = ["batch_size=32", "epochs=40", "warmup_epochs=4", "mixup=0", "cutmix=0"]
LIGHT = ["crop_scale=[0.5,1.0]", "randaug=", "reprob=0"]  # crop + flip only
GRID: dict[str, tuple[str, list[str]]] = {  # in the order they run (the most informative first)
    "light-blr1e-2-ld0.75": (
        "light aug, blr 1e-2, layer decay 0.75",
        BASE + LIGHT + ["blr=1e-2", "layer_decay=0.75"],
    ),
    "light-blr3e-2-ld0.75": (
        "light aug, blr 3e-2, layer decay 0.75",
        BASE + LIGHT + ["blr=3e-2", "layer_decay=0.75"],
    ),
    "light-blr3e-3-ld0.75": (
        "light aug, blr 3e-3, layer decay 0.75",
        BASE + LIGHT + ["blr=3e-3", "layer_decay=0.75"],
    ),
    "light-blr1e-2-ld0.75-e100": (
        "light aug, blr 1e-2, layer decay 0.75, 100 epochs",
        BASE + LIGHT + ["blr=1e-2", "layer_decay=0.75", "epochs=100", "warmup_epochs=10"],
    ),
    "light-blr1e-2-ld1": (
        "light aug, blr 1e-2, no layer decay, 100 epochs",
        BASE + LIGHT + ["blr=1e-2", "layer_decay=1.0", "epochs=100", "warmup_epochs=10"],
    ),
    "light-blr3e-2-ld1": (
        "light aug, blr 3e-2, no layer decay",
        BASE + LIGHT + ["blr=3e-2", "layer_decay=1.0"],
    ),
    "light-blr1e-3-ld0.75": (
        "light aug, blr 1e-3, layer decay 0.75",
        BASE + LIGHT + ["blr=1e-3", "layer_decay=0.75"],
    ),
}


SCRIPT = shown(Path(__file__))


def done_rows() -> dict[tuple[str, str], dict]:
    """The finished runs' rows, by (recipe, arm)."""
    lines = ROWS.read_text().splitlines() if ROWS.is_file() else []
    return {(row["recipe"], row["arm"]): row for row in map(json.loads, filter(str.strip, lines))}


def run(name: str, arm: str, checkpoint: Path) -> None:
    """One recipe on one encoder (resumed when it was cut), then its row."""
    if (name, arm) in done_rows():
        return
    out = FOLDER / f"{arm}-{name}"
    if not (out / "result.json").is_file():
        encoder = ["--random"] if arm == "scratch" else ["--checkpoint", str(checkpoint)]
        resume = ["--resume"] if (out / "checkpoint-last.pt").is_file() else ["--force"]
        sets = [arg for assignment in GRID[name][1] for arg in ("--set", assignment)]
        cmd = [
            sys.executable,
            "-m",
            "semaim",
            "finetune",
            *encoder,
            *COMMON,
            *sets,
            "--out",
            str(out),
            *resume,
        ]
        FOLDER.mkdir(parents=True, exist_ok=True)
        with open(FOLDER / f"{arm}-{name}.log", "w") as log:
            print(" ".join(cmd), flush=True)
            subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, check=False)
    if (out / "result.json").is_file():  # a failed run leaves no row: its log says why
        row = {"recipe": name, "arm": arm, "checkpoint": None if arm == "scratch" else shown(checkpoint)}
        with ROWS.open("a") as f:
            f.write(json.dumps(row | scores(out)) + "\n")


def scores(out: Path) -> dict:
    """A finished run's validation top-1 after its last epoch and at its best evaluated one, and the sum of
    its optimizer steps' times in minutes (evaluation excluded)."""
    evals = [json.loads(line) for line in (out / "eval.jsonl").read_text().splitlines() if line.strip()]
    best = max(evals, key=lambda e: e["val_top1"])
    steps = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    batch = yaml.safe_load((out / "config.yaml").read_text())["finetune"]["batch_size"]
    return {
        "last_val_top1": evals[-1]["val_top1"],
        "best_val_top1": best["val_top1"],
        "best_epoch": best["epoch"],
        "minutes": sum(batch / r["images_per_s"] for r in steps) / 60,
    }


def cell(row: dict | None) -> str:
    if row is None:
        return "not run | |"
    return (
        f"{row['last_val_top1']:.2f} | {row['best_val_top1']:.2f} (ep {row['best_epoch']}) "
        f"| {row['minutes']:.1f}"
    )


def report(rows: dict[tuple[str, str], dict], checkpoint: Path, out_dir: Path = HERE) -> Path:
    """``payoff-recipe.md`` from the rows; the checkpoint it names is the one the `pre` rows record."""
    used = dict.fromkeys(r["checkpoint"] for r in rows.values() if r["arm"] == "pre") or [shown(checkpoint)]
    lines = [
        "# Payoff study, step 0: the fine-tuning recipe at 1 % labels (Fashion-MNIST), chosen on validation",
        "",
        f"`python {SCRIPT} run --checkpoint CKPT` (resumable), then `... report`. Every recipe",
        "fine-tunes the `cpu-tiny` ViT from its random initialisation (`scratch`, `--random`) and from a semaim",
        f"checkpoint (`pre`: `{'`, `'.join(used)}`) with `semaim finetune {' '.join(COMMON)}` plus the recipe's",
        "`--set` values: 60 labelled images per class, validation top-1 (%) on 2000 images carved from the",
        "training split after the last epoch and at the best evaluated epoch (every 5). The test split is not",
        "used for any choice. The checkpoint is step 468 (one epoch) of `semaim pretrain --set train.epochs=4",
        "--set train.keep_steps=[60,120,240,468]` (cpu-tiny, seed 0), stopped after it: a 1-epoch encoder on a",
        "4-epoch schedule. Minutes are the sum of optimizer steps (evaluation excluded) on one of the two",
        "cores while another job ran on the other: compare, don't quote.",
        "",
        f"Common to every recipe: `{' '.join(BASE)}`; light aug = `{' '.join(LIGHT)}`.",
        "",
        "Before this grid, the same protocol (validation top-1, 60 labels per class, from a standalone 1-epoch",
        "cpu-tiny checkpoint) with Table S2's augmentation (RandomResizedCrop 0.08-1, RandAugment m9, random",
        "erasing 0.25) at blr 1e-3, layer decay 0.75: the old `--recipe cpu` (3 epochs at batch 128, Mixup +",
        "CutMix) scratch 15.75 / pretrained 24.15; batch 32 x 40 epochs with Mixup + CutMix 24.30 / 34.65;",
        "without them, scratch 28.70. Crop + flip only at the same lr: scratch 44.50 (first row group below).",
        "",
        "| recipe | scratch: last | scratch: best | min | pretrained: last | pretrained: best | min |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, (text, _) in GRID.items():
        lines.append(f"| {text} | {cell(rows.get((name, 'scratch')))} | {cell(rows.get((name, 'pre')))} |")
    out = out_dir / REPORT
    out.write_text("\n".join(lines) + "\n")
    print(f"wrote {out}")
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("what", choices=("run", "report"))
    parser.add_argument(
        "--checkpoint",
        type=Path,
        default=CHECKPOINT,
        help=f"the `pre` encoder (default: {shown(CHECKPOINT)})",
    )
    parser.add_argument("--arms", nargs="+", default=["scratch", "pre"], choices=("scratch", "pre"))
    parser.add_argument("--only", nargs="+", default=list(GRID), choices=list(GRID))
    parser.add_argument("--out", type=Path, default=HERE, help="where the report goes (default: here)")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.what == "report":
        report(done_rows(), args.checkpoint, args.out)
        return
    todo = [(name, arm) for name in args.only for arm in args.arms]
    while todo:  # the first run that can start (pretrained ones once the checkpoint exists)
        ready = [(n, a) for n, a in todo if a == "scratch" or args.checkpoint.is_file()]
        if not ready:
            time.sleep(30)
            continue
        run(*ready[0], args.checkpoint)
        todo.remove(ready[0])
        report(done_rows(), args.checkpoint, args.out)


if __name__ == "__main__":
    main()
