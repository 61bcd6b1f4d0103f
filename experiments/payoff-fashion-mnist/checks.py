"""Why does pretraining gain only 1-2 points at 1 % labels? The usual causes, checked.

Every check starts from the payoff study's own seed-0 runs (``--study``, default this folder's study on
Fashion-MNIST):

- ``loading``: the fine-tuning classifier built from the semantic checkpoint computes the pretraining
  model's unmasked encoder features (max |difference|), parameter by parameter equal, and both runs
  normalise with the same statistics. Its findings are kept in ``checks/loading.md``, since the
  checkpoint it reads is not committed. Seconds.
- ``frozen``: k-NN@20 and the linear probe on the 60 labelled images per class the 1 %-label fine-tuning
  trains on, scratch against semantic: is the frozen representation's own gap at 1 % labels larger than
  the fine-tuned one? Minutes.
- ``grid``: the study's 1 %-label fine-tuning (its run's config.yaml, ``--config``) with one knob changed,
  scratch and semantic: a lower lr, stronger layer decay (fine-tuning destroying the features), the cls
  token instead of the average pool, half and twice the steps (does scratch catch up with more?).
  Validation top-1 only, as for every choice; each run scores the test split once at its end, as every
  fine-tuning run does, and the report leaves it out. About 16 min per 1800 steps on one core.
  Resumable: a finished run is skipped, a cut one resumes. On a study with segmentation runs (the order
  study on cluttered Fashion-MNIST), the ``seg-lr*`` knobs (``--only seg-lr4e-3 seg-lr8e-3``, ...) check the
  segmentation lr, first chosen on the scratch encoder alone, for the pretrained one too, and the
  ``seg-lin-lr*`` knobs the frozen linear probe's, first the fine-tuning's.

``seg-steps``: segmentation fine-tuning of scratch and a pretrained encoder for 1 / 3 / 6 epochs; does a
longer fine-tuning make up the pretrained head start? Its own report, ``dense-<data>-checks.md``.

The reports go to the study folder (``--out``: another folder) and read committed files only: the checks'
rows in the study's ``checks/`` (each finished run's config.yaml, eval.jsonl and result.json, the frozen
scores, ``loading.md``) and the study's ``results.jsonl``; ``report`` and ``seg-steps-report`` run nothing.

    python experiments/payoff-fashion-mnist/checks.py loading|frozen|grid|report [--study DIR]
        [--only KNOB ...] [--out DIR]
    python experiments/payoff-fashion-mnist/checks.py seg-steps|seg-steps-report --study DIR
        [--order ORDER] [--seed S] [--out DIR]
"""

from __future__ import annotations

import argparse
import itertools
import json
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import yaml

from semaim.config import EncoderConfig, FinetuneConfig, PretrainConfig
from semaim.data import open_dataset
from semaim.encoder import encoder_from_checkpoint
from semaim.engine.checkpoint import load_checkpoint
from semaim.engine.runlog import read_records
from semaim.evaluate.features import POOLS
from semaim.evaluate.finetune import build_classifier, eval_loader
from semaim.model.semaim import SemAIM
from semaim.study.payoff import PayoffConfig, encoder_source, frozen_scores, labelled_features, segment_config

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # experiments/common.py
from common import shown  # noqa: E402

HERE = Path(__file__).resolve().parent  # the payoff study on Fashion-MNIST: the default --study
ARMS = ("scratch", "semantic")
LOADING = "loading.md"  # in the study's checks/: what ``loading`` found


SCRIPT = shown(Path(__file__))


@dataclass(frozen=True)
class Grid:
    """Runs of the study's seed 0 (``run``, per arm) again, one knob changed: ``knob -> (text, --set values)``.
    ``kind`` and ``labels`` find the study's row of ``run`` in its results.jsonl."""

    command: str
    run: str
    kind: str
    labels: int
    metric: str  # the validation score in eval.jsonl (``best_<metric>`` in the study's row)
    title: str
    knobs: dict[str, tuple[str, list[str]]]


