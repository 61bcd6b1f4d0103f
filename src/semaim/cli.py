"""``semaim <command>``: the command line. ``python -m semaim`` is the same program.

Commands: ``pretrain`` (Algorithm 1), ``knn``, ``linprobe``, ``finetune``, ``segment`` (evaluation),
``export``, ``visualize`` and ``plot-metrics`` (figures). Configuration comes from a preset
(``configs/*.yaml``), then the flags, then ``--set section.field=value`` overrides, all checked against
the typed config.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from .config import (
    TARGETS,
    EncoderConfig,
    FeaturesConfig,
    FinetuneConfig,
    FinetuneRunConfig,
    KnnConfig,
    KnnRunConfig,
    LinprobeRunConfig,
    PretrainConfig,
    SegmentRunConfig,
)
from .errors import ConfigError, NonFiniteLossError, SemAIMError, SemAIMWarning
from .model.orders import ORDERS
from .presets import build_config, load_preset, preset_names

# flag -> config field; None values mean "not given"
PRETRAIN_FLAGS = {
    "data": "data.data",
    "limit": "data.limit",
    "workers": "data.workers",
    "skip_bad_images": "data.skip_bad_images",
    "epochs": "train.epochs",
    "batch_size": "train.batch_size",
    "accum_steps": "train.accum_steps",
    "seed": "train.seed",
    "device": "train.device",
    "precision": "train.precision",
    "order": "model.order",
    "target": "model.target",
    "teacher": "model.teacher_path",
    "teacher_arch": "model.teacher_arch",
}


def add_pretrain_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "pretrain",
        help="pretrain a SemAIM model (Algorithm 1)",
        description="Pretrain a SemAIM model. Settings: preset, then flags, then --set overrides; a flag "
        "not given keeps the preset's value.",
    )
    g = p.add_argument_group("configuration")
    g.add_argument(
        "--preset", default=None, help=f"one of {preset_names()} or a YAML file [default: cpu-tiny]"
    )
    g.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="any config field, e.g. model.depth=6"
    )
    g = p.add_argument_group("data")
    g.add_argument("--data", help="'fashion-mnist', 'fashion-mnist:/dir', or an image folder")
    g.add_argument("--limit", type=int, help="only the first N training images")
    g.add_argument("--workers", type=int, help="data loader worker processes")
    g.add_argument("--skip-bad-images", action="store_const", const=True, help="skip unreadable images")
    g = p.add_argument_group("training")
    g.add_argument("--epochs", type=int)
    g.add_argument(
        "--batch-size", type=int, help="effective batch per optimizer step (all ranks × accumulation)"
    )
    g.add_argument("--accum-steps", type=int, help="gradient accumulation steps")
    g.add_argument("--seed", type=int)
    g.add_argument("--device", help="auto, cpu, cuda, cuda:N")
    g.add_argument(
        "--precision",
        choices=["auto", "fp32", "bf16", "fp16"],
        help="auto: bf16 where the device computes it natively, else fp32",
    )
    g = p.add_argument_group("method")
    g.add_argument("--order", choices=tuple(ORDERS), help="the autoregression order (Eq. 2-6)")
    g.add_argument("--target", choices=TARGETS, help="what each patch predicts (Eq. 12)")
    g.add_argument("--teacher", help="teacher checkpoint file (target=features)")
    g.add_argument("--teacher-arch", help="teacher timm architecture, e.g. vit_base_patch16_224")
    add_run_folder_arguments(p.add_argument_group("run folder"), "pretrain")


def add_run_folder_arguments(p: argparse.ArgumentParser | argparse._ArgumentGroup, command: str) -> None:
    """``--out`` (default ``runs/COMMAND``), ``--resume``, ``--force``, ``--no-progress``: a training run's folder."""
    p.add_argument("--out", default=f"runs/{command}", help=f"run folder [default: runs/{command}]")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint-last.pt")
    p.add_argument(
        "--force", action="store_true", help="start a new run in a non-empty OUT (removes its run files)"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar or progress lines")
    p.add_argument(
        "--log-interval",
        type=seconds,
        metavar="SECONDS",
        help="seconds between progress lines when stderr is not a terminal (a bar otherwise) [default: 60]",
    )


def run_preset(args: argparse.Namespace, name: str, default: str | None) -> str | None:
    """``--preset`` / ``--recipe``; when resuming without one, the run folder's own ``config.yaml``."""
    given = getattr(args, name)
    saved = Path(args.out) / "config.yaml"
    if given is None and getattr(args, "resume", False) and saved.is_file():
        return str(saved)
    return given or default


def flag_values(args: argparse.Namespace, flags: dict[str, str]) -> dict[str, object]:
    """``{config key: value}`` of the flags given on the command line (``None`` = not given)."""
    return {key: getattr(args, flag) for flag, key in flags.items()}


def pretrain_config(args: argparse.Namespace) -> PretrainConfig:
    """Preset (or, when resuming without --preset, the run's own config), then flags, then --set."""
    preset = run_preset(args, "preset", "cpu-tiny")
    return build_config(PretrainConfig, preset, flag_values(args, PRETRAIN_FLAGS), args.set)


def run_pretrain(args: argparse.Namespace) -> int:
    from .engine.pretrain import pretrain

    cfg = pretrain_config(args)
    pretrain(cfg, args.out, resume=args.resume, force=args.force, progress=not args.no_progress)
    return 0


ENCODER_FLAGS = {
    "checkpoint": "encoder.checkpoint",
    "random": "encoder.random",
    "pixels": "encoder.pixels",
    "preset": "encoder.preset",
    "seed": "encoder.init_seed",
}
FEATURE_FLAGS = {
    "data": "features.data",
    "pool": "features.pool",
    "batch_size": "features.batch_size",
    "workers": "features.workers",
    "device": "features.device",
    "precision": "features.precision",
    "cache": "features.cache",
    "labels_per_class": "features.labels_per_class",
    "label_fraction": "features.label_fraction",
}
LINPROBE_FLAGS = {
    "epochs": "probe.epochs",
    "probe_batch_size": "probe.batch_size",
    "blr": "probe.blr",
    "optimizer": "probe.optimizer",
}
STARTING_ENCODER_FLAGS = {
    "checkpoint": "encoder.checkpoint",
    "random": "encoder.random",
    "preset": "encoder.preset",
    "init_seed": "encoder.init_seed",
}
FINETUNE_FLAGS = {
    **STARTING_ENCODER_FLAGS,
    "data": "finetune.data",
    "limit": "finetune.limit",
    "labels_per_class": "finetune.labels_per_class",
    "label_fraction": "finetune.label_fraction",
    "val_size": "finetune.val_size",
    "pool": "finetune.pool",
    "select": "finetune.select",
    "device": "finetune.device",
}
SEGMENT_FLAGS = {
    **STARTING_ENCODER_FLAGS,
    "data": "segment.data",
    "mode": "segment.mode",
    "num_classes": "segment.num_classes",
    "limit": "segment.limit",
    "val_size": "segment.val_size",
    "select": "segment.select",
    "device": "segment.device",
}


def seconds(text: str) -> float:
    """An argparse type: a number of seconds >= 0."""
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"expected seconds >= 0, got {text!r}")
    return value


