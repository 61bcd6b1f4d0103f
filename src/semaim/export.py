"""The encoder alone, as a timm ``VisionTransformer``: export to safetensors, load back, or build at random.

``semaim export`` writes ``encoder.safetensors`` (timm's key names) and ``encoder.json`` beside it
(``{"model_args": {...}}``); the same weights load with plain timm::

    import json, timm, safetensors.torch as st
    args = json.load(open("encoder.json"))["model_args"]
    vit = timm.models.vision_transformer.VisionTransformer(**args, num_classes=0)
    vit.load_state_dict(st.load_file("encoder.safetensors"))
"""

from __future__ import annotations

import json
import reprlib
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from timm.models.vision_transformer import VisionTransformer

from .config import ModelConfig, PretrainConfig
from .engine.checkpoint import KIND_PRETRAIN, load_checkpoint
from .errors import CheckpointError, ConfigError, MissingFileError
from .model.semaim import ENCODER_KEYS, SemAIM
from .weights import load_strict, read_safetensors

KIND_FINETUNE = "semaim-finetune"


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


def encoder_from_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """``(state_dict, model_args)`` of the encoder in a pretraining checkpoint or an exported file."""
    path = Path(path)
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


def export_encoder(checkpoint: str | Path, out: str | Path) -> tuple[Path, Path]:
    """Write ``out`` (safetensors, timm keys) and ``out`` with ``.json`` (``{"model_args": ...}``)."""
    out = Path(out)
    if out.suffix != ".safetensors":
        raise ConfigError(f"--out: expected a .safetensors file name, got {out}")
    state, args = encoder_from_checkpoint(checkpoint)
    load_strict(build_vit(args), state, f"encoder {checkpoint}")  # refuse to write something timm cannot load
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(out), metadata={"format": "pt"})
    meta = out.with_suffix(".json")
    meta.write_text(json.dumps({"model_args": args, "source": str(checkpoint)}, indent=2) + "\n")
    return out, meta
