"""The command line's one vocabulary: a flag means the same thing in every command that has it.

:data:`VOCABULARY` is the table (the documentation prints it, a test holds every parser to it); the
``add_*`` functions below are the only places the shared flags are defined. A flag's default is the
config's value and is printed once, as ``[default: ...]``. Old spellings keep working for one release,
with a one-line warning (:class:`Deprecated`).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..config import PRECISIONS
from ..errors import ConfigError

REMOVED_IN = "0.3"
"""The release in which the deprecated spellings go."""

VOCABULARY: dict[str, str] = {
    "--config": "the config this run starts from: a preset name or a YAML file (a run's config.yaml too)",
    "--set": "any config field, KEY=VALUE, applied after the flags (repeatable)",
    "--data": "the data: fashion-mnist, cluttered-fashion-mnist (each optionally :DIR), or an image folder",
    "--seed": "this run's seed (its data order, augmentations, labelled subset and initialisation)",
    "--init-seed": "the seed that initialises a --random encoder (the pretraining initialisation of that seed)",
    "--model-config": "the shape (and input size) of an encoder built, not loaded (--random; --pixels' input size)",
    "--epochs": "passes over the training images",
    "--batch-size": "images per optimizer step of the model this command trains (all ranks and accumulation)",
    "--lr": "peak learning rate (overrides --blr)",
    "--blr": "base learning rate: the peak lr is blr × batch size / 256",
    "--weight-decay": "AdamW / SGD weight decay",
    "--warmup-epochs": "epochs of linear lr warmup before the cosine decay",
    "--extract-batch-size": "images per batch when extracting frozen features",
    "--device": "auto (a GPU if there is one), cpu, cuda or cuda:N",
    "--precision": "auto: bf16 where the device computes it natively, else fp32 (fp16, where offered, needs CUDA)",
    "--workers": "data-loading worker processes",
    "--out": "where the results go: a folder for a command that writes several files, else the file",
    "--resume": "continue the run in --out (or in the folder, or of the checkpoint, given here)",
    "--force": "start afresh in a non-empty --out, replacing its run files (never an input)",
    "--no-progress": "no progress bar or progress lines",
    "--log-interval": "seconds between progress lines when stderr is not a terminal (a bar otherwise)",
}
"""Every shared flag and its one meaning."""

DEPRECATED: dict[str, str] = {
    "--preset": "--config in pretrain, --model-config in knn/linprobe/finetune/segment/visualize",
    "--recipe": "--config",
    "--probe-batch-size": "--batch-size (linprobe)",
    "--batch-size (knn)": "--extract-batch-size",
    "--seed (knn/linprobe, as the --random encoder's seed)": "--init-seed",
    "--config (bench)": "--model",
    "--format safetensors (export)": "--format timm",
}
"""Old spellings that still work until :data:`REMOVED_IN`, and what replaces each."""


def helped(flag: str, detail: str = "", default: Any = None) -> str:
    """The vocabulary's meaning of ``flag``, this command's ``detail``, and the default printed once."""
    text = VOCABULARY[flag] + (f"; {detail}" if detail else "")
    return text + (f" [default: {default}]" if default is not None else "")


class Deprecated(argparse.Action):
    """An old spelling: stores into the new flag's destination and says, on one line, what replaces it."""

    def __init__(self, option_strings: Sequence[str], dest: str, *, instead: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, help=argparse.SUPPRESS, **kwargs)
        self.instead = instead

    def __call__(
        self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any, option=None
    ):
        print(
            f"semaim: warning: {option} is deprecated and goes in semaim {REMOVED_IN}: use {self.instead}",
            file=sys.stderr,
        )
        setattr(namespace, self.dest, values)


def seconds(text: str) -> float:
    """An argparse type: a number of seconds >= 0."""
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"expected seconds >= 0, got {text!r}")
    return value


def add_config(g: argparse._ActionsContainer, names: Sequence[str], default: str, old: str | None) -> None:
    """``--config`` (``old``: the spelling it replaces in this command)."""
    g.add_argument("--config", help=helped("--config", f"one of {list(names)}", default))
    if old:
        g.add_argument(old, dest="config", action=Deprecated, instead="--config")


def add_set(g: argparse._ActionsContainer, example: str) -> None:
    g.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help=helped("--set", f"e.g. {example}")
    )


def add_data(g: argparse._ActionsContainer, detail: str = "", default: str | None = None) -> None:
    g.add_argument("--data", help=helped("--data", detail, default))


def add_seed(g: argparse._ActionsContainer, detail: str = "", default: int | None = None) -> None:
    g.add_argument("--seed", type=int, help=helped("--seed", detail, default))


