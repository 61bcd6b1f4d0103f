"""``semaim <command>``: the command line. ``python -m semaim`` is the same program.

Commands: ``pretrain`` (Algorithm 1). Configuration comes from a preset (``configs/*.yaml``), then the
flags, then ``--set section.field=value`` overrides, all checked against the typed config.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import yaml

from .config import PretrainConfig
from .presets import load_preset, parse_assignment, preset_names, set_field

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
        description="Pretrain a SemAIM model. Settings: preset, then flags, then --set overrides.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
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
        "--batch-size", type=int, help="effective batch per optimiser step (all ranks × accumulation)"
    )
    g.add_argument("--accum-steps", type=int, help="gradient accumulation steps")
    g.add_argument("--seed", type=int)
    g.add_argument("--device", help="auto, cpu, cuda, cuda:N")
    g.add_argument("--precision", choices=["fp32", "bf16", "fp16"])
    g = p.add_argument_group("method")
    g.add_argument("--order", help="raster, stochastic, similarity, semantic, center, multi-center")
    g.add_argument("--target", help="pixels or features")
    g.add_argument("--teacher", help="teacher checkpoint file (target=features)")
    g.add_argument("--teacher-arch", help="teacher timm architecture, e.g. vit_base_patch16_224")
    g = p.add_argument_group("run folder")
    g.add_argument("--out", default="runs/pretrain", help="run folder")
    g.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint-last.pt")
    g.add_argument("--force", action="store_true", help="start a new run in a non-empty OUT")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")


def pretrain_config(args: argparse.Namespace) -> PretrainConfig:
    """Preset (or, when resuming without --preset, the run's own config), then flags, then --set."""
    saved = Path(args.out) / "config.yaml"
    if args.resume and args.preset is None and saved.is_file():
        cfg = PretrainConfig.from_dict(yaml.safe_load(saved.read_text()))
    else:
        cfg = load_preset(args.preset or "cpu-tiny")
    for flag, key in PRETRAIN_FLAGS.items():
        value = getattr(args, flag)
        if value is not None:
            set_field(cfg, key, value)
    for assignment in args.set:
        set_field(cfg, *parse_assignment(assignment))
    return cfg.validate()


def run_pretrain(args: argparse.Namespace) -> int:
    from .train import pretrain

    cfg = pretrain_config(args)
    pretrain(cfg, args.out, resume=args.resume, force=args.force, progress=not args.no_progress)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="semaim", description="SemAIM: semantic-aware autoregressive image modeling"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    add_pretrain_parser(sub)
    return parser


COMMANDS = {"pretrain": run_pretrain}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .train import NonFiniteLossError

    try:
        return COMMANDS[args.command](args)
    except NonFiniteLossError as err:
        print(f"semaim {args.command}: stopped: {err}", file=sys.stderr)
        return 1
    except (ValueError, FileNotFoundError) as err:
        print(f"semaim {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"semaim {args.command}: interrupted; resume with --resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
