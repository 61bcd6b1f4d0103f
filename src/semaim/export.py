"""The encoder alone, written for other code bases: timm's safetensors, or MAE's ``.pth`` layout.

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
from pathlib import Path

from safetensors.torch import save_file

from .encoder import MAE_ENDINGS, build_vit, encoder_from_checkpoint
from .engine.checkpoint import save_atomic
from .errors import ConfigError
from .weights import load_strict

EXPORT_FORMATS = {"safetensors": (".safetensors",), "mae": MAE_ENDINGS}
"""``--format`` -> the file name endings it writes (the first is the default ``encoder`` file's)."""


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