# A run's config.yaml holds its schedule already stretched to 1800 steps (100 epochs on 600 images), and
# stretching only lengthens: a new step budget must start from the recipe's own one-epoch schedule.
UNSTRETCHED = ["finetune.epochs=1", "finetune.warmup_epochs=0.1", "finetune.eval_every=1"]
GRIDS = {
    "finetune": Grid(
        "finetune",
        "finetune-{arm}-K60-seed0",
        "finetune",
        60,
        "val_top1",
        "The 1 %-label fine-tuning, one knob at a time: validation top-1 (%)",
        {  # in the order they run (the most likely cause first)
            "ld0.5": ("layer decay 0.5 (shipped 0.75)", ["finetune.layer_decay=0.5"]),
            "blr3e-3": ("blr 3e-3 (shipped 1e-2)", ["finetune.blr=3e-3"]),
            "cls": ("cls token, final norm kept (shipped: average pool + fc_norm)", ["finetune.pool=cls"]),
            "steps900": ("900 steps (shipped 1800)", [*UNSTRETCHED, "finetune.budget_steps=900"]),
            "steps3600": ("3600 steps (shipped 1800)", [*UNSTRETCHED, "finetune.budget_steps=3600"]),
        },
    ),
    # The segmentation lrs were first chosen on scratch alone (2e-3 for both modes); the grid re-chose them on
    # both encoders' mean validation mIoU (shipped now: 8e-3, linear 3e-1), and the study's seed-0 runs were
    # redone with them. The first runs are the 2e-3 rows, moved here from the study's runs/ unchanged. The linear
    # knobs' finished runs set segment.lr (linear_lr did not exist yet): in linear mode the same run.
    "segment": Grid(
        "segment",
        "segment-finetune-{arm}-seed0",
        "segment-finetune",
        0,
        "val_miou",
        "The segmentation fine-tuning's lr "
        "(first 2e-3, chosen on scratch alone; shipped 8e-3): validation mIoU",
        {
            "seg-lr1e-3": ("lr 1e-3", ["segment.lr=1e-3"]),
            "seg-lr2e-3": (
                "lr 2e-3 (the first recipe's; the study's first seed-0 runs)",
                ["segment.lr=2e-3"],
            ),
            "seg-lr4e-3": ("lr 4e-3", ["segment.lr=4e-3"]),
            "seg-lr8e-3": ("lr 8e-3", ["segment.lr=8e-3"]),
            "seg-lr1.6e-2": ("lr 1.6e-2", ["segment.lr=1.6e-2"]),
        },
    ),
    "segment-linear": Grid(
        "segment",
        "segment-linear-{arm}-seed0",
        "segment-linear",
        0,
        "val_miou",
        "The frozen linear segmentation "
        "probe's lr (first the fine-tuning's 2e-3; shipped `linear_lr` 3e-1): validation mIoU",
        {
            "seg-lin-lr5e-4": ("lr 5e-4", ["segment.linear_lr=5e-4"]),
            "seg-lin-lr2e-3": (
                "lr 2e-3 (the first recipe's; the study's first seed-0 runs)",
                ["segment.linear_lr=2e-3"],
            ),
            "seg-lin-lr1e-2": ("lr 1e-2", ["segment.linear_lr=1e-2"]),
            "seg-lin-lr3e-2": ("lr 3e-2", ["segment.linear_lr=3e-2"]),
            "seg-lin-lr1e-1": ("lr 1e-1", ["segment.linear_lr=1e-1"]),
            "seg-lin-lr3e-1": ("lr 3e-1", ["segment.linear_lr=3e-1"]),
            "seg-lin-lr1": ("lr 1", ["segment.linear_lr=1.0"]),
        },
    ),
}
KNOBS = {knob: grid for grid in GRIDS.values() for knob in grid.knobs}


