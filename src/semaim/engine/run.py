"""What every command that writes a run folder shares: the folder checks, precision, RNG state, timing.

Pretraining, fine-tuning and the evaluation commands all use these; none of them imports another
command's loop.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import math
import os
import random
import shutil
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import yaml

from ..errors import ConfigError, NonFiniteLossError, RunDirError, SlowPrecisionWarning

LAST = "checkpoint-last.pt"
"""The checkpoint a run writes as it goes and ``--resume`` continues from."""
LOCK = ".semaim.lock"
"""Locked (a POSIX ``lockf`` lock) by the process that writes a run folder, for the run's whole life.

``lockf`` rather than ``flock``: a POSIX lock belongs to the process, so the data loader's forked
workers do not inherit it and a killed run's folder is free at once, not when its orphaned workers
notice (up to seconds later)."""
RUN_FILES = (
    "config.yaml",
    "metrics.jsonl",
    "eval.jsonl",
    "result.json",
    "checkpoint-*.pt",
    ".checkpoint-*.tmp",
    ".*.tmp",
    "tb",
)
"""What a run writes into its folder: ``--force`` removes exactly these, nothing a user put there."""


def check_out_dir(out: Path, resume: bool, force: bool) -> None:
    """Refuse to overwrite a run by accident; refuse to resume a run that is not there."""
    if resume:
        if not (out / LAST).is_file():
            raise RunDirError(f"--resume: no checkpoint to resume in {out} (expected {out / LAST})")
        return
    if out.exists() and not out.is_dir():
        raise RunDirError(f"--out: {out} exists and is not a folder")
    if out.is_dir() and any(p.name != LOCK for p in out.iterdir()) and not force:
        raise RunDirError(
            f"--out: {out} is not empty; pass --resume to continue the run there, "
            "--force to start a new run over it, or choose another folder"
        )


class RunFolder:
    """A run folder, checked and locked: ``with RunFolder(out, resume, force) as folder: ...``.

    Entering takes an exclusive lock file in the folder (creating the folder if needed) *before* the
    checks, so two processes started into the same folder cannot both pass them: the second stops with
    an error naming the first. :meth:`start` writes the config, after every other check of the run has
    passed; only then does ``force`` remove the old run's files (never one the run reads). Leaving
    releases the lock and removes the folders this run created but never started, so a run that fails
    its checks leaves nothing behind. Under torchrun only rank 0 locks (``lock=False`` elsewhere); every
    rank runs the checks.
    """

    _held: ClassVar[set[Path]] = set()  # folders this process holds (POSIX locks do not exclude it)

    def __init__(self, path: Path, resume: bool = False, force: bool = False, lock: bool = True) -> None:
        self.path, self.resume, self.force, self.lock = Path(path), resume, force, lock
        self._fd: int | None = None
        self._created: list[Path] = []  # the folders mkdir made, deepest first

    def __enter__(self) -> RunFolder:
        if self.path.exists() and not self.path.is_dir():
            raise RunDirError(f"--out: {self.path} exists and is not a folder")
        try:
            if self.lock:
                self._acquire()
            check_out_dir(self.path, self.resume, self.force)
        except BaseException:
            self.__exit__()
            raise
        return self

    def _acquire(self) -> None:
        key = self.path.resolve()
        if key in RunFolder._held:
            raise RunDirError(
                f"--out: {self.path} is in use by this process (another run into it has not ended)"
            )
        self._created = [p for p in (self.path, *self.path.parents) if not p.exists()]
        while True:
            try:
                self.path.mkdir(parents=True, exist_ok=True)
                fd = os.open(self.path / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as err:
                raise RunDirError(f"--out: cannot write to {self.path} ({err.strerror})") from err
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:  # EACCES or EAGAIN: another process holds it
                holder = os.read(fd, 200).decode(errors="replace").strip() or "another process"
                os.close(fd)
                raise RunDirError(
                    f"--out: {self.path} is in use by {holder}; wait for it to finish or choose another folder"
                ) from None
            with contextlib.suppress(FileNotFoundError):
                if os.stat(self.path / LOCK).st_ino == os.fstat(fd).st_ino:
                    break  # not a lock file that its previous holder unlinked meanwhile
            os.close(fd)
        self._fd = fd
        RunFolder._held.add(key)
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"process {os.getpid()} on {os.uname().nodename}".encode())
        except OSError as err:
            raise write_error(self.path / LOCK, err) from err

    def start(
        self, config: dict[str, Any], inputs: Iterable[str | None] = (), name: str = "config.yaml"
    ) -> None:
        """Clear the old run's files (``force``, not resuming), drop stale temporaries, write the config.

        ``inputs`` are files the run reads (a checkpoint to fine-tune, a teacher): ``force`` refuses to
        remove one of them rather than destroy the run's own input.
        """
        if self.force and not self.resume:
            old = [p for pattern in RUN_FILES for p in self.path.glob(pattern)]
            reads = {Path(i).resolve() for i in inputs if i}
            clash = [p for p in old if p.resolve() in reads]
            if clash:
                raise RunDirError(
                    f"--force: {clash[0]} is an input of this run and --force would delete it; choose another --out"
                )
            for path in old:
                shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
        for stale in self.path.glob(".*.tmp"):  # a save that a kill interrupted
            stale.unlink()
        (self.path / "result.json").unlink(
            missing_ok=True
        )  # a resumed run is unfinished until it writes it again
        write_text_atomic(self.path / name, yaml.safe_dump(config, sort_keys=False))
        self._created = []

    def __exit__(self, *exc: object) -> None:
        if self._fd is None:
            return
        left = [p for p in self.path.iterdir() if p.name != LOCK] if self.path.is_dir() else []
        (self.path / LOCK).unlink(missing_ok=True)  # before the release: a waiting process sees a fresh file
        os.close(self._fd)
        self._fd = None
        RunFolder._held.discard(self.path.resolve())
        if not left:
            for folder in self._created:  # deepest first; stops at the first that is not empty
                try:
                    folder.rmdir()
                except OSError:
                    break


def write_error(path: Path, err: OSError) -> RunDirError:
    """The :class:`RunDirError` for a failed write: "disk full" said plainly."""
    reason = "disk full" if err.errno == errno.ENOSPC else (err.strerror or str(err))
    return RunDirError(f"{reason} while writing {path}")


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path``, then rename it over: never a truncated file."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(text)
        tmp.replace(path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise write_error(path, err) from err


def append_record(path: Path, record: dict[str, Any]) -> None:
    """Append one JSON line to ``path``; a full disk is a :class:`RunDirError`."""
    try:
        with open(path, "a") as f:
            f.write(json.dumps(record) + "\n")
    except OSError as err:
        raise write_error(path, err) from err


def check_finite(loss: float, step: int, last_checkpoint: Path, *, first: int | None = None) -> None:
    """Stop a run whose loss is NaN or infinite, before the bad step is saved. ``first``: the loss is the mean
    of steps ``first..step`` (1-based), read together, and one of them went bad."""
    if not math.isfinite(loss):
        where = f"step {step}" if first is None or first == step else f"one of steps {first}-{step}"
        raise NonFiniteLossError(
            f"loss is {loss} at {where}; stopped without saving. The last good checkpoint is "
            f"{last_checkpoint} (if any). Try --precision bf16 or fp32, a lower learning rate, or "
            "gradient clipping (train.clip_grad)."
        )


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` runs bf16 matmuls natively: a CUDA GPU that supports bf16, or a CPU with
    AVX512-BF16 / AMX (oneDNN's bf16 kernels). Elsewhere bf16 is emulated and far slower than fp32
    (measured on an AVX2-only CPU: 0.3 GFLOP/s against 63 GFLOP/s in fp32)."""
    if device.type == "cuda":  # Ampere and later; is_bf16_supported() also says yes where it is emulated
        return torch.cuda.get_device_capability(device) >= (8, 0)
    return device.type == "cpu" and (
        torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    )


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` -> ``bf16`` where the device computes it natively (:func:`native_bf16`), else ``fp32``.

    ``fp16`` needs a CUDA device (it trains with a gradient scaler there); elsewhere it is a
    :class:`ConfigError`, as every command that takes ``--precision fp16`` reports it. ``bf16`` where the
    device only emulates it runs, with a :class:`SlowPrecisionWarning`."""
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError(f"precision: fp16 needs a CUDA device, not {device}; use bf16 (or fp32) on the CPU")
    if precision == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    if precision == "bf16" and not native_bf16(device):
        warnings.warn(
            f"bf16 on this {device.type} is emulated (no AVX512-BF16 or AMX): expect it to run hundreds of times "
            "slower than fp32 (0.3 against 63 GFLOP/s in matmuls on an AVX2 CPU); use --precision fp32 or auto",
            SlowPrecisionWarning,
            stacklevel=2,
        )
    return precision


def autocast_context(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bf16 / fp16 autocast on ``device``, or nothing for fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


def rng_states() -> dict[str, Any]:
    """Every random generator a run draws from (torch, numpy, python, CUDA), for an exact resume."""
    states = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    np.random.set_state(states["numpy"])
    random.setstate(states["python"])
    if "cuda" in states and torch.cuda.is_available():
        # A run saved with more (or fewer) visible GPUs than it resumes on: each GPU here takes its own
        # saved stream; a GPU the run did not have keeps its fresh one.
        for index, state in enumerate(states["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(state, index)


def format_seconds(seconds: float) -> str:
    """``4321 -> "1h12m01s"``; ``75 -> "1m15s"``."""
    seconds = int(seconds)
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"
