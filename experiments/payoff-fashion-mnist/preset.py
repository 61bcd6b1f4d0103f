"""Which pretraining preset learns the most per unit of compute? A quick proxy, for the payoff study.

Every variant changes a few knobs of ``cpu-tiny`` (never the order, the streams or the loss) and pretrains
on Fashion-MNIST for the same compute: as many images as cost the same training FLOPs as ``BUDGET`` images
of ``cpu-tiny`` (``semaim.bench.step_flops``, so that a cheaper variant sees more images; FLOPs, not
minutes, since minutes on shared cores do not compare). The proxy score is frozen k-NN@20 (cls token,
and the mean of the patch tokens) on a 5000-image validation split carved from the training split, against
each variant's own random initialisation. Resumable: a variant with a row in ``ROWS`` (committed) is
skipped; ``rescore`` adds the average-pool scores to rows written before they were measured.

A proxy can mislead, so ``confirm VARIANT`` measures a proxy winner the way the payoff study measures
``cpu-tiny``: the study's own seed-0 semantic pretraining (its config.yaml, full budget) with the variant's
knobs, then the study's 1 %-label fine-tuning of seed 0 from it; compared on validation top-1 with the
study's scratch and ``cpu-tiny`` runs of the same seed, as the study's rows record them (the test score is
kept, not used to choose).

The report (``payoff-preset.md``, beside this script; ``--out``: another folder) reads committed files
only: ``ROWS``, ``CONFIRMED`` and the study's ``results.jsonl``; ``report`` runs nothing.

    python experiments/payoff-fashion-mnist/preset.py [run|report|rescore] [K/N] [--out DIR]
        # K/N: every N-th variant from the K-th (two single-threaded processes on two cores: 0/2 and 1/2)
    python experiments/payoff-fashion-mnist/preset.py confirm "blr 2e-3"   # about 1.5 h on one core
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from semaim.bench import BenchConfig, step_flops
from semaim.config import EncoderConfig, parse_assignment
from semaim.data.splits import train_val_split
from semaim.engine.runlog import read_records
from semaim.evaluate.encoders import choose_encoder
from semaim.evaluate.features import POOLS, extract_pooled_features
from semaim.evaluate.knn import knn_accuracy
from semaim.presets import load_preset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # experiments/common.py
from common import shown  # noqa: E402

HERE = Path(__file__).resolve().parent
FOLDER = HERE / "runs" / "preset"  # the run folders (ignored, as every study's runs/)
REPORT = "payoff-preset.md"
ROWS = HERE / "payoff-preset.jsonl"  # one row per finished variant, committed: a rerun skips them
STUDY = HERE  # confirm: the payoff study whose seed-0 runs it repeats
CONFIRMED = HERE / "payoff-preset-confirm.jsonl"
BUDGET = 20000  # images of cpu-tiny (about a third of an epoch)
ADOPT_BAR = 1.0  # validation points a confirmed variant must gain over cpu-tiny to replace it
VARIANTS: dict[str, list[str]] = {
    "cpu-tiny": [],
    "blr 2e-3": ["train.blr=2e-3"],
    "blr 5e-4": ["train.blr=5e-4"],
    "batch 64": ["train.batch_size=64"],
    "decoder depth 2": ["model.decoder_depth=2"],
    "width 192, depth 4, 3 heads": [
        "model.embed_dim=192",
        "model.depth=4",
        "model.num_heads=3",
        "model.decoder_depth=4",
    ],
    "patch 8 (16 tokens)": ["model.patch_size=8"],
    "no norm-pix target": ["model.norm_pix=false"],
}


SCRIPT = shown(Path(__file__))


def config(sets: list[str]):
    cfg = load_preset("cpu-tiny")
    for assignment in sets:
        cfg.set(*parse_assignment(assignment))
    return cfg.validate()


def images_for(sets: list[str]) -> int:
    """Images that cost the training FLOPs of ``BUDGET`` cpu-tiny images."""

    def flops(cfg) -> float:
        m = cfg.model
        return step_flops(
            BenchConfig(
                "",
                m.img_size,
                m.patch_size,
                m.embed_dim,
                m.depth,
                m.num_heads,
                m.decoder_depth,
                cfg.train.batch_size,
            )
        )

    return round(BUDGET * flops(config([])) / flops(config(sets)))


def val_knn(encoder: EncoderConfig) -> dict[str, float]:
    """k-NN@20 top-1 on 5000 validation images carved from the training split (seed 0), per pool: the cls
    token, and the mean of the patch tokens (which fine-tuning classifies; more sensitive to short pretraining)."""
    enc = choose_encoder(encoder)
    pooled = extract_pooled_features(
        enc.module,
        "fashion-mnist",
        "train",
        enc.img_size,
        in_chans=enc.in_chans,
        pools=POOLS,
        workers=1,
        progress=False,
    )
    train, val = train_val_split(pooled["cls"][1], 5000, seed=0)
    return {
        pool: knn_accuracy(f[train], y[train], f[val], y[val], ks=(20,))["top1"]["20"]
        for pool, (f, y) in pooled.items()
    }


def scores(out: Path) -> dict[str, float]:
    """The proxy scores of a finished variant: its checkpoint's and its random initialisation's."""
    init = val_knn(EncoderConfig(random=True, preset=str(out / "config.yaml")))
    final = val_knn(EncoderConfig(checkpoint=str(out / "checkpoint-last.pt")))
    return {
        "knn_init": init["cls"],
        "knn": final["cls"],
        "knn_init_avg": init["avg"],
        "knn_avg": final["avg"],
    }


def rescore() -> None:
    """Add the average-pool scores to rows written before they were measured (the checkpoints are kept)."""
    rows = done_rows()
    for name, row in rows.items():
        if "knn_avg" not in row and (folder_of(name) / "checkpoint-last.pt").is_file():
            row |= {k: v for k, v in scores(folder_of(name)).items() if k.endswith("_avg")}
    ROWS.write_text("".join(json.dumps(row) + "\n" for row in rows.values()))


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
    resume = ["--resume"] if (out / "checkpoint-last.pt").is_file() else ["--force"]  # a cut run goes on
    cmd = [
        sys.executable,
        "-m",
        "semaim",
        "pretrain",
        "--out",
        str(out),
        *resume,
        "--no-progress",
        "--limit",
        str(images // epochs),
        "--epochs",
        str(epochs),
        *flags,
    ]
    print(" ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, env={**os.environ, "OMP_NUM_THREADS": "1"})
    steps = [r for r in read_records(out / "metrics.jsonl") if "images_per_s" in r]
    batch = config(sets).train.batch_size
    row = {
        "variant": name,
        "sets": sets,
        "images": images,
        "steps": len(steps),
        "minutes": sum(batch / r["images_per_s"] for r in steps) / 60,
        "final_loss": steps[-1]["loss"],
        **scores(out),
    }
    with ROWS.open("a") as f:
        f.write(json.dumps(row) + "\n")


def semaim(args: list[str], out: Path) -> None:
    """One resumable ``semaim`` run into ``out``, single-threaded (two of them share two cores)."""
    resume = ["--resume"] if (out / "checkpoint-last.pt").is_file() else ["--force"]
    cmd = [sys.executable, "-m", "semaim", *args, "--out", str(out), "--no-progress", *resume]
    print(" ".join(cmd), flush=True)
    with open(out.with_suffix(".log"), "a") as log:
        subprocess.run(
            cmd, check=True, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "1"}
        )


def confirmed_rows() -> dict[str, dict]:
    lines = CONFIRMED.read_text().splitlines() if CONFIRMED.is_file() else []
    return {row["variant"]: row for row in map(json.loads, lines)}


def confirm(name: str) -> None:
    """The study's seed-0 semantic pretraining with ``name``'s knobs, then its 1 %-label fine-tuning."""
    if name in confirmed_rows():
        return
    out = FOLDER / f"confirm-{folder_of(name).name}"
    out.parent.mkdir(parents=True, exist_ok=True)
    pretrain = out.with_name(out.name + "-pretrain")
    flags = [arg for s in VARIANTS[name] for arg in ("--set", s)]
    semaim(
        [
            "pretrain",
            "--config",
            str(STUDY / "runs/pretrain-semantic-seed0/config.yaml"),
            *flags,
            "--set",
            "train.keep_steps=[]",
        ],
        pretrain,
    )
    semaim(
        [
            "finetune",
            "--config",
            str(STUDY / "runs/finetune-semantic-K60-seed0/config.yaml"),
            "--set",
            f"encoder.checkpoint={pretrain / 'checkpoint-last.pt'}",
        ],
        out,
    )
    row = {
        "variant": name,
        "sets": VARIANTS[name],
        "steps": len(read_records(pretrain / "metrics.jsonl")),
        "final_loss": final_loss(pretrain),
        "val_top1": last_val_top1(out),
        "test_top1": test_top1(out),
    }
    with CONFIRMED.open("a") as f:
        f.write(json.dumps(row) + "\n")


def final_loss(run: Path) -> float:
    return read_records(run / "metrics.jsonl")[-1]["loss"]


def study_row(kind: str, encoder: str, labels: int) -> dict:
    """The study's seed-0 row of a run (the study's run folders are not committed; its rows are)."""
    rows = read_records(STUDY / "results.jsonl")
    key = (kind, encoder, labels, 0)
    found = [r for r in rows if (r["kind"], r["encoder"], r["labels"], r["seed"]) == key]
    if not found:
        raise SystemExit(f"{STUDY / 'results.jsonl'}: no seed-0 {kind} row of {encoder} at {labels} labels")
    return found[-1]


def test_top1(run: Path) -> float:
    return json.loads((run / "result.json").read_text())["test_top1"]


def last_val_top1(run: Path) -> float:
    """The last validation top-1 of a fine-tuning run (what the shipped ``select: last`` keeps)."""
    return read_records(run / "eval.jsonl")[-1]["val_top1"]


def confirm_lines() -> list[str]:
    """The confirmed variants against the study's own seed-0 runs, read from its rows. A row records the best
    validation top-1; the study's 1 %-label fine-tuning validates once, at its end, so it is the last one,
    as for the confirmed runs."""
    rows = confirmed_rows()
    if not rows:
        return []
    study = {arm: study_row("finetune", arm, 60) for arm in ("scratch", "semantic")}
    scratch, semantic = study["scratch"]["best_val_top1"], study["semantic"]["best_val_top1"]
    lines = [
        "",
        "## Confirmed at the payoff study's budget",
        "",
        f"`python {SCRIPT} confirm VARIANT`: the study's seed-0 semantic pretraining "
        f"(`{shown(STUDY)}/runs/pretrain-semantic-seed0/config.yaml`, two epochs) with the variant's knobs, then the "
        "study's 1 %-label fine-tuning of seed 0 from it. Validation top-1 (%) chooses; the test score is "
        f"shown, not used. A variant replaces cpu-tiny only if it beats it by ≥ {ADOPT_BAR:.0f} point here (one seed: the "
        "paired gains over scratch spread by about that much between seeds).",
        "",
        "| pretraining | final loss | 1 %-label fine-tuning: validation | − scratch | test |",
        "|---|---|---|---|---|",
        f"| none (scratch, the study's run) | | {scratch:.2f} | | {study['scratch']['test_top1']:.2f} |",
        f"| cpu-tiny (the study's run) | {study_row('pretrain', 'semantic', -1)['final_loss']:.3f} "
        f"| {semantic:.2f} "
        f"| {semantic - scratch:+.2f} "
        f"| {study['semantic']['test_top1']:.2f} |",
    ]
    for r in rows.values():
        lines.append(
            f"| {r['variant']} (`{' '.join(r['sets'])}`) | {r['final_loss']:.3f} | {r['val_top1']:.2f} "
            f"| {r['val_top1'] - scratch:+.2f} | {r['test_top1']:.2f} |"
        )
    return lines + ["", verdict(rows, semantic)]


def verdict(rows: dict[str, dict], default: float) -> str:
    """The decision the confirmed rows support, against cpu-tiny's validation score ``default``."""
    gains = {name: r["val_top1"] - default for name, r in rows.items()}
    text = "Against cpu-tiny on validation: " + ", ".join(f"{n} {g:+.2f}" for n, g in gains.items()) + ". "
    adopted = [n for n, g in gains.items() if g >= ADOPT_BAR]
    if adopted:
        return text + f"{', '.join(adopted)} clears the {ADOPT_BAR:.0f}-point bar."
    return text + (
        f"None clears the {ADOPT_BAR:.0f}-point bar, so `cpu-tiny` stays the default. The proxy ranked each of "
        "them above cpu-tiny, so its ranking does not carry over to fine-tuning at full budget."
    )


