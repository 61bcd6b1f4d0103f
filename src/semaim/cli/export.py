"""``semaim export``: the encoder alone, for timm, detectron2's ViTDet and mmsegmentation."""

from __future__ import annotations

import argparse

from .evaluate import check_writable
from .vocabulary import helped


def add_parser(sub: argparse._SubParsersAction) -> None:
    from ..export import EXPORT_FORMATS

    p = sub.add_parser("export", help="the encoder alone: timm's safetensors + json, or an MAE-format .pth")
    p.add_argument("--checkpoint", required=True, help="a pretraining or fine-tuning checkpoint")
    p.add_argument(
        "--format",
        default="safetensors",
        choices=EXPORT_FORMATS,
        help="safetensors (timm's keys, with a .json of the shape) or mae (a {'model': state_dict} .pth, the "
        "file detectron2's ViTDet and mmsegmentation's MAE configs load) [default: safetensors]",
    )
    p.add_argument(
        "--out",
        metavar="FILE",
        help=helped(
            "--out", "the weights file; its .json goes beside it", "encoder.safetensors, or encoder.pth"
        ),
    )


def run(args: argparse.Namespace) -> int:
    from ..export import export_encoder, export_path

    out = export_path(args.out, args.format)  # an unknown --format stops here, before anything is written
    check_writable(str(out))
    weights, meta = export_encoder(args.checkpoint, out, args.format)
    print(f"wrote {weights} and {meta}")
    return 0
