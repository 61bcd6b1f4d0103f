"""The encoder as a timm ``VisionTransformer``: built at random exactly as pretraining starts it, or
loaded from any file semaim writes (a pretraining or fine-tuning checkpoint, an exported encoder).

An exported encoder is a folder written by ``semaim export`` (``model.safetensors`` or ``model.pth`` and
``config.json``, timm's ``local-dir:`` layout, :mod:`semaim.export`). The pairs that semaim 0.2 wrote,
``X.safetensors`` or ``X.pth`` with ``X.json`` beside it, still load until 0.3.

Pretraining, evaluation and export all build their encoders here; nothing here imports them.
"""

from __future__ import annotations

import json
import reprlib
import zipfile
from dataclasses import dataclass
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
CONFIG_FILE = "config.json"
"""The description in an export folder: timm's ``config.json`` (``architecture``, ``model_args``, ...)."""
WEIGHTS_FILES = ("model.safetensors", "model.pth")
"""The weights in an export folder: timm's safetensors, or MAE's ``{"model": state_dict}`` layout."""


@dataclass(frozen=True)
class StoredEncoder:
    """An encoder as a file holds it: ``state`` (timm's keys), ``args`` (its ``VisionTransformer`` keyword
    arguments), ``files`` (every file read) and the ``mean`` / ``std`` its images were normalised with
    (``None`` where the file does not say)."""

    state: dict[str, torch.Tensor]
    args: dict[str, Any]
    files: tuple[Path, ...]
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None


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


def _read_json(meta: Path) -> Any:
    try:
        return json.loads(meta.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"encoder description {meta}: not valid JSON ({err})") from err
    except OSError as err:
        raise CheckpointError(f"encoder description {meta}: cannot be read ({err})") from err


def _model_args_of(described: Any, meta: Path) -> dict[str, Any]:
    args = described.get("model_args") if isinstance(described, dict) else None
    if not isinstance(args, dict) or "img_size" not in args:
        raise CheckpointError(
            f'encoder description {meta}: expected {{"model_args": {{...}}}}, got {reprlib.repr(described)}'
        )
    return args


def read_model_args(meta: Path) -> dict[str, Any]:
    """The ``model_args`` of an exported encoder's ``config.json`` (or 0.2's ``.json``), or a
    :class:`CheckpointError` naming it."""
    return _model_args_of(_read_json(meta), meta)


def _load_mae_layout(path: Path, mmap: bool = False) -> dict[str, torch.Tensor] | None:
    """The tensors of ``{"model": state_dict}`` in a torch file (MAE's layout), else ``None``."""
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception:  # not a plain tensor file: a semaim checkpoint or something else, read elsewhere
        return None
    ok = isinstance(raw, dict) and set(raw) == {"model"} and isinstance(raw["model"], dict)
    return raw["model"] if ok and all(isinstance(v, torch.Tensor) for v in raw["model"].values()) else None


def _mae_export(path: Path) -> dict[str, torch.Tensor] | None:
    """The tensors of a ``--format mae`` file (``{"model": ...}`` in a ``.pth``); ``None`` for anything else.
    Looking costs little in torch's zip format (the tensors are memory-mapped, not read), so a checkpoint is
    only opened once more; a file in the legacy format is read whole."""
    if path.suffix not in MAE_ENDINGS or not path.is_file():
        return None
    if zipfile.is_zipfile(path) and _load_mae_layout(path, mmap=True) is None:
        return None
    return _load_mae_layout(path)


def _description_of(weights: Path, layout: str) -> Path:
    """The ``config.json`` of the export folder a weights file is in, or the ``.json`` beside it (0.2's pairs)."""
    folder = weights.parent / CONFIG_FILE
    if weights.name in WEIGHTS_FILES and folder.is_file():
        return folder
    sidecar = weights.with_suffix(".json")
    if sidecar.is_file():
        return sidecar
    where = f"{sidecar}" + (" (not a file)" if sidecar.exists() else "")
    raise MissingFileError(
        f"encoder file {weights} ({layout}) holds the weights but not the model_args that build the encoder, "
        f"and the file that does is missing: {where}, or {CONFIG_FILE} beside it in an export folder; "
        "export the checkpoint again with `semaim export --checkpoint CHECKPOINT --out DIR` (DIR gets the "
        f"weights and their {CONFIG_FILE})"
    )


def _stats(described: Any) -> tuple[tuple[float, ...] | None, tuple[float, ...] | None]:
    cfg = described.get("pretrained_cfg") if isinstance(described, dict) else None
    cfg = cfg if isinstance(cfg, dict) else {}
    mean, std = cfg.get("mean"), cfg.get("std")
    return (tuple(mean) if mean else None), (tuple(std) if std else None)


def _read_export(weights: Path, meta: Path, state: dict[str, torch.Tensor] | None = None) -> StoredEncoder:
    """An exported encoder: ``weights`` (safetensors, or MAE's layout given as ``state``) and the shape in
    ``meta``; weights of another shape than ``meta`` gives are a :class:`CheckpointError` naming both."""
    described = _read_json(meta)
    args = _model_args_of(described, meta)
    if state is None:
        state = read_safetensors(weights)
    try:
        with torch.device("meta"):  # shapes only: nothing allocated, nothing initialised
            shaped = build_vit(args)
    except Exception as err:  # timm's own checks on the arguments: TypeError, ValueError, AssertionError
        raise CheckpointError(f"encoder description {meta}: model_args do not build a ViT ({err})") from err
    expected = {k: v.shape for k, v in shaped.state_dict().items()}
    if expected != {k: v.shape for k, v in state.items()}:
        load_strict(shaped, state, f"encoder {weights} with the shape in {meta}")  # raises, naming the keys
    mean, std = _stats(described)
    return StoredEncoder(state, args, (weights, meta), mean, std)


