"""``semaim export``: the encoder alone, a folder for timm, detectron2's ViTDet and mmsegmentation."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .vocabulary import REMOVED_IN, check_writable, helped


def add_parser(sub: argparse._SubParsersAction) -> None:
    from ..export import DEFAULT_OUT, EXPORT_FORMATS, FORMAT_ALIASES

    p = sub.add_parser(
        "export",
        help="the encoder alone: a folder timm loads (safetensors, or MAE's .pth) with its config.json",
    )
    p.add_argument(
        "--checkpoint", required=True, help="a pretraining or fine-tuning checkpoint, or an export"
    )
    p.add_argument(
        "--format",
        default="timm",
        choices=(*EXPORT_FORMATS, *FORMAT_ALIASES),
        metavar="{" + ",".join(EXPORT_FORMATS) + "}",
        help="timm (model.safetensors: timm.create_model('local-dir:DIR', pretrained=True) loads the folder) or "
        "mae (model.pth, {'model': state_dict}: the file detectron2's ViTDet and mmsegmentation's MAE configs "
        "load) [default: timm]",
    )
    p.add_argument(
        "--out",
        metavar="DIR",
        help=helped("--out", "the folder: model.safetensors or model.pth, and config.json", DEFAULT_OUT),
    )
    p.add_argument(
        "--force",
        action="store_true",
        help=helped(
            "--force", "here the weights file and config.json, each replaced whole; other files stay"
        ),
    )


def run(args: argparse.Namespace) -> int:
    from ..export import CONFIG_FILE, DEFAULT_OUT, FORMAT_ALIASES, export_encoder

    fmt = args.format
    if fmt in FORMAT_ALIASES:
        print(
            f"semaim: warning: --format {fmt} is deprecated and goes in semaim {REMOVED_IN}: "
            f"use --format {FORMAT_ALIASES[fmt]}",
            file=sys.stderr,
        )
        fmt = FORMAT_ALIASES[fmt]
    out = Path(args.out or DEFAULT_OUT)
    if out.is_dir() or not out.exists():  # anything else is export's to name
        check_writable(str(out / CONFIG_FILE))
    weights, config = export_encoder(args.checkpoint, out, fmt, force=args.force)
    print(f"wrote {weights} and {config}")
    return 0