def report(rows: dict[str, dict], out_dir: Path = HERE) -> Path:
    lines = [
        "# Which pretraining preset learns the most per unit of compute?",
        "",
        f"`python {SCRIPT}` (resumable). Each variant changes a few knobs of `cpu-tiny` and",
        f"pretrains on Fashion-MNIST (one epoch over the first N images, seed 0; two over half as many past 60000) for the training FLOPs of {BUDGET}",
        "cpu-tiny images (a cheaper variant sees more images). Proxy score: frozen k-NN@20 on 5000 validation",
        "images carved from the training split, against the variant's own random initialisation, with the cls",
        "token and with the mean of the patch tokens (avg; what fine-tuning classifies, and the more sensitive",
        "to short pretraining: +12.6 against +8.6 points for cls at 1 % labels, `payoff-fashion-mnist-checks.md`).",
        "Minutes are the sum of step times on one of two cores shared with another job: compare, don't quote.",
        "",
        "| variant | `--set` | images | steps | minutes | final loss | k-NN@20 cls: init | end | gain "
        "| avg: init | end | gain |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, sets in VARIANTS.items():
        if name not in rows:
            lines.append(f"| {name} | `{' '.join(sets)}` | not run yet | | | | | | | | | |")
            continue
        r = rows[name]
        avg = (
            f"{r['knn_init_avg']:.2f} | {r['knn_avg']:.2f} | {r['knn_avg'] - r['knn_init_avg']:+.2f}"
            if "knn_avg" in r
            else "not measured | |"
        )
        lines.append(
            f"| {r['variant']} | `{' '.join(r['sets'])}` | {r['images']} | {r['steps']} | {r['minutes']:.1f} "
            f"| {r['final_loss']:.3f} | {r['knn_init']:.2f} | {r['knn']:.2f} | {r['knn'] - r['knn_init']:+.2f} "
            f"| {avg} |"
        )
    out = out_dir / REPORT
    out.write_text("\n".join(lines + confirm_lines()) + "\n")
    print(f"wrote {out}")
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("what", nargs="?", default="run", choices=("run", "report", "rescore", "confirm"))
    parser.add_argument(
        "arg", nargs="?", help="run: K/N (every N-th variant from the K-th); confirm: VARIANT"
    )
    parser.add_argument("--out", type=Path, default=HERE, help="where the report goes (default: here)")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.what == "confirm":
        if args.arg not in VARIANTS:
            parser.error(f"confirm needs a VARIANT, one of {list(VARIANTS)}")
        torch.set_num_threads(1)
        confirm(args.arg)
    elif args.what == "rescore":
        torch.set_num_threads(1)
        rescore()
    elif args.what == "run":
        torch.set_num_threads(1)
        k, n = (int(x) for x in (args.arg or "0/1").split("/"))
        for i, (name, sets) in enumerate(VARIANTS.items()):
            if i % n == k:
                run(name, sets)
    report(done_rows(), args.out)


if __name__ == "__main__":
    main()
