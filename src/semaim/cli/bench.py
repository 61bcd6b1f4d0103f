"""``semaim bench``: the full pretraining step timed, fast path against explicit masks."""

from __future__ import annotations

import argparse

from ..config import PRECISIONS
from .evaluate import write_json
from .vocabulary import Deprecated, add_output_file, check_output_file, helped

DEFAULT_MODELS = ["vit-t16-224", "vit-s16-224", "vit-t4-32"]


def batch_size(text: str) -> int | str:
    """``--batch-size``: a positive int, or ``max``."""
    if text == "max":
        return text
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive int or 'max', got {text!r}")
    return int(text)


def add_parser(sub: argparse._SubParsersAction) -> None:
    from ..bench import CONFIGS

    p = sub.add_parser("bench", help="time the full pretraining step: fast path vs explicit masks")
    p.add_argument(
        "--model",
        nargs="+",
        choices=sorted(CONFIGS),
        help=f"model shapes to time [default: {' '.join(DEFAULT_MODELS)}]",
    )
    p.add_argument("--config", dest="model", nargs="+", action=Deprecated, instead="--model")
    p.add_argument("--device", default="auto", help=helped("--device", default="auto"))
    p.add_argument(
        "--precision", choices=PRECISIONS, default="auto", help=helped("--precision", default="auto")
    )
    p.add_argument(
        "--batch-size",
        type=batch_size,
        metavar="N|max",
        help=helped(
            "--batch-size",
            "here: every timed model's; max: the largest power of two whose fast step fits in device memory",
            "each model's own",
        ),
    )
    p.add_argument(
        "--max-batch", type=int, default=4096, help="upper bound of --batch-size max [default: 4096]"
    )
    p.add_argument("--fast-only", action="store_true", help="time the fast path alone (no explicit masks)")
    p.add_argument(
        "--matmul-size",
        type=int,
        help="side of the matmul that measures the ceiling [default: 2048 on CPU, 8192 on GPU]",
    )
    p.add_argument("--steps", type=int, default=5, help="timed steps per path [default: 5]")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first [default: 2]")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory processes")
    p.add_argument("--sweep", action="store_true", help="step time against tokens and decoder depth instead")
    add_output_file(p, "a JSON file of the rows")


def run(args: argparse.Namespace) -> int:
    from ..bench import run_bench, run_sweep

    check_output_file(args.out, inputs=[], force=args.force, suffixes=(".json",))
    if args.sweep:
        rows = run_sweep(args.device, args.precision, args.steps, args.warmup)
        write_json(args.out, {"sweep": rows})
        return 0
    run_bench(
        args.model or DEFAULT_MODELS,
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