def add_set_argument(p: argparse.ArgumentParser, example: str) -> None:
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help=f"any config field, e.g. {example}"
    )


def add_encoder_arguments(p: argparse.ArgumentParser) -> None:
    """The flags of ``knn`` and ``linprobe``: which encoder, which features, where the result goes."""
    g = p.add_argument_group("encoder (one of)")
    src = g.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="pretraining / fine-tuning checkpoint or exported .safetensors")
    src.add_argument(
        "--random",
        action="store_const",
        const=True,
        help="floor: a randomly initialised encoder (of --preset)",
    )
    src.add_argument(
        "--pixels", action="store_const", const=True, help="floor: raw pixels, flattened and normalised"
    )
    e, f = EncoderConfig(), FeaturesConfig()  # the defaults, shown in the help
    g.add_argument(
        "--preset", help=f"model shape and input size for --random / --pixels [default: {e.preset}]"
    )
    g.add_argument("--seed", type=int, help=f"initialisation seed for --random [default: {e.init_seed}]")
    g = p.add_argument_group("features")
    g.add_argument("--data", help=f"'fashion-mnist' or a folder with train/ and val/ [default: {f.data}]")
    g.add_argument(
        "--pool", choices=["cls", "avg"], help=f"cls token or mean of patch tokens [default: {f.pool}]"
    )
    g.add_argument("--batch-size", type=int, help=f"feature extraction batch [default: {f.batch_size}]")
    g.add_argument("--workers", type=int, help=f"[default: {f.workers}]")
    g.add_argument("--device", help=f"auto, cpu, cuda, cuda:N [default: {f.device}]")
    g.add_argument("--precision", choices=["auto", "fp32", "bf16"], help=f"[default: {f.precision}]")
    g.add_argument("--cache", help="folder to cache extracted features in")
    g.add_argument(
        "--labels-per-class",
        type=int,
        help="learn from K labelled images per class: the subset "
        "`finetune --labels-per-class K` trains on (same --set features.split_seed/subset_seed)",
    )
    g.add_argument("--label-fraction", type=float, help="... or from this fraction of every class")
    g.add_argument("--out", help="write the results as JSON here")
    g.add_argument("--no-progress", action="store_true", help="no progress bar or progress lines")
    g.add_argument(
        "--log-interval",
        type=seconds,
        metavar="SECONDS",
        help="seconds between progress lines when stderr is not a terminal (a bar otherwise) [default: 60]",
    )


