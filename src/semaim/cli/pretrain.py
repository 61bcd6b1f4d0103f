"""``semaim pretrain``: Algorithm 1 from a preset, the flags and ``--set``."""

from __future__ import annotations

import argparse

from ..config import TARGETS, PretrainConfig
from ..model.orders import ORDERS
from ..presets import build_config, load_preset, preset_names
from .vocabulary import (
    add_config,
    add_data,
    add_run_folder,
    add_seed,
    add_set,
    add_training,
    flag_values,
    helped,
    run_folder,
    starting_config,
)

FLAGS = {
    "data": "data.data",
    "limit": "data.limit",
    "workers": "data.workers",
    "skip_bad_images": "data.skip_bad_images",
    "epochs": "train.epochs",
    "batch_size": "train.batch_size",
    "accum_steps": "train.accum_steps",
    "lr": "train.lr",
    "blr": "train.blr",
    "weight_decay": "train.weight_decay",
    "warmup_epochs": "train.warmup_epochs",
    "seed": "train.seed",
    "device": "train.device",
    "precision": "train.precision",
    "order": "model.order",
    "target": "model.target",
    "teacher": "model.teacher_path",
    "teacher_arch": "model.teacher_arch",
}
"""Flag -> config field; a flag not given keeps the config's value."""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "pretrain",
        help="pretrain a SemAIM model (Algorithm 1)",
        description="Pretrain a SemAIM model. Settings: --config, then flags, then --set; a flag not given "
        "keeps the config's value (the defaults shown are cpu-tiny's).",
    )
    shown = load_preset("cpu-tiny")  # the defaults a run without --config gets
    t, d = shown.train, shown.data
    g = p.add_argument_group("configuration")
    add_config(g, preset_names(), "cpu-tiny", old="--preset")
    add_set(g, "model.depth=6")
    g = p.add_argument_group("data")
    add_data(g, default=d.data)
    g.add_argument("--limit", type=int, help="only the first N training images")
    g.add_argument("--skip-bad-images", action="store_const", const=True, help="skip unreadable images")
    g = p.add_argument_group("training")
    add_training(g, t, ("--epochs", "--batch-size", "--lr", "--blr", "--weight-decay", "--warmup-epochs"))
    g.add_argument("--accum-steps", type=int, help=f"gradient accumulation steps [default: {t.accum_steps}]")
    add_seed(g, default=t.seed)
    g.add_argument(
        "--device", help=f"auto (a GPU if there is one), cpu, cuda or cuda:N [default: {t.device}]"
    )
    g.add_argument(
        "--precision",
        choices=("auto", "fp32", "bf16", "fp16"),
        help=helped("--precision", default=t.precision),
    )
    g.add_argument("--workers", type=int, help=f"data-loading worker processes [default: {d.workers}]")
    g = p.add_argument_group("method")
    g.add_argument(
        "--order", choices=tuple(ORDERS), help="the autoregression order (Eq. 2-6) [default: semantic]"
    )
    g.add_argument("--target", choices=TARGETS, help="what each patch predicts (Eq. 12) [default: pixels]")
    g.add_argument("--teacher", help="teacher checkpoint file (--target features)")
    g.add_argument("--teacher-arch", help="teacher timm architecture, e.g. vit_base_patch16_224")
    add_run_folder(p.add_argument_group("run folder"), "pretrain")


def config(args: argparse.Namespace) -> PretrainConfig:
    """--config (or, when resuming without it, the run's own config), then the flags, then --set."""
    folder, resume = run_folder(args, "pretrain")
    preset = starting_config(args, folder, resume, "cpu-tiny")
    return build_config(PretrainConfig, preset, flag_values(args, FLAGS), args.set)


def run(args: argparse.Namespace) -> int:
    from ..engine.pretrain import pretrain

    folder, resume = run_folder(args, "pretrain")
    pretrain(config(args), folder, resume=resume, force=args.force, progress=not args.no_progress)
    return 0