def add_training(g: argparse._ActionsContainer, section: Any, flags: Sequence[str]) -> None:
    """The training flags this command's config has (``section``: its defaults)."""
    kinds = {"--epochs": int, "--batch-size": int, "--lr": float, "--blr": float}
    kinds |= {"--weight-decay": float, "--warmup-epochs": float}
    for flag in flags:
        field = flag[2:].replace("-", "_")
        g.add_argument(flag, type=kinds[flag], help=helped(flag, default=getattr(section, field)))


def add_hardware(g: argparse._ActionsContainer, section: Any, precisions: Sequence[str] = PRECISIONS) -> None:
    """``--device``, ``--precision`` and ``--workers`` with this command's defaults."""
    g.add_argument("--device", help=helped("--device", default=section.device))
    g.add_argument(
        "--precision", choices=tuple(precisions), help=helped("--precision", default=section.precision)
    )
    g.add_argument("--workers", type=int, help=helped("--workers", default=section.workers))


def add_progress(g: argparse._ActionsContainer) -> None:
    g.add_argument("--no-progress", action="store_true", help=helped("--no-progress"))
    g.add_argument(
        "--log-interval", type=seconds, metavar="SECONDS", help=helped("--log-interval", default=60)
    )


def add_run_folder(g: argparse._ActionsContainer, command: str) -> None:
    """``--out`` (a run folder), ``--resume [PATH]``, ``--force`` and the progress flags of a training run."""
    g.add_argument("--out", metavar="DIR", help=helped("--out", "the run folder", f"runs/{command}"))
    g.add_argument("--resume", nargs="?", const=True, default=False, metavar="PATH", help=helped("--resume"))
    g.add_argument("--force", action="store_true", help=helped("--force"))
    add_progress(g)


def run_folder(args: argparse.Namespace, command: str) -> tuple[Path, bool]:
    """``(run folder, resume)`` from ``--out`` and ``--resume [PATH]``: PATH is a run folder or a checkpoint
    in one; given both, they must name the same folder."""
    out = Path(args.out) if args.out else None
    if isinstance(args.resume, str):
        path = Path(args.resume)
        folder = path.parent if path.suffix == ".pt" else path
        if out is not None and out.resolve() != folder.resolve():
            raise ConfigError(f"--resume {args.resume}: its run folder is {folder}, but --out is {out}")
        return folder, True
    if args.resume and args.force:
        raise ConfigError("--force with --resume: --force starts afresh, --resume continues; give one")
    return out or Path(f"runs/{command}"), bool(args.resume)


def flag_values(args: argparse.Namespace, flags: dict[str, str | tuple[str, ...]]) -> dict[str, object]:
    """``{config key: value}`` of the flags (``None``: not given); a flag may set several keys."""
    values = {}
    for flag, keys in flags.items():
        for key in (keys,) if isinstance(keys, str) else keys:
            values[key] = getattr(args, flag, None)
    return values


def starting_config(args: argparse.Namespace, folder: Path, resume: bool, default: str) -> str:
    """``--config``, or when resuming without one, the run folder's own ``config.yaml``."""
    saved = folder / "config.yaml"
    if args.config is None and resume and saved.is_file():
        return str(saved)
    return args.config or default


def add_output_file(g: argparse._ActionsContainer, what: str, default: str | None = None) -> None:
    """``--out FILE`` and ``--force`` of a command that writes one file."""
    g.add_argument("--out", metavar="FILE", default=default, help=helped("--out", what, default))
    g.add_argument(
        "--force", action="store_true", help=helped("--force", "here: replace an existing --out file")
    )


def check_output_file(
    out: str | None, *, inputs: Sequence[str | Path | None], force: bool, suffixes: Sequence[str] = ()
) -> None:
    """Before any work: ``--out FILE`` is no input and no file already in an input folder (a new file there is
    fine), ends in a suffix the command writes, and is no existing file unless ``--force``; its folder can be
    written."""
    if not out:
        return
    path = Path(out).resolve()
    for given in inputs:
        if given is None or not Path(given).exists():
            continue
        source = Path(given).resolve()
        if path == source or source.is_dir() and source in path.parents and path.exists():
            raise ConfigError(
                f"--out {out}: that is an input of this command ({given}); write somewhere else"
            )
    if suffixes and path.suffix.lower() not in suffixes:
        raise ConfigError(f"--out {out}: this command writes a {' or '.join(suffixes)} file")
    if path.is_dir() or path.exists() and not force:
        raise ConfigError(f"--out {out}: exists; give another file, or --force to replace it")
    check_writable(out)


def check_writable(path: str | Path) -> None:
    """Fail before hours of work, not after, when ``path`` cannot be written."""
    probe = Path(path).parent
    while not probe.exists():
        probe = probe.parent
    try:  # really write: os.access says yes to root even where nothing can be created (/proc)
        tempfile.TemporaryFile(dir=probe).close()
    except OSError as err:
        raise ConfigError(f"--out: cannot write {path} ({probe} is not a writable folder)") from err