def add_eval_parsers(sub: argparse._SubParsersAction) -> None:
    from .export import EXPORT_FORMATS

    fmt = argparse.HelpFormatter  # defaults come from the config and are written into each help text
    p = sub.add_parser("knn", help="weighted k-NN accuracy of frozen features", formatter_class=fmt)
    add_encoder_arguments(p)
    k = KnnConfig()
    p.add_argument(
        "--ks", type=int, nargs="+", help=f"numbers of neighbours [default: {' '.join(map(str, k.ks))}]"
    )
    p.add_argument("--temperature", type=float, help=f"[default: {k.temperature}]")
    add_set_argument(p, "knn.temperature=0.1")

    p = sub.add_parser("linprobe", help="linear probe on frozen features", formatter_class=fmt)
    add_encoder_arguments(p)
    p.add_argument(
        "--recipe",
        help=f"one of {preset_names(LinprobeRunConfig)} or a YAML file [default: cpu]"
        " (paper: 90 ep, batch 4096, LARS)",
    )
    p.add_argument("--epochs", type=int)
    p.add_argument("--probe-batch-size", type=int, help="batch of the probe's optimizer")
    p.add_argument("--blr", type=float)
    p.add_argument("--optimizer", choices=["lars", "sgd"])
    add_set_argument(p, "probe.epochs=10")

    p = sub.add_parser("finetune", help="end-to-end fine-tuning (Table S2)", formatter_class=fmt)
    ft = FinetuneConfig()
    add_starting_encoder_arguments(p, "pretraining checkpoint or exported .safetensors")
    g = p.add_argument_group("labels and selection")
    g.add_argument(
        "--labels-per-class", type=int, help="train on K labelled images per class (stratified, seeded)"
    )
    g.add_argument("--label-fraction", type=float, help="... or on this fraction of every class, in (0, 1]")
    g.add_argument(
        "--val-size",
        type=int,
        help="validation images carved from the training split [default: 10 %%, at most 5000]",
    )
    g.add_argument(
        "--select",
        choices=["last", "best"],
        help=f"weights scored on the test split, once [default: {ft.select}]",
    )
    g.add_argument(
        "--pool",
        choices=["avg", "cls"],
        help="avg: mean of patch tokens + fc_norm (the official "
        f"fine-tuning); cls: cls token [default: {ft.pool}]",
    )
    p.add_argument("--data", help=f"'fashion-mnist' or a folder with train/ and val/ [default: {ft.data}]")
    p.add_argument(
        "--recipe",
        help=f"one of {preset_names(FinetuneRunConfig)} or a YAML file such as a "
        "run's config.yaml [default: cpu] (paper: Table S2)",
    )
    add_set_argument(p, "finetune.epochs=5 (or epochs=5)")
    p.add_argument("--limit", type=int, help="only the first N training images")
    p.add_argument("--device", help=f"auto, cpu, cuda, cuda:N [default: {ft.device}]")
    add_run_folder_arguments(p, "finetune")

    p = sub.add_parser("export", help="the encoder alone: timm's safetensors + json, or an MAE-format .pth")
    p.add_argument("--checkpoint", required=True)
    p.add_argument(
        "--format",
        default="safetensors",
        choices=EXPORT_FORMATS,
        help="safetensors (timm's keys, with a .json of the shape) "
        "or mae (a {'model': state_dict} .pth, the file detectron2's ViTDet and mmsegmentation's MAE "
        "configs load) [default: safetensors]",
    )
    p.add_argument("--out", help="[default: encoder.safetensors, or encoder.pth with --format mae]")


