"""The encoder as a timm ``VisionTransformer``: built at random exactly as pretraining starts it, or
loaded from any file semaim writes (a pretraining or fine-tuning checkpoint, an exported encoder).

Pretraining, evaluation and export all build their encoders here; nothing here imports them.
"""

from __future__ import annotations

import json
import reprlib
from pathlib import Path
from typing import Any

import torch
from timm.models.vision_transformer import VisionTransformer

from .config import ModelConfig, PretrainConfig
from .engine.checkpoint import KIND_PRETRAIN, load_checkpoint
from .errors import CheckpointError, MissingFileError
from .model.semaim import ENCODER_KEYS, SemAIM
from .weights import load_strict, read_safetensors

KIND_FINETUNE = "semaim-finetune"
MAE_ENDINGS = (".pth", ".pt")
"""File endings of an encoder in MAE's layout (``{"model": state_dict}``, written by ``export --format mae``)."""


def model_args(cfg: ModelConfig) -> dict[str, Any]:
    """``VisionTransformer`` keyword arguments of the encoder described by ``cfg`` (JSON-friendly)."""
    img = cfg.img_size if isinstance(cfg.img_size, int) else list(cfg.img_size)
    return {
        "img_size": img,
        "patch_size": cfg.patch_size,
        "in_chans": cfg.in_chans,
        "embed_dim": cfg.embed_dim,
        "depth": cfg.depth,
        "num_heads": cfg.num_heads,
        "mlp_ratio": cfg.mlp_ratio,
    }


def build_vit(args: dict[str, Any], **overrides: Any) -> VisionTransformer:
    """The encoder of ``model_args`` as a timm ``VisionTransformer`` with no classifier (``overrides`` win)."""
    kwargs = {**args, "num_classes": 0, **overrides}
    if isinstance(kwargs["img_size"], list):
        kwargs["img_size"] = tuple(kwargs["img_size"])
    return VisionTransformer(**kwargs)


def read_model_args(meta: Path) -> dict[str, Any]:
    """The ``model_args`` of an exported encoder's ``.json``, or a :class:`CheckpointError` naming it."""
    try:
        described = json.loads(meta.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"encoder description {meta}: not valid JSON ({err})") from err
    args = described.get("model_args") if isinstance(described, dict) else None
    if not isinstance(args, dict):
        raise CheckpointError(
            f'encoder description {meta}: expected {{"model_args": {{...}}}}, got {reprlib.repr(described)}'
        )
    return args


def _mae_export(path: Path) -> dict[str, torch.Tensor] | None:
    """The tensors of a ``--format mae`` export (``{"model": ...}`` in a ``.pth`` beside its ``.json``)."""
    exported = path.suffix in MAE_ENDINGS and path.with_suffix(".json").is_file()
    if not (exported and path.is_file()):
        return None
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # not a plain tensor file: a semaim checkpoint or something else, read below
        return None
    ok = isinstance(raw, dict) and set(raw) == {"model"} and isinstance(raw["model"], dict)
    return raw["model"] if ok and all(isinstance(v, torch.Tensor) for v in raw["model"].values()) else None


def encoder_from_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """``(state_dict, model_args)`` of the encoder in a pretraining or fine-tuning checkpoint or an exported
    file (``.safetensors``, or a ``--format mae`` ``.pth``, each with its ``.json``)."""
    path = Path(path)
    mae = _mae_export(path)
    if mae is not None:
        return mae, read_model_args(path.with_suffix(".json"))
    if path.suffix == ".safetensors":
        meta = path.with_suffix(".json")
        if not path.is_file():
            raise MissingFileError(f"encoder file not found: {path}")
        if not meta.is_file():
            raise MissingFileError(f"encoder file {path}: its description {meta} is missing")
        return read_safetensors(path), read_model_args(meta)
    ckpt = load_checkpoint(path, kind=None)
    if ckpt["kind"] == KIND_PRETRAIN:
        cfg = PretrainConfig.from_dict(ckpt["config"]).model
        state = {k: v for k, v in ckpt["model"].items() if k.split(".")[0] in ENCODER_KEYS}
        return state, model_args(cfg)
    if ckpt["kind"] == KIND_FINETUNE:
        state = {k: v for k, v in ckpt["model"].items() if not k.startswith("head.")}
        return state, ckpt["model_args"]
    raise CheckpointError(
        f"checkpoint {path}: expected a semaim pretraining or fine-tuning checkpoint, got {ckpt['kind']!r}"
    )


def load_encoder(path: str | Path, **overrides: Any) -> VisionTransformer:
    """A timm ``VisionTransformer`` (no classifier) with the encoder weights of ``path``.

    ``path`` is an exported ``.safetensors`` (with its ``.json``), a pretraining checkpoint or a
    fine-tuning checkpoint. ``overrides`` go to the constructor (e.g. ``drop_path_rate=0.1``).
    """
    state, args = encoder_from_checkpoint(path)
    vit = build_vit(args, **overrides)
    load_strict(vit, state, f"encoder {path}")
    return vit


def random_encoder(cfg: ModelConfig, seed: int = 0) -> VisionTransformer:
    """The encoder exactly as pretraining starts it (SemAIM's initialisation, fixed sin-cos positions)."""
    torch.manual_seed(seed)
    init = SemAIM(ModelConfig.from_dict({**cfg.to_dict(), "target": "pixels"}))
    vit = build_vit(model_args(cfg))
    vit.load_state_dict(init.encoder_state_dict(), strict=True)
    return vit
