"""``semaim <command>``: one parser per command, sharing one vocabulary of flags (:mod:`.vocabulary`).

Every command builds its run's config the same way: ``--config`` (a preset or YAML file), then the flags
that were given, then ``--set KEY=VALUE``; the config checks every value and names a bad one. A
:class:`~semaim.errors.SemAIMError` (something the user can fix) prints its message and exits 2.
"""

from __future__ import annotations

import argparse
import re
import sys
import warnings
from collections.abc import Sequence

from .. import __version__
from ..errors import NonFiniteLossError, SemAIMError, SemAIMWarning
from . import bench, evaluate, export, figures, pretrain, study

COMMANDS = {
    "pretrain": pretrain.run,
    "knn": evaluate.run_knn,
    "linprobe": evaluate.run_linprobe,
    "finetune": evaluate.run_finetune,
    "segment": evaluate.run_segment,
    "export": export.run,
    "visualize": figures.run_visualize,
    "plot-metrics": figures.run_plot_metrics,
    "bench": bench.run,
    "study": study.run,
}


RESUME_HINTS = {
    **dict.fromkeys(("pretrain", "finetune", "segment"), "; continue with the same command and --resume"),
    "study": "; rerun the same command to continue (finished runs are kept)",
}
"""What an interrupted command says about going on: only the commands that can continue say anything."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="semaim", description="SemAIM: semantic-aware autoregressive image modeling"
    )
    parser.add_argument("--version", action="version", version=f"semaim {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    pretrain.add_parser(sub)
    evaluate.add_parsers(sub)
    export.add_parser(sub)
    figures.add_parsers(sub)
    bench.add_parser(sub)
    study.add_parsers(sub)
    return parser


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
    from ..engine.progress import DEFAULT_INTERVAL_S, set_interval

    given = getattr(args, "log_interval", None)
    set_interval(DEFAULT_INTERVAL_S if given is None else given)  # per command, not left over from another
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
        print(f"semaim {args.command}: interrupted{RESUME_HINTS.get(args.command, '')}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