def add_starting_encoder_arguments(p: argparse.ArgumentParser, checkpoint_help: str) -> None:
    """The encoder a ``finetune`` / ``segment`` run starts from: a checkpoint, or the scratch baseline."""
    e = EncoderConfig()
    g = p.add_argument_group("encoder (one of)")
    src = g.add_mutually_exclusive_group()
    src.add_argument("--checkpoint", help=checkpoint_help)
    src.add_argument(
        "--random",
        action="store_const",
        const=True,
        help="the scratch baseline: the encoder as pretraining initialises it (shape of --preset)",
    )
    g.add_argument("--preset", help=f"model shape for --random [default: {e.preset}]")
    g.add_argument("--init-seed", type=int, help=f"initialisation seed for --random [default: {e.init_seed}]")


def add_segment_parser(sub: argparse._SubParsersAction) -> None:
    from .config import SegmentConfig

    sg = SegmentConfig()
    p = sub.add_parser("segment", help="semantic segmentation: the encoder as a ViTDet backbone (mIoU)")
    add_starting_encoder_arguments(
        p,
        "pretraining / fine-tuning checkpoint, or an exported encoder (.safetensors or .pth, with its .json)",
    )
    g = p.add_argument_group("task")
    g.add_argument(
        "--data",
        help="cluttered-fashion-mnist[:dir], or a folder with train/ and val/, each with "
        f"images/ and masks/ (PNG class ids, 255 = ignore) [default: {sg.data}]",
    )
    g.add_argument(
        "--num-classes", type=int, help="classes of a mask folder (ids 0..K-1) [default: the data's own]"
    )
    g.add_argument(
        "--linear",
        dest="mode",
        action="store_const",
        const="linear",
        help="frozen-encoder linear probe (BN + 1x1 conv on the patch tokens) instead of fine-tuning "
        "the pyramid + Semantic FPN head end to end; its lr is segment.linear_lr when the recipe "
        "gives one (cpu: 0.3), else segment.lr",
    )
    g.add_argument("--limit", type=int, help="only the first N training images")
    g.add_argument(
        "--val-size",
        type=int,
        help="validation images carved from the training split [default: 10 %%, at most 5000]",
    )
    g.add_argument(
        "--select",
        choices=["last", "best"],
        help=f"weights scored on the test split, once [default: {sg.select}]",
    )
    p.add_argument(
        "--recipe",
        help=f"one of {preset_names(SegmentRunConfig)} or a YAML file such as a run's "
        "config.yaml [default: cpu] (paper: MAE's ADE20k recipe)",
    )
    add_set_argument(p, "segment.epochs=5 (or epochs=5)")
    p.add_argument("--device", help=f"auto, cpu, cuda, cuda:N [default: {sg.device}]")
    add_run_folder_arguments(p, "segment")