def check_loading(study: Path) -> list[str]:
    """The classifier's encoder at step 0 against the pretraining model it was loaded from."""
    path = study / "runs/pretrain-semantic-seed0/checkpoint-last.pt"
    ckpt = load_checkpoint(path, kind=None)
    cfg = PretrainConfig.from_dict(ckpt["config"])
    trained = SemAIM(cfg.model)
    trained.load_state_dict(ckpt["model"])
    trained.eval()
    base = open_dataset(cfg.data.data, "train", cfg.model.in_chans)
    size = (cfg.model.img_size, cfg.model.img_size)
    loader = eval_loader(
        base, list(range(64)), size, in_chans=cfg.model.in_chans, workers=0, mean=base.mean, std=base.std
    )
    images = torch.cat([batch for batch, _, _ in loader])
    state, args = encoder_from_checkpoint(path)
    lines = [f"checkpoint `{shown(path)}`, 64 training images through the evaluation transform:", ""]
    with torch.no_grad():
        reference = trained.forward_features(images)
        pre_norm = trained.embed(images)
        for block in trained.blocks:
            pre_norm = block(pre_norm)
        for pool in ("cls", "avg"):
            clf = build_classifier(args, state, 10, FinetuneConfig(pool=pool), str(path)).eval()
            theirs, ours = dict(trained.named_parameters()), dict(clf.named_parameters())
            shared = [k for k in ours if k in theirs]
            unequal = [k for k in shared if not torch.equal(ours[k], theirs[k])]
            features = clf.forward_features(images)  # avg pool: timm drops the final norm (fc_norm instead)
            diff = (features - (reference if pool == "cls" else pre_norm)).abs().max().item()
            logits = clf(images).abs().max().item()
            lines.append(
                f"- pool `{pool}`: {len(shared)} encoder tensors shared with the pretraining model, "
                f"{len(unequal)} unequal; max |feature difference| {diff:.2e}; max |logit| at step 0 "
                f"{logits:.1e} (the head starts near zero, so the first gradients train the head, "
                "not the encoder)"
            )
    lines.append(
        f"- normalisation: pretraining and fine-tuning both use the dataset's mean {base.mean} / std "
        f"{base.std} (`PretrainTransform`, the same class, for both)"
    )
    return lines


def semaim(*args: str, log: Path) -> None:
    cmd = [sys.executable, "-m", "semaim", *args]
    print(" ".join(cmd), flush=True)
    with open(log, "w") as out:
        subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, check=True)


def run_frozen(study: Path, folder: Path) -> None:
    """k-NN@20 and the linear probe of the scratch and semantic encoders of seed 0, learning from the
    1 %-label fine-tuning's own images (the study's pixel floors, with an encoder)."""
    plan = PayoffConfig.from_dict(yaml.safe_load((study / "config.yaml").read_text())).study
    features = labelled_features(plan, 60, 0)
    encoders = {
        "scratch": EncoderConfig(random=True, preset=str(study / "runs/model.yaml"), init_seed=0),
        "semantic": EncoderConfig(checkpoint=str(study / "runs/pretrain-semantic-seed0/checkpoint-last.pt")),
    }
    for pool in POOLS:  # the study's frozen rows read the cls token; fine-tuning pools the patch tokens
        for arm, encoder in encoders.items():
            out = folder / f"frozen-{arm}-{pool}.json"
            if not out.is_file():
                scores = frozen_scores(encoder, replace(features, pool=pool), progress=False)
                out.write_text(json.dumps(scores) + "\n")