def _read_export_folder(folder: Path) -> StoredEncoder:
    meta = folder / CONFIG_FILE
    found = [folder / name for name in WEIGHTS_FILES if (folder / name).is_file()]
    if not meta.is_file():
        last = folder / "checkpoint-last.pt"
        hint = f"; to read a run folder's checkpoint, give the file: {last}" if last.is_file() else ""
        raise MissingFileError(
            f"encoder folder {folder}: no {CONFIG_FILE}, so not a folder `semaim export` wrote{hint}"
        )
    if not found:
        raise MissingFileError(f"encoder folder {folder}: neither {' nor '.join(WEIGHTS_FILES)} is in it")
    if len(found) > 1:
        raise CheckpointError(
            f"encoder folder {folder}: holds both {' and '.join(WEIGHTS_FILES)}; an export writes one, "
            "so one of them is stale: remove it, or export again with --force"
        )
    return _read_weights_file(found[0])


def _read_weights_file(weights: Path) -> StoredEncoder:
    if weights.suffix == ".safetensors":
        return _read_export(weights, _description_of(weights, "safetensors"))
    state = _load_mae_layout(weights)
    if state is None:
        raise CheckpointError(f"encoder file {weights}: not {{'model': state_dict}}, MAE's layout")
    return _read_export(weights, _description_of(weights, "MAE's {'model': state_dict} layout"), state)


def _dataset_stats(spec: str, in_chans: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The mean and std the dataset of ``spec`` normalises with (:func:`semaim.data.open_dataset`'s
    datasets), found without opening it: the data need not be where the checkpoint was trained."""
    from .data.cluttered import SPEC as CLUTTERED
    from .data.cluttered import ClutteredFashionMNIST
    from .data.folders import ImageFolder
    from .data.idx import FashionMNIST

    name = spec.partition(":")[0]
    if name == CLUTTERED:
        return ClutteredFashionMNIST.mean, ClutteredFashionMNIST.std
    if name == "fashion-mnist":
        return FashionMNIST.mean, FashionMNIST.std
    if in_chans == 3:
        return ImageFolder.mean, ImageFolder.std
    return (0.449,), (0.226,)  # ImageFolder's greyscale ("L") statistics


def _per_channel(values: tuple[float, ...], in_chans: int) -> tuple[float, ...]:
    return tuple(values) * in_chans if len(values) == 1 else tuple(values)


def read_encoder(path: str | Path) -> StoredEncoder:
    """The encoder in a pretraining or fine-tuning checkpoint, an export folder, or (until 0.3) an exported
    ``.safetensors`` / MAE-layout ``.pth`` with its ``.json``; with the normalisation it was trained with."""
    path = Path(path)
    if path.is_dir():
        return _read_export_folder(path)
    if path.suffix == ".safetensors":
        if not path.is_file():
            raise MissingFileError(f"encoder file not found: {path}")
        return _read_export(path, _description_of(path, "safetensors"))
    mae = _mae_export(path)
    if mae is not None:
        return _read_export(path, _description_of(path, "MAE's {'model': state_dict} layout"), mae)
    ckpt = load_checkpoint(path, kind=None)
    config = ckpt.get("config") if isinstance(ckpt.get("config"), dict) else {}
    if ckpt["kind"] == KIND_PRETRAIN:
        cfg = PretrainConfig.from_dict(ckpt["config"])
        state = {k: v for k, v in ckpt["model"].items() if k.split(".")[0] in ENCODER_KEYS}
        args = model_args(cfg.model)
        mean, std = _dataset_stats(cfg.data.data, args["in_chans"])
        mean, std = cfg.data.mean or mean, cfg.data.std or std
    elif ckpt["kind"] == KIND_FINETUNE:
        state = {k: v for k, v in ckpt["model"].items() if not k.startswith("head.")}
        args = ckpt["model_args"]
        data = (config.get("finetune") or {}).get("data")
        mean, std = _dataset_stats(data, args["in_chans"]) if isinstance(data, str) else (None, None)
    else:
        raise CheckpointError(
            f"checkpoint {path}: expected a semaim pretraining or fine-tuning checkpoint, got {ckpt['kind']!r}"
        )
    if mean is not None:
        mean, std = _per_channel(mean, args["in_chans"]), _per_channel(std, args["in_chans"])
    return StoredEncoder(state, args, (path,), mean, std)


def encoder_from_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """``(state_dict, model_args)`` of the encoder in a pretraining or fine-tuning checkpoint or an export
    (a folder ``semaim export`` wrote, or until 0.3 a ``.safetensors`` / ``--format mae`` ``.pth`` with its
    ``.json``)."""
    stored = read_encoder(path)
    return stored.state, stored.args


def load_encoder(path: str | Path, **overrides: Any) -> VisionTransformer:
    """A timm ``VisionTransformer`` (no classifier) with the encoder weights of ``path``.

    ``path`` is an export folder (or a file in one), a pretraining checkpoint or a fine-tuning checkpoint
    (or until 0.3 an exported ``.safetensors`` / ``.pth`` with its ``.json``). ``overrides`` go to the
    constructor (e.g. ``drop_path_rate=0.1``).
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