def add_figure_parsers(sub: argparse._SubParsersAction) -> None:
    fmt = argparse.ArgumentDefaultsHelpFormatter
    p = sub.add_parser(
        "visualize", help="every order, cls attention and similarity map on images", formatter_class=fmt
    )
    p.add_argument("images", nargs="*", help="image files or folders")
    p.add_argument(
        "--samples", nargs="*", metavar="NAME", help="scikit-image photos (astronaut chelsea coffee rocket …)"
    )
    p.add_argument("--data", help="take images from a dataset's test split, e.g. fashion-mnist")
    p.add_argument("--count", type=int, default=8, help="how many images with --data")
    g = p.add_mutually_exclusive_group()
    g.add_argument(
        "--checkpoint", help="pretraining checkpoint or exported encoder (default: a random model)"
    )
    g.add_argument("--teacher", help="a teacher checkpoint file (with --teacher-arch)")
    p.add_argument("--teacher-arch", help="timm architecture of --teacher")
    p.add_argument("--preset", default="cpu-tiny", help="model shape of the random model")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="figure.png")
    p.add_argument("--pdf", action="store_true", help="also write a PDF beside the PNG")
    p.add_argument("--dpi", type=int, default=110, help="resolution of the PNG")

    p = sub.add_parser("plot-metrics", help="loss, lr and throughput curves of runs", formatter_class=fmt)
    p.add_argument("runs", nargs="+", help="run folders (with metrics.jsonl)")
    p.add_argument("--out", default="curves.png")
    p.add_argument("--smooth", type=int, default=20, help="moving-average window of the loss")


def run_visualize(args: argparse.Namespace) -> int:
    from .data import open_dataset
    from .data.folders import IMAGENET_MEAN, IMAGENET_STD
    from .encoder import load_encoder, random_encoder
    from .figures.order_maps import dataset_images, load_images, order_figure, sample_images
    from .model.teacher import load_teacher

    sources = sum(bool(x) for x in (args.images, args.samples is not None, args.data))
    if sources != 1:
        raise ConfigError("images: give exactly one of image paths, --samples or --data")
    if args.checkpoint:
        vit, what = load_encoder(args.checkpoint), f"checkpoint {Path(args.checkpoint).name}"
    elif args.teacher:
        if not args.teacher_arch:
            raise ConfigError("--teacher-arch: the timm architecture of --teacher is required")
        vit, what = load_teacher(args.teacher_arch, args.teacher), f"teacher {args.teacher_arch}"
    else:
        torch.manual_seed(args.seed)
        vit, what = random_encoder(load_preset(args.preset).model, args.seed), f"random {args.preset} model"
    mean, std = IMAGENET_MEAN, IMAGENET_STD
    if args.data:
        base = open_dataset(args.data, "test")
        images, mean, std = (
            dataset_images(base, args.count),
            base.mean,
            base.std,
        )  # greyscale stats are replicated
    elif args.samples is not None:
        images = sample_images(args.samples)
    else:
        images = load_images(args.images)
    size = tuple(vit.patch_embed.img_size)
    out = order_figure(
        vit,
        images,
        size,
        mean=mean,
        std=std,
        out=args.out,
        pdf=args.pdf,
        title=what,
        seed=args.seed,
        dpi=args.dpi,
    )
    print(f"wrote {out}" + (f" and {out.with_suffix('.pdf')}" if args.pdf else ""))
    return 0


def run_plot_metrics(args: argparse.Namespace) -> int:
    from .figures.curves import metrics_figure

    print(f"wrote {metrics_figure(args.runs, args.out, args.smooth)}")
    return 0


def add_bench_parser(sub: argparse._SubParsersAction) -> None:
    from .bench import CONFIGS

    p = sub.add_parser(
        "bench",
        help="time the full pretraining step: fast path vs explicit masks",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--config", nargs="+", default=["vit-t16-224", "vit-s16-224", "vit-t4-32"], choices=sorted(CONFIGS)
    )
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--precision",
        choices=["auto", "fp32", "bf16", "fp16"],
        default="auto",
        help="auto: bf16 where the device computes it natively, else fp32; fp16: CUDA only",
    )
    p.add_argument(
        "--batch-size",
        type=_batch_size,
        metavar="N|max",
        help="batch of every config (default: the config's own); max: the largest power of two "
        "whose fast step fits in device memory",
    )
    p.add_argument("--max-batch", type=int, default=4096, help="upper bound of --batch-size max")
    p.add_argument("--fast-only", action="store_true", help="time the fast path alone (no explicit masks)")
    p.add_argument(
        "--matmul-size",
        type=int,
        help="side of the matmul that measures the ceiling (default: 2048 on CPU, 8192 on GPU)",
    )
    p.add_argument("--steps", type=int, default=5, help="timed steps per path")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory processes")
    p.add_argument("--sweep", action="store_true", help="step time against tokens and decoder depth instead")
    p.add_argument("--out", help="write the rows as JSON")