def run_grid(study: Path, folder: Path, only: list[str]) -> None:
    for knob in only:
        grid = KNOBS[knob]
        for arm in ARMS:
            out = folder / f"{arm}-{knob}"
            if (out / "result.json").is_file():
                continue
            resume = ["--resume"] if (out / "checkpoint-last.pt").is_file() else ["--force"]
            sets = [arg for assignment in grid.knobs[knob][1] for arg in ("--set", assignment)]
            recipe = study / "runs" / grid.run.format(arm=arm) / "config.yaml"
            semaim(
                grid.command,
                "--config",
                str(recipe),
                *sets,
                "--no-progress",
                "--out",
                str(out),
                *resume,
                log=folder / f"{arm}-{knob}.log",
            )


def last_val(run: Path, metric: str) -> str:
    """The last validation score of a finished run (the one the shipped ``select: last`` keeps)."""
    if not (run / "result.json").is_file():
        return "not run"
    return f"{read_records(run / 'eval.jsonl')[-1][metric]:.2f}"


def study_val(rows: list[dict], grid: Grid, arm: str) -> str:
    """The validation score of the study's own ``grid.run`` of ``arm`` (seed 0), from its row. The row records
    the best one and the run keeps its last weights (``select: last``): the same score for every run here,
    since the 1 %-label fine-tuning validates once, at its end, and each segmentation run's last validation
    was its best (``seg-lr8e-3`` and ``seg-lin-lr3e-1`` repeat them, score for score)."""
    key = (grid.kind, arm, grid.labels, 0)
    found = [r for r in rows if (r["kind"], r["encoder"], r["labels"], r["seed"]) == key]
    return f"{found[-1][f'best_{grid.metric}']:.2f}" if found else "not run"


def grid_table(study: Path, folder: Path, grid: Grid) -> list[str]:
    study_rows = read_records(study / "results.jsonl")
    lines = [
        "",
        f"## {grid.title}",
        "",
        f"The study's `{grid.run}` runs with one `--set` (validation split of "
        "the study; mean: of the two encoders):",
        "",
        "| recipe | scratch | semantic | mean | semantic − scratch |",
        "|---|---|---|---|---|",
    ]
    rows = {"shipped (the study's runs)": [study_val(study_rows, grid, arm) for arm in ARMS]}
    for knob, (text, _) in grid.knobs.items():
        rows[text] = [last_val(folder / f"{arm}-{knob}", grid.metric) for arm in ARMS]
    for text, cells in rows.items():
        mean = gap = ""
        if "not run" not in cells:
            scratch, semantic = map(float, cells)
            mean, gap = f"{(scratch + semantic) / 2:.2f}", f"{semantic - scratch:+.2f}"
        lines.append(f"| {text} | {cells[0]} | {cells[1]} | {mean} | {gap} |")
    return lines


SEG_EPOCHS = (1, 3, 6)  # segmentation fine-tuning epochs of 250 steps; the shipped `cpu` recipe runs 3


def seg_steps_runs(folder: Path, order: str, seed: int) -> dict[tuple[str, int], Path]:
    """The run folder of each (encoder, epochs) of the ``seg-steps`` check."""
    return {
        (arm, epochs): folder / f"seg-steps-{arm}-seed{seed}-ep{epochs}"
        for arm in ("scratch", order)
        for epochs in SEG_EPOCHS
    }


