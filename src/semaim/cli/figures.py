"""``semaim visualize`` (every order on images, Fig. 2 / S1) and ``semaim plot-metrics`` (training curves)."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from ..errors import ConfigError
from ..presets import load_preset
from .vocabulary import Deprecated, add_output_file, check_output_file, helped


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("visualize", help="every order, cls attention and similarity map on images")
    p.add_argument("images", nargs="*", help="image files or folders")
    p.add_argument(
        "--samples", nargs="*", metavar="NAME", help="scikit-image photos (astronaut chelsea coffee rocket …)"
    )
    p.add_argument("--data", help=helped("--data", "here: images from its test split (--count of them)"))
    p.add_argument("--count", type=int, default=8, help="how many images with --data [default: 8]")
    g = p.add_mutually_exclusive_group()
    g.add_argument(
        "--checkpoint", help="pretraining checkpoint or exported encoder [default: a random model]"
    )
    g.add_argument("--teacher", help="a teacher checkpoint file (with --teacher-arch)")
    p.add_argument("--teacher-arch", help="timm architecture of --teacher")
    p.add_argument("--model-config", default="cpu-tiny", help=helped("--model-config", default="cpu-tiny"))
    p.add_argument("--preset", dest="model_config", action=Deprecated, instead="--model-config")
    p.add_argument(
        "--seed",
        type=int,
        default=0,
        help=helped("--seed", "here: the random model's and the orders' noise", 0),
    )
    add_output_file(p, "a PNG", "figure.png")
    p.add_argument("--pdf", action="store_true", help="also write a PDF beside the PNG")
    p.add_argument("--dpi", type=int, default=110, help="resolution of the PNG [default: 110]")

    p = sub.add_parser("plot-metrics", help="loss, lr and throughput curves of runs")
    p.add_argument("runs", nargs="+", help="run folders (with metrics.jsonl)")
    add_output_file(p, "a PNG, PDF or SVG", "curves.png")
    p.add_argument("--smooth", type=int, default=20, help="moving-average window of the loss [default: 20]")


def run_visualize(args: argparse.Namespace) -> int:
    from ..data import open_dataset
    from ..data.folders import IMAGENET_MEAN, IMAGENET_STD
    from ..encoder import load_encoder, random_encoder
    from ..figures.order_maps import dataset_images, load_images, order_figure, sample_images
    from ..model.teacher import load_teacher

    sources = sum(bool(x) for x in (args.images, args.samples is not None, args.data))
    if sources != 1:
        raise ConfigError("images: give exactly one of image paths, --samples or --data")
    inputs = [*args.images, args.checkpoint, args.teacher, args.data]
    check_output_file(args.out, inputs=inputs, force=args.force, suffixes=(".png",))
    if args.checkpoint:
        vit, what = load_encoder(args.checkpoint), f"checkpoint {Path(args.checkpoint).name}"
    elif args.teacher:
        if not args.teacher_arch:
            raise ConfigError("--teacher-arch: the timm architecture of --teacher is required")
        vit, what = load_teacher(args.teacher_arch, args.teacher), f"teacher {args.teacher_arch}"
    else:
        torch.manual_seed(args.seed)
        shape = load_preset(args.model_config).model
        vit, what = random_encoder(shape, args.seed), f"random {args.model_config} model"
    mean, std = IMAGENET_MEAN, IMAGENET_STD
    if args.data:
        base = open_dataset(args.data, "test")
        images, mean, std = (
            dataset_images(base, args.count),
            base.mean,
            base.std,
        )  # greyscale stats replicated
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
    from ..figures.curves import metrics_figure

    check_output_file(args.out, inputs=args.runs, force=args.force, suffixes=(".png", ".pdf", ".svg"))
    print(f"wrote {metrics_figure(args.runs, args.out, args.smooth)}")
    return 0