def run_bench_command(args: argparse.Namespace) -> int:
    from .bench import run_bench, run_sweep

    if args.sweep:
        rows = run_sweep(args.device, args.precision, args.steps, args.warmup)
        if args.out:
            _write_json(args.out, {"sweep": rows})
        return 0
    run_bench(
        args.config,
        args.device,
        args.precision,
        args.steps,
        args.warmup,
        not args.no_memory,
        args.out,
        args.batch_size,
        args.max_batch,
        args.fast_only,
        args.matmul_size,
    )
    return 0


def _batch_size(text: str) -> int | str:
    """``--batch-size``: a positive int, or ``max``."""
    if text == "max":
        return text
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive int or 'max', got {text!r}")
    return int(text)


def _print_results(title: str, rows: dict[str, dict[str, float]]) -> None:
    print(title)
    for metric, values in rows.items():
        print(f"  {metric:5s} " + "  ".join(f"k={k}: {v:6.2f}%" for k, v in values.items()))


def _write_json(path: str | None, result: dict) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(path).with_name(f".{Path(path).name}.tmp")
        tmp.write_text(json.dumps(result, indent=2) + "\n")
        tmp.replace(path)


def run_knn(args: argparse.Namespace) -> int:
    from .evaluate.encoders import choose_encoder, split_features
    from .evaluate.knn import knn_accuracy

    flags = {**ENCODER_FLAGS, **FEATURE_FLAGS, "ks": "knn.ks", "temperature": "knn.temperature"}
    cfg = build_config(KnnRunConfig, None, flag_values(args, flags), args.set)
    check_writable(args.out)
    enc = choose_encoder(cfg.encoder)
    train_f, train_y, test_f, test_y = split_features(cfg.features, enc, not args.no_progress)
    result = knn_accuracy(train_f, train_y, test_f, test_y, cfg.knn.ks, cfg.knn.temperature)
    f = cfg.features
    _print_results(f"k-NN ({enc.description}, {f.pool}, T={cfg.knn.temperature}) on {f.data}", result)
    _write_json(
        args.out,
        {**result, "encoder": enc.description, "data": f.data, "pool": f.pool, "config": cfg.to_dict()},
    )
    return 0


def run_linprobe(args: argparse.Namespace) -> int:
    from .evaluate.encoders import choose_encoder, split_features
    from .evaluate.linear import train_linear_probe

    flags = {**ENCODER_FLAGS, **FEATURE_FLAGS, **LINPROBE_FLAGS}
    cfg = build_config(LinprobeRunConfig, args.recipe or "cpu", flag_values(args, flags), args.set)
    check_writable(args.out)
    enc = choose_encoder(cfg.encoder)
    train_f, train_y, test_f, test_y = split_features(cfg.features, enc, not args.no_progress)
    result = train_linear_probe(train_f, train_y, test_f, test_y, cfg.probe, progress=not args.no_progress)
    f = cfg.features
    print(
        f"linear probe ({enc.description}, {f.pool}) on {f.data}: top-1 {result['top1']:.2f}%, "
        f"top-5 {result['top5']:.2f}%"
    )
    _write_json(
        args.out,
        {
            **result,
            "encoder": enc.description,
            "data": f.data,
            "recipe": cfg.to_dict()["probe"],
            "config": cfg.to_dict(),
        },
    )
    return 0


def run_supervised(args: argparse.Namespace, config_class: type, flags: dict[str, str], run: Callable) -> int:
    """``finetune`` / ``segment``: the run config from ``--recipe`` (when resuming, the run's own), the flags and
    ``--set``, then the run into ``--out``."""
    preset = run_preset(args, "recipe", "cpu")
    cfg = build_config(config_class, preset, flag_values(args, flags), args.set)
    run(cfg, args.out, args.resume, args.force, progress=not args.no_progress)
    return 0


def run_finetune(args: argparse.Namespace) -> int:
    from .evaluate.finetune import finetune

    return run_supervised(args, FinetuneRunConfig, FINETUNE_FLAGS, finetune)


