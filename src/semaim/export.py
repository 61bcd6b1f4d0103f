"""The encoder alone, as a timm ``VisionTransformer``: export to safetensors, load back, or build at random.

``semaim export`` writes ``encoder.safetensors`` (timm's key names) and ``encoder.json`` beside it
(``{"model_args": {...}}``); the same weights load with plain timm::

    import json, timm, safetensors.torch as st
    args = json.load(open("encoder.json"))["model_args"]
    vit = timm.models.vision_transformer.VisionTransformer(**args, num_classes=0)
    vit.load_state_dict(st.load_file("encoder.safetensors"))

``semaim export --format mae`` writes the same tensors as ``{"model": state_dict}`` in a torch ``.pth``:
the layout of MAE's released ``mae_pretrain_vit_base.pth``, which detectron2's ViTDet configs
(``train.init_checkpoint``) and mmsegmentation's MAE configs (after its ``beit2mmseg.py`` key converter)
load. No renaming is needed: MAE's encoder *is* timm's ``VisionTransformer`` (``cls_token``, ``pos_embed``
of shape ``(1, 1 + h·w, D)`` with a zero cls row, ``patch_embed.proj``, ``blocks.N.{norm1, attn.qkv,
attn.proj, norm2, mlp.fc1, mlp.fc2}``, ``norm``), and so is semaim's (the same fixed 2-D sin-cos table).
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
from .engine.checkpoint import KIND_PRETRAIN, load_checkpoint, save_atomic
from .errors import CheckpointError, ConfigError, MissingFileError
from .model.semaim import ENCODER_KEYS, SemAIM
from .weights import load_strict, read_safetensors

KIND_FINETUNE = "semaim-finetune"
EXPORT_FORMATS = {"safetensors": (".safetensors",), "mae": (".pth", ".pt")}
"""``--format`` -> the file name endings it writes (the first is the default ``encoder`` file's)."""


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


def _mae_export(path: Path) -> dict[str, torch.Tensor] | None:
    """The tensors of a ``--format mae`` export (``{"model": ...}`` in a ``.pth`` beside its ``.json``)."""
    exported = path.suffix in EXPORT_FORMATS["mae"] and path.with_suffix(".json").is_file()
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


def export_path(out: str | Path | None, fmt: str) -> Path:
    """``--out`` checked against ``--format`` (``encoder.safetensors`` / ``encoder.pth`` when not given);
    an unknown format or a mismatched ending is a :class:`ConfigError` that names the flag."""
    if fmt not in EXPORT_FORMATS:
        raise ConfigError(f"--format: expected one of {list(EXPORT_FORMATS)}, got {fmt!r}")
    endings = EXPORT_FORMATS[fmt]
    out = Path(out) if out else Path(f"encoder{endings[0]}")
    if out.suffix not in endings:
        raise ConfigError(f"--out: --format {fmt} writes a {' or '.join(endings)} file, got {out}")
    return out


def export_encoder(
    checkpoint: str | Path, out: str | Path | None = None, fmt: str = "safetensors"
) -> tuple[Path, Path]:
    """Write the encoder of ``checkpoint`` to ``out`` and ``{"model_args": ...}`` to ``out`` with ``.json``.

    ``fmt="safetensors"``: timm's keys in a safetensors file. ``fmt="mae"``: ``{"model": state_dict}`` in a
    torch file, MAE's checkpoint layout (module docstring). Every check (format, name, a checkpoint that
    timm cannot load strictly) comes before the first byte is written, and the weights file is replaced
    atomically, so a failed export leaves an existing file as it was.
    """
    out = export_path(out, fmt)
    state, args = encoder_from_checkpoint(checkpoint)
    load_strict(build_vit(args), state, f"encoder {checkpoint}")  # refuse to write something timm cannot load
    out.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.contiguous() for k, v in state.items()}
    if fmt == "mae":
        save_atomic({"model": tensors}, out)
    else:
        tmp = out.with_name(f".{out.name}.tmp")
        save_file(tensors, str(tmp), metadata={"format": "pt"})
        tmp.replace(out)
    meta = out.with_suffix(".json")
    described = {"model_args": args, "source": str(checkpoint), "format": fmt}
    meta.write_text(json.dumps(described, indent=2) + "\n")
    return out, meta