def run_seg_steps(
    study: Path, folder: Path, order: str, seed: int, epochs_first: list[int], arms: list[str]
) -> None:
    """Segmentation fine-tuning of the scratch encoder and one pretrained encoder of ``seed`` for 1 / 3 / 6
    epochs (warmup a tenth of them, as shipped): does a longer fine-tuning make up the pretrained head start,
    as it does for classification (``steps900`` / ``steps3600``)? 3 epochs repeats the study's own run."""
    plan = PayoffConfig.from_dict(yaml.safe_load((study / "config.yaml").read_text())).study
    runs = seg_steps_runs(folder, order, seed)
    for arm, epochs in ((a, e) for a in ("scratch", order) if a in arms for e in epochs_first):
        out = runs[arm, epochs]
        if (out / "result.json").is_file():
            continue
        while arm == order and not any(
            (r["kind"], r["encoder"], r["seed"]) == ("pretrain", order, seed)
            for r in read_records(study / "results.jsonl")
        ):
            print(f"waiting for the study's {order} seed {seed} pretraining to finish", flush=True)
            time.sleep(60)  # its checkpoint-last.pt is a mid-run one until its row is written
        cfg = segment_config(
            plan, encoder_source(plan, arm, seed, study), "finetune", seed
        )  # the study's run
        cfg.segment.epochs, cfg.segment.warmup_epochs = epochs, 0.1 * epochs
        recipe = folder / f"{out.name}.recipe.yaml"  # beside its log
        recipe.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        resume = ["--resume"] if (out / "checkpoint-last.pt").is_file() else ["--force"]
        semaim(
            "segment",
            "--config",
            str(recipe),
            "--no-progress",
            "--out",
            str(out),
            *resume,
            log=folder / f"{out.name}.log",
        )


def seg_steps_report(study: Path, folder: Path, order: str, seed: int, out_dir: Path) -> Path:
    """``dense-<data>-checks.md``: validation mIoU against the fine-tuning budget, and the 3-epoch runs'
    test mIoU against the study's rows of the same runs (a repeat must give the same number)."""
    data = yaml.safe_load((study / "config.yaml").read_text())["study"]["data"]
    runs = seg_steps_runs(folder, order, seed)
    lines = [
        f"# Dense prediction on `{data}`: does a longer fine-tuning make up the pretrained head start?",
        "",
        f"`python {SCRIPT} seg-steps --study {shown(study)} --order {order} --seed {seed}`: the "
        f"study's segmentation fine-tuning (`cpu` recipe, seed {seed}) of its scratch encoder and of its "
        f"`{order}` encoder for 1, 3 (as shipped) and 6 epochs of 250 steps, warmup a tenth of them. "
        "Last validation mIoU (%): a diagnostic, no choice is made with it.",
        "",
        f"| fine-tuning | scratch | `{order}` | `{order}` − scratch |",
        "|---|---|---|---|",
    ]
    for epochs in SEG_EPOCHS:
        cells = [last_val(runs[arm, epochs], "val_miou") for arm in ("scratch", order)]
        gap = f"{float(cells[1]) - float(cells[0]):+.2f}" if "not run" not in cells else ""
        lines.append(
            f"| {epochs} epoch{'s' * (epochs > 1)}, {250 * epochs} steps | {cells[0]} | {cells[1]} | {gap} |"
        )
    rows = {
        (r["encoder"], r["seed"]): r
        for r in read_records(study / "results.jsonl")
        if r["kind"] == "segment-finetune"
    }
    lines += ["", "The 3-epoch runs repeat the study's: test mIoU here / in the study's rows:", ""]
    for arm in ("scratch", order):
        result, row = runs[arm, 3] / "result.json", rows.get((arm, seed))
        here = f"{json.loads(result.read_text())['test_miou']:.2f}" if result.is_file() else "not run"
        lines.append(f"- `{arm}`: {here} / {row['test_miou']:.2f}" if row else f"- `{arm}`: {here} / no row")
    out = out_dir / f"dense-{data}-checks.md"
    out.write_text("\n".join(lines) + "\n")
    print(f"wrote {out}")
    return out


def loading_lines(study: Path, folder: Path) -> list[str]:
    """What ``loading`` found, as it wrote it to ``checks/loading.md``."""
    if not (folder / LOADING).is_file():
        return [f"Not run yet: `python {SCRIPT} loading --study {shown(study)}`."]
    return (folder / LOADING).read_text().splitlines()