def check_writable(path: str | None) -> None:
    """Fail before hours of feature extraction, not after, when ``--out`` cannot be written."""
    if not path:
        return
    folder = Path(path).parent
    probe = folder
    while not probe.exists():
        probe = probe.parent
    try:  # really write: os.access says yes to root even where nothing can be created (/proc)
        tempfile.TemporaryFile(dir=probe).close()
    except OSError as err:
        raise ConfigError(f"--out: cannot write {path} ({probe} is not a writable folder)") from err


def run_export(args: argparse.Namespace) -> int:
    from .export import export_encoder, export_path

    out = export_path(args.out, args.format)  # an unknown --format stops here, before anything is written
    check_writable(str(out))
    weights, meta = export_encoder(args.checkpoint, out, args.format)
    print(f"wrote {weights} and {meta}")
    return 0


def run_segment(args: argparse.Namespace) -> int:
    from .evaluate.segmentation.segment import segment

    return run_supervised(args, SegmentRunConfig, SEGMENT_FLAGS, segment)


def add_study_arguments(p: argparse.ArgumentParser, kind: str, example: str) -> None:
    """The flags every study shares: data, quick, seeds, study folder, report folder (``kind``-DATA.md), --set."""
    p.add_argument(
        "--data",
        default="fashion-mnist",
        help="fashion-mnist, cluttered-fashion-mnist, or an image folder with train/ and val/ class "
        "sub-folders (default: fashion-mnist)",
    )
    p.add_argument("--quick", action="store_true", help="a tiny smoke test of the whole pipeline")
    p.add_argument("--seeds", type=int, help="seeds per configuration (default: 3; --quick: 2)")
    p.add_argument(
        "--out",
        help=f"study folder (default: runs/{kind}-DATA[-quick]); rerun to resume; several "
        "processes on one folder share its runs (one per GPU, or two single-threaded on two CPU cores)",
    )
    p.add_argument("--report-dir", help=f"where {kind}-DATA.md and .png go (default: the study folder)")
    p.add_argument(
        "--only-seeds", type=int, nargs="+", help="run only these seeds' runs now (the rest on a rerun)"
    )
    p.add_argument(
        "--deadline",
        help="start only the runs expected to end by then (+90m, +2h30m, HH:MM "
        "(the next one), YYYY-MM-DDTHH:MM), from the finished runs of the same kind; the rest on a rerun (default: none)",
    )
    add_set_argument(p, example)
    p.add_argument("--no-progress", action="store_true", help="no progress bars or progress lines")
    p.add_argument(
        "--log-interval",
        type=seconds,
        metavar="SECONDS",
        help="seconds between progress lines when stderr is not a terminal (a bar otherwise) [default: 60]",
    )


def run_a_study(args: argparse.Namespace, kind: str, cfg, *, run, plot, report, settle=None) -> int:
    """Plan (with --set; ``settle(plan, folder)`` fixes what the folder's study has recorded), run (resumable),
    chart, report (``kind``-DATA.md), and the per-run rows beside the report."""
    from .config import parse_assignment
    from .study.runner import parse_deadline

    for assignment in args.set:
        cfg.set(*parse_assignment(assignment))
    name = args.data.split(":", 1)[0].rstrip("/").split("/")[-1]
    folder = Path(args.out or f"runs/{kind}-{name}{'-quick' if args.quick else ''}")
    plan = cfg.validate().study
    plan = settle(plan, folder) if settle else plan  # e.g. the precision the runs use, for the report too
    deadline = parse_deadline(args.deadline) if args.deadline else None
    rows = run(plan, folder, progress=not args.no_progress, only_seeds=args.only_seeds, deadline=deadline)
    report_dir = Path(args.report_dir or folder)
    report_dir.mkdir(parents=True, exist_ok=True)
    stem = f"{kind}-{name}"
    chart, markdown = report_dir / f"{stem}.png", report_dir / f"{stem}.md"
    plot(rows, plan, chart)
    command = f"semaim study {kind} --data {args.data}" + " --quick" * args.quick
    command += f" --seeds {args.seeds}" * bool(args.seeds) + f" --out {args.out}" * bool(args.out)
    command += f" --report-dir {args.report_dir}" * bool(args.report_dir)
    report(rows, plan, command + "".join(f" --set {a}" for a in args.set), markdown, chart)
    if report_dir.resolve() != folder.resolve():  # keep the per-run rows beside the report
        (report_dir / f"{stem}.jsonl").write_text((folder / "results.jsonl").read_text())
    print(f"wrote {markdown} and {chart}")
    return 0


