"""What the evaluation commands share: which encoder to evaluate, and its features on both splits."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from ..distributed import resolve_device
from ..export import load_encoder, random_encoder
from ..presets import load_preset
from .features import RawPixels, extract_features


@dataclass
class EncoderChoice:
    module: nn.Module
    img_size: tuple[int, int]
    in_chans: int
    cache_key: str
    description: str


def add_encoder_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("encoder (one of)")
    src = g.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="pretraining / fine-tuning checkpoint or exported .safetensors")
    src.add_argument(
        "--random", action="store_true", help="floor: a randomly initialised encoder (of --preset)"
    )
    src.add_argument("--pixels", action="store_true", help="floor: raw pixels, flattened and normalised")
    g.add_argument("--preset", default="cpu-tiny", help="model shape and input size for --random / --pixels")
    g.add_argument("--seed", type=int, default=0, help="initialisation seed for --random")
    g = p.add_argument_group("features")
    g.add_argument("--data", default="fashion-mnist", help="'fashion-mnist' or a folder with train/ and val/")
    g.add_argument("--pool", choices=["cls", "avg"], default="cls", help="cls token or mean of patch tokens")
    g.add_argument("--batch-size", type=int, default=256)
    g.add_argument("--workers", type=int, default=2)
    g.add_argument("--device", default="auto")
    g.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    g.add_argument("--cache", help="folder to cache extracted features in")
    g.add_argument("--out", help="write the results as JSON here")
    g.add_argument("--no-progress", action="store_true")


def choose_encoder(args: argparse.Namespace) -> EncoderChoice:
    if args.checkpoint:
        path = Path(args.checkpoint)
        vit = load_encoder(path)
        stat = path.stat()
        key = f"{path.resolve()}:{stat.st_mtime_ns}:{stat.st_size}"
        return EncoderChoice(
            vit, tuple(vit.patch_embed.img_size), vit.patch_embed.proj.in_channels, key, f"checkpoint {path}"
        )
    cfg = load_preset(args.preset).model
    img = (cfg.img_size, cfg.img_size) if isinstance(cfg.img_size, int) else tuple(cfg.img_size)
    if args.random:
        key = f"random:{args.preset}:{args.seed}"
        return EncoderChoice(random_encoder(cfg, args.seed), img, cfg.in_chans, key, f"random {args.preset}")
    return EncoderChoice(RawPixels(), img, cfg.in_chans, f"pixels:{img}", "raw pixels")


def split_features(args: argparse.Namespace, enc: EncoderChoice):
    """``(train_features, train_labels, test_features, test_labels)`` for the chosen encoder."""
    device = resolve_device(args.device)
    out = []
    for split in ("train", "test"):
        f, y = extract_features(
            enc.module, args.data, split, enc.img_size, enc.in_chans, args.pool, args.batch_size,
            args.workers, device, args.precision, args.cache, enc.cache_key, not args.no_progress,
        )  # fmt: skip
        out += [f, y]
    return tuple(out)
