"""Weight files: reading a state dict from the forms people save them in, and loading it strictly with
an error that names the file and the keys that do not fit (the teacher and the exported encoder share it).

timm's own loader is not used for this on purpose: without a head it loads non-strictly and resamples a
mis-shaped ``pos_embed`` silently, where a wrong file must be an error.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from .errors import CheckpointError, MissingFileError

_WRAPPER_KEYS = ("model", "state_dict", "teacher", "module", "model_ema", "encoder")
_PREFIXES = ("module.", "backbone.", "encoder.", "model.")


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a ``.safetensors`` file, or a :class:`CheckpointError` naming it."""
    try:
        return load_file(str(path))
    except SafetensorError as err:  # truncated, or not safetensors at all
        raise CheckpointError(f"{path}: cannot read, truncated or corrupt ({err})") from err


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict from ``.safetensors`` or a torch file, unwrapping the usual container keys.

    Handles ``{"model": ...}``, ``{"state_dict": ...}``, DINO's ``{"teacher": ...}`` and key prefixes
    such as ``module.`` (DDP) and ``backbone.`` (DINO), which trip up many reproductions.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        state = read_safetensors(path)
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # a corrupt or foreign file: say which one
            raise CheckpointError(f"checkpoint {path}: cannot be read as a torch state dict ({err})") from err
    for _ in range(3):  # nested wrappers, e.g. {"model": {"state_dict": ...}}
        if not isinstance(state, dict):
            break
        inner = next((state[k] for k in _WRAPPER_KEYS if isinstance(state.get(k), dict)), None)
        if inner is None:
            break
        state = inner
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(
            f"checkpoint {path}: expected a dict of tensors (a state dict), got {type(state)}"
        )
    for prefix in _PREFIXES:
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    return state


def load_strict(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """``model.load_state_dict(state, strict=True)``, or a :class:`CheckpointError` that starts with
    ``source`` and lists the missing, unexpected and mis-shaped keys (``key: file SHAPE, model SHAPE``)."""
    expected = model.state_dict()
    problems = [f"missing {k}" for k in expected if k not in state]
    problems += [f"unexpected {k}" for k in state if k not in expected]
    problems += [
        f"{k}: file {tuple(state[k].shape)}, model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    if problems:
        more = f" and {len(problems) - 5} more" if len(problems) > 5 else ""
        raise CheckpointError(f"{source} does not fit: {'; '.join(problems[:5])}{more}")
    model.load_state_dict(state, strict=True)