def add_study_parsers(sub: argparse._SubParsersAction) -> None:
    fmt = argparse.HelpFormatter  # each help text states its default
    p = sub.add_parser("study", help="studies that answer a question with many runs and write a report")
    studies = p.add_subparsers(dest="study", required=True)
    q = studies.add_parser(
        "payoff",
        formatter_class=fmt,
        help="fine-tuning from semaim encoders vs from scratch, against labels, with floors",
    )
    add_study_arguments(q, "payoff", "study.finetune=[epochs=20,batch_size=32]")
    q = studies.add_parser(
        "orders",
        formatter_class=fmt,
        help="which order is best on my data: every order (and the plan's variants) pretrained, then "
        "fine-tuned, frozen and (with masks) segmented; also writes the payoff report of its "
        "scratch/semantic/raster runs",
    )
    add_study_arguments(q, "orders", "study.seeds=[0,1]")


def run_study_command(args: argparse.Namespace) -> int:
    from .study.payoff import (
        PayoffConfig,
        payoff_plan,
        plot_payoff,
        run_payoff,
        settle_precision,
        write_payoff_report,
    )

    if args.study == "orders":
        from .study.orders import orders_plan, plot_orders, write_orders_report

        cfg = PayoffConfig(orders_plan(args.data, args.quick, args.seeds))
        plot, report = plot_orders, write_orders_report
    else:
        cfg = PayoffConfig(payoff_plan(args.data, args.quick, args.seeds))
        plot, report = plot_payoff, write_payoff_report
    return run_a_study(
        args, args.study, cfg, run=run_payoff, plot=plot, report=report, settle=settle_precision
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="semaim", description="SemAIM: semantic-aware autoregressive image modeling"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    add_pretrain_parser(sub)
    add_eval_parsers(sub)
    add_figure_parsers(sub)
    add_bench_parser(sub)
    add_study_parsers(sub)
    add_segment_parser(sub)
    return parser


COMMANDS = {
    "pretrain": run_pretrain,
    "knn": run_knn,
    "linprobe": run_linprobe,
    "finetune": run_finetune,
    "export": run_export,
    "segment": run_segment,
    "visualize": run_visualize,
    "plot-metrics": run_plot_metrics,
    "bench": run_bench_command,
    "study": run_study_command,
}


def user_message(err: SemAIMError) -> str:
    """The error's own message. An error raised in a data-loader worker comes back with the worker's
    traceback in its text (PyTorch re-raises it so); the user needs only its last line."""
    text = str(err).strip()
    if "Original Traceback" in text:
        text = re.sub(r"^[\w.]+: ", "", text.splitlines()[-1])
    return text


def show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """semaim's own warnings as one line, ``semaim: warning: ...`` (they are about the input, not a file and
    line of ours); any other warning as Python shows it."""
    if issubclass(category, SemAIMWarning):
        print(f"semaim: warning: {message}", file=file or sys.stderr)
    else:
        warnings._showwarning_orig(message, category, filename, lineno, file, line)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command. A :class:`~semaim.errors.SemAIMError` (something the user can fix) prints its
    message and exits 2; a non-finite loss exits 1; any other exception is a bug and keeps its traceback.
    A usage error (argparse's message) returns 2 and ``--help`` returns 0, rather than leaving the process."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as usage:
        return usage.code if isinstance(usage.code, int) else 0
    if getattr(args, "log_interval", None) is not None:
        from .engine.progress import set_interval

        set_interval(args.log_interval)
    try:
        with warnings.catch_warnings():  # the command's warnings on one line each, as long as it runs
            warnings.showwarning = show_warning
            return COMMANDS[args.command](args)
    except NonFiniteLossError as err:
        print(f"semaim {args.command}: stopped: {err}", file=sys.stderr)
        return 1
    except SemAIMError as err:
        print(f"semaim {args.command}: error: {user_message(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"semaim {args.command}: interrupted; resume with --resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
