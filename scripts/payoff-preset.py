"""Issue #12, item 2: which pretraining preset learns the most per unit of compute? A quick proxy.

Every variant changes a few knobs of ``cpu-tiny`` (never the order, the streams or the loss) and pretrains
on Fashion-MNIST for the same compute: as many images as cost the same training FLOPs as ``BUDGET`` images
of ``cpu-tiny`` (``semaim.bench.step_flops``, so that a cheaper variant sees more images; FLOPs, not
minutes, because the two cores are shared while this runs). The proxy score is frozen k-NN@20 (cls token)
on a 5000-image validation split carved from the training split, against each variant's own random
initialisation. Resumable across sessions: a variant with a row in ``ROWS`` is skipped.

    python scripts/payoff-preset.py [run|report] [K/N]     # K/N: every N-th variant from the K-th (2 cores: two
                                                          # single-threaded processes, 0/2 and 1/2)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from semaim.bench import BenchConfig, step_flops
from semaim.config import EncoderConfig, parse_assignment
from semaim.data.splits import train_val_split
from semaim.evaluate.encoders import choose_encoder
from semaim.evaluate.features import extract_features
from semaim.evaluate.knn import knn_accuracy
from semaim.presets import load_preset

FOLDER = Path("runs/payoff-preset")
REPORT = Path("benchmarks/results/payoff-preset.md")
ROWS = Path("benchmarks/results/payoff-preset.jsonl")  # committed: a later session skips what is there
BUDGET = 20000  # images of cpu-tiny (about a third of an epoch)
VARIANTS: dict[str, list[str]] = {
    "cpu-tiny": [],
    "blr 2e-3": ["train.blr=2e-3"],
    "blr 5e-4": ["train.blr=5e-4"],
    "batch 64": ["train.batch_size=64"],
    "decoder depth 2": ["model.decoder_depth=2"],
    "width 192, depth 4, 3 heads": ["model.embed_dim=192", "model.depth=4", "model.num_heads=3",
                                    "model.decoder_depth=4"],
    "patch 8 (16 tokens)": ["model.patch_size=8"],
    "no norm-pix target": ["model.norm_pix=false"],
}


def config(sets: list[str]):
    cfg = load_preset("cpu-tiny")
    for assignment in sets:
        cfg.set(*parse_assignment(assignment))
    return cfg.validate()


def images_for(sets: list[str]) -> int:
    """Images that cost the training FLOPs of ``BUDGET`` cpu-tiny images."""

    def flops(cfg) -> float:
        m = cfg.model
        return step_flops(BenchConfig("", m.img_size, m.patch_size, m.embed_dim, m.depth, m.num_heads,
                                      m.decoder_depth, cfg.train.batch_size))  # fmt: skip

    return round(BUDGET * flops(config([])) / flops(config(sets)))


def val_knn(encoder: EncoderConfig) -> float:
    """k-NN@20 top-1 on 5000 validation images carved from the training split (seed 0)."""
    enc = choose_encoder(encoder)
    feats, labels = extract_features(enc.module, "fashion-mnist", "train", enc.img_size, enc.in_chans, "cls",
                                     workers=1, progress=False)  # fmt: skip
    train, val = train_val_split(labels, 5000, seed=0)
    return knn_accuracy(feats[train], labels[train], feats[val], labels[val], ks=(20,))["top1"]["20"]


def folder_of(name: str) -> Path:
    return FOLDER / "".join(c if c.isalnum() or c in ".-" else "-" for c in name)


def done_rows() -> dict[str, dict]:
    lines = ROWS.read_text().splitlines() if ROWS.is_file() else []
    return {row["variant"]: row for row in map(json.loads, lines)}


def run(name: str, sets: list[str]) -> None:
    if name in done_rows():
        return
    out = folder_of(name)
    images = images_for(sets)
    epochs = -(-images // 60000)  # more images than the split: several epochs over a part of it
    flags = [arg for s in sets for arg in ("--set", s)]
    cmd = [sys.executable, "-m", "semaim", "pretrain", "--out", str(out), "--force", "--no-progress",
           "--limit", str(images // epochs), "--epochs", str(epochs), *flags]  # fmt: skip
    print(" ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, env={**os.environ, "OMP_NUM_THREADS": "1"})
    steps = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    batch = config(sets).train.batch_size
    row = {"variant": name, "sets": sets, "images": images, "steps": len(steps),
           "minutes": sum(batch / r["images_per_s"] for r in steps) / 60, "final_loss": steps[-1]["loss"],
           "knn_init": val_knn(EncoderConfig(random=True, preset=str(out / "config.yaml"))),
           "knn": val_knn(EncoderConfig(checkpoint=str(out / "checkpoint-last.pt")))}  # fmt: skip
    with ROWS.open("a") as f:
        f.write(json.dumps(row) + "\n")


def report(rows: dict[str, dict]) -> None:
    lines = [
        "# Which pretraining preset learns the most per unit of compute? (issue #12, item 2)",
        "",
        "`python scripts/payoff-preset.py` (resumable). Each variant changes a few knobs of `cpu-tiny` and",
        f"pretrains on Fashion-MNIST (one epoch over the first N images, seed 0; two over half as many past 60000) for the training FLOPs of {BUDGET}",
        "cpu-tiny images (a cheaper variant sees more images). Proxy score: frozen k-NN@20 (cls token) on 5000",
        "validation images carved from the training split, against the variant's own random initialisation.",
        "Minutes are the sum of step times on one of two cores shared with another job: compare, don't quote.",
        "",
        "| variant | `--set` | images | steps | minutes | final loss | k-NN@20 init | k-NN@20 | gain |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, sets in VARIANTS.items():
        if name not in rows:
            lines.append(f"| {name} | `{' '.join(sets)}` | not run yet | | | | | | |")
            continue
        r = rows[name]
        lines.append(f"| {r['variant']} | `{' '.join(r['sets'])}` | {r['images']} | {r['steps']} | {r['minutes']:.1f} "
                     f"| {r['final_loss']:.3f} | {r['knn_init']:.2f} | {r['knn']:.2f} | {r['knn'] - r['knn_init']:+.2f} |")  # fmt: skip
    REPORT.write_text("\n".join(lines) + "\n")
    print(f"wrote {REPORT}")


def main() -> None:
    torch.set_num_threads(1)
    what = sys.argv[1] if len(sys.argv) > 1 else "run"
    k, n = (int(x) for x in (sys.argv[2] if len(sys.argv) > 2 else "0/1").split("/"))
    for i, (name, sets) in enumerate(VARIANTS.items()):
        if what == "run" and i % n == k:
            run(name, sets)
    report(done_rows())


if __name__ == "__main__":
    main()
