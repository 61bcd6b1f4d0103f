"""Checkpoints: one dict that is enough to resume a run or to rebuild the model, written atomically."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from ..config import ModelConfig, PretrainConfig
from ..errors import CheckpointError, MissingFileError, RunDirError
from .run import write_error

KIND_PRETRAIN = "semaim-pretrain"


def save_atomic(obj: Any, path: str | Path) -> None:
    """``torch.save`` to a temporary file in the same folder, fsync, then rename over ``path``.

    A kill (or a full disk) at any moment leaves either the old file or the new one, never a truncated
    file; a full disk is a :class:`RunDirError` that says so.
    """
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as err:
        raise _write_error(path, err) from err
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(err, OSError) or isinstance(err.__cause__, OSError):
            raise _write_error(path, err if isinstance(err, OSError) else err.__cause__) from err
        raise


def _write_error(path: Path, err: OSError) -> RunDirError:
    kept = f"; the previous {path.name} is intact" if path.exists() else ""
    return RunDirError(f"{write_error(path, err)}{kept}. Free some space and resume with --resume")


def load_checkpoint(path: str | Path, kind: str | None = KIND_PRETRAIN) -> dict[str, Any]:
    """Load a semaim checkpoint on the CPU; a missing file or another kind of file is a clear error."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:
        raise CheckpointError(f"checkpoint {path}: cannot be read ({type(err).__name__}: {err})") from err
    if not isinstance(ckpt, dict) or "kind" not in ckpt:
        raise CheckpointError(f"checkpoint {path}: not a semaim checkpoint (no 'kind' entry)")
    if kind is not None and ckpt["kind"] != kind:
        raise CheckpointError(f"checkpoint {path}: expected a {kind!r} checkpoint, got {ckpt['kind']!r}")
    return ckpt


def checkpoint_config(ckpt: dict[str, Any]) -> PretrainConfig:
    return PretrainConfig.from_dict(ckpt["config"])


def model_config_diff(a: ModelConfig, b: ModelConfig) -> dict[str, tuple[Any, Any]]:
    """Fields where two model configs differ: ``{name: (a, b)}``."""
    da, db = a.to_dict(), b.to_dict()
    return {k: (da[k], db[k]) for k in da if da[k] != db[k]}