def report(study: Path, folder: Path, out_dir: Path) -> Path:
    lines = [
        "# Payoff study: why the gain at 1 % labels is small — the usual causes, checked",
        "",
        f"`python {SCRIPT} loading|frozen|grid|report --study {shown(study)}`; every check starts "
        "from the study's seed-0 runs (`runs/finetune-*-K60-seed0`, `runs/pretrain-semantic-seed0`).",
        "",
        "## Loading and normalisation",
        "",
        *loading_lines(study, folder),
        "",
        "## The frozen representation at 1 % labels",
        "",
        "Test top-1 (%) of frozen features on the 600 images (60 per class) the 1 %-label fine-tuning trains "
        "on: a diagnostic, no choice is made with it.",
        "",
        "| | scratch | semantic | difference |",
        "|---|---|---|---|",
    ]
    for pool, (metric, key) in itertools.product(
        POOLS, (("knn_top1", "k-NN@20"), ("linear_top1", "linear probe"))
    ):
        key = f"{key}, {pool}"
        paths = [folder / f"frozen-{arm}-{pool}.json" for arm in ARMS]
        scores = [json.loads(path.read_text())[metric] if path.is_file() else None for path in paths]
        cells = [f"{s:.2f}" if s is not None else "not run" for s in scores]
        gap = f"{scores[1] - scores[0]:+.2f}" if None not in scores else ""
        lines.append(f"| {key} | {cells[0]} | {cells[1]} | {gap} |")
    for grid in GRIDS.values():  # the grids this study ran (any knob, either arm)
        if any((folder / f"{arm}-{knob}").is_dir() for knob in grid.knobs for arm in ARMS):
            lines += grid_table(study, folder, grid)
    out = out_dir / f"{study.name}-checks.md"
    out.write_text("\n".join(lines) + "\n")
    print(f"wrote {out}")
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "what", choices=("loading", "frozen", "grid", "report", "seg-steps", "seg-steps-report")
    )
    parser.add_argument(
        "--study",
        type=Path,
        help=f"the study folder (default: {shown(HERE)}; seg-steps: required, an order study with "
        "segmentation runs)",
    )
    parser.add_argument(
        "--out", type=Path, help="where the reports go (default: the study folder, where they live)"
    )
    parser.add_argument("--only", nargs="+", default=list(GRIDS["finetune"].knobs), choices=list(KNOBS))
    parser.add_argument(
        "--order",
        default="semantic",
        help="seg-steps: the pretrained encoder (runs/pretrain-ORDER-seedSEED) set against scratch",
    )
    parser.add_argument("--seed", type=int, default=0, help="seg-steps: the study's seed")
    parser.add_argument(
        "--epochs",
        type=int,
        nargs="+",
        default=list(SEG_EPOCHS),
        choices=SEG_EPOCHS,
        help="seg-steps: the budgets to run, in this order",
    )
    parser.add_argument(
        "--arm",
        nargs="+",
        help="seg-steps: only these encoders (scratch and/or ORDER; one process each on two cores)",
    )
    args = parser.parse_args(argv)
    if args.study is None:
        if args.what.startswith("seg-steps"):
            parser.error("seg-steps needs --study: the order study folder with segmentation runs")
        args.study = HERE
    folder = args.study / "checks"
    out_dir = args.out or args.study
    if args.what not in ("report", "seg-steps-report"):
        folder.mkdir(parents=True, exist_ok=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    if args.what.startswith("seg-steps"):  # its own report, beside the study's dense-<data>.md
        if args.what == "seg-steps":
            run_seg_steps(
                args.study, folder, args.order, args.seed, args.epochs, args.arm or ["scratch", args.order]
            )
        seg_steps_report(args.study, folder, args.order, args.seed, out_dir)
        return
    if args.what == "loading":
        lines = check_loading(args.study)
        (folder / LOADING).write_text("\n".join(lines) + "\n")
        print("\n".join(lines))
    elif args.what == "frozen":
        run_frozen(args.study, folder)
    elif args.what == "grid":
        run_grid(args.study, folder, args.only)
    report(args.study, folder, out_dir)


if __name__ == "__main__":
    main()
