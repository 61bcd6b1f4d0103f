"""The encoder alone, written for other code bases: a folder that timm loads as it is, with the weights in
timm's safetensors or in MAE's ``.pth`` layout.

``semaim export --checkpoint C --out DIR`` writes ``DIR/model.safetensors`` (timm's key names) and
``DIR/config.json``: the model folder timm reads with ``local-dir:`` (timm >= 1.0; the files its
``push_to_hf_hub`` puts on the Hugging Face Hub), so plain timm builds and fills the encoder::

    import timm
    vit = timm.create_model("local-dir:DIR", pretrained=True)  # strict: every key, every shape
    cfg = timm.data.resolve_data_config({}, model=vit)          # input size, mean and std it was trained with

``config.json`` holds ``architecture`` (a registered timm ViT whose keyword arguments ``model_args``
override: the shape, and the layout flags that fix the key names), ``num_classes: 0`` (no head), and
``pretrained_cfg`` with the input size and the mean / std of the data the encoder was trained on.

``--format mae`` writes ``DIR/model.pth`` instead: the same tensors as ``{"model": state_dict}``, the
layout of MAE's released ``mae_pretrain_vit_base.pth``, which detectron2's ViTDet configs
(``train.init_checkpoint``) and mmsegmentation's MAE configs (after its ``beit2mmseg.py`` key converter)
load; the same ``config.json`` says its shape (and timm's ``local-dir:`` reads ``model.pth`` too). No
renaming is needed: MAE's encoder *is* timm's ``VisionTransformer`` (``cls_token``, ``pos_embed`` of shape
``(1, 1 + h·w, D)`` with a zero cls row, ``patch_embed.proj``, ``blocks.N.{norm1, attn.qkv, attn.proj,
norm2, mlp.fc1, mlp.fc2}``, ``norm``), and so is semaim's (the same fixed 2-D sin-cos table).

Export never writes over its input, refuses a non-empty ``--out`` without ``force``, and replaces files
whole: each is written under a temporary name in ``DIR`` and renamed, so a failed export leaves the
folder as it was. ``semaim.load_encoder`` and every ``--checkpoint`` read the folder back.
"""

from __future__ import annotations

import errno
import inspect
import json
import os
import secrets
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from timm.models.vision_transformer import VisionTransformer

from . import __version__
from .encoder import CONFIG_FILE, WEIGHTS_FILES, StoredEncoder, build_vit, model_args, read_encoder
from .errors import ConfigError, RunDirError, SemAIMWarning
from .weights import load_strict

__all__ = ["DEFAULT_OUT", "EXPORT_FORMATS", "FORMAT_ALIASES", "export_encoder", "model_args", "timm_config"]

EXPORT_FORMATS = {"timm": WEIGHTS_FILES[0], "mae": WEIGHTS_FILES[1]}
"""``--format`` -> the weights file it writes in the folder (``config.json`` goes beside either)."""
FORMAT_ALIASES = {"safetensors": "timm"}
"""Old ``--format`` spellings, accepted until semaim 0.3."""
DEFAULT_OUT = "encoder"
"""The folder written when ``--out`` is not given."""
FILE_ENDINGS = (".safetensors", ".pth", ".pt", ".bin", ".json")
"""Endings of a file name: ``--out`` names the folder the files go in, never a file."""

_LAYOUT = ("global_pool", "class_token", "no_embed_class", "reg_tokens", "qkv_bias", "qk_norm")
_LAYOUT += ("init_values", "pre_norm", "fc_norm")
"""``VisionTransformer`` arguments that decide the state dict's keys and shapes besides the shape itself;
``config.json`` records them (as ``build_vit`` builds the encoder) so that no entry point's own default
can change them."""
_ARCHITECTURES = {
    (16, 192, 12, 3): "vit_tiny_patch16_224",
    (16, 384, 12, 6): "vit_small_patch16_224",
    (16, 768, 12, 12): "vit_base_patch16_224",
    (16, 1024, 24, 16): "vit_large_patch16_224",
    (14, 1280, 32, 16): "vit_huge_patch14_224",
}
"""timm entry points whose only own arguments are (patch_size, embed_dim, depth, num_heads): the name in
``config.json`` is the one of the encoder's size where there is one, else ``vit_base_patch16_224``; either
way ``model_args`` override every argument that matters."""


def timm_config(stored: StoredEncoder, fmt: str, source: str | Path) -> dict[str, Any]:
    """The ``config.json`` of an export folder: timm's model folder format (``load_model_config_from_path``
    reads ``architecture``, ``num_classes``, ``model_args`` and ``pretrained_cfg``), plus a ``semaim``
    entry (this version, the format and the checkpoint it came from) that timm ignores."""
    defaults = inspect.signature(VisionTransformer.__init__).parameters
    args = stored.args | {k: defaults[k].default for k in _LAYOUT if k not in stored.args}
    img = args["img_size"]
    height, width = (img, img) if isinstance(img, int) else tuple(img)
    key = (args["patch_size"], args["embed_dim"], args["depth"], args["num_heads"])
    pretrained_cfg: dict[str, Any] = {
        "input_size": [args["in_chans"], height, width],
        "fixed_input_size": True,
        "interpolation": "bicubic",  # semaim's evaluation transform: a bicubic resize to the input size
        "crop_pct": 1.0,
        "crop_mode": "squash",
    }
    if stored.mean is not None:
        pretrained_cfg |= {"mean": list(stored.mean), "std": list(stored.std)}
    pretrained_cfg |= {"num_classes": 0, "first_conv": "patch_embed.proj", "classifier": "head"}
    return {
        "architecture": _ARCHITECTURES.get(key, "vit_base_patch16_224"),
        "num_classes": 0,
        "num_features": args["embed_dim"],
        "global_pool": args["global_pool"],
        "model_args": args,
        "pretrained_cfg": pretrained_cfg,
        "semaim": {
            "version": __version__,
            "format": fmt,
            "weights": EXPORT_FORMATS[fmt],
            "source": str(source),
        },
    }


def export_encoder(
    checkpoint: str | Path, out: str | Path | None = None, fmt: str = "timm", *, force: bool = False
) -> tuple[Path, Path]:
    """Write the encoder of ``checkpoint`` into the folder ``out``; returns ``(weights file, config.json)``.

    ``fmt="timm"``: ``model.safetensors`` with timm's keys. ``fmt="mae"``: ``model.pth``, MAE's
    ``{"model": state_dict}`` (module docstring). Every check comes before the first byte is written:
    the format; an ``out`` that is, holds or would replace an input, is a file, or is a non-empty folder
    without ``force``; a checkpoint that timm cannot load strictly. ``force`` replaces only the files an
    export writes (the other format's weights file goes, so the folder holds one), each whole.
    """
    fmt = _format(fmt)
    out = Path(out if out is not None else DEFAULT_OUT)
    _refuse_overlap(out, [Path(checkpoint)])  # before reading it: the plain case costs nothing
    stored = read_encoder(checkpoint)
    _refuse_overlap(out, stored.files)
    if out.exists() and not out.is_dir():
        raise ConfigError(
            f"--out: {out} is a file; export writes a folder ({EXPORT_FORMATS[fmt]}, {CONFIG_FILE})"
        )
    if out.suffix.lower() in FILE_ENDINGS:
        raise ConfigError(
            f"--out: {out} is a file name, but --out is the folder export writes {EXPORT_FORMATS[fmt]} and "
            f"{CONFIG_FILE} into: give a folder, e.g. --out {out.with_suffix('')}"
        )
    _refuse_occupied(out, force)
    config = timm_config(stored, fmt, checkpoint)
    load_strict(build_vit(config["model_args"]), stored.state, f"encoder {checkpoint}")  # timm can load it
    if stored.mean is None:
        warnings.warn(
            SemAIMWarning(
                f"{checkpoint} does not say what mean/std its images were normalised with: {out / CONFIG_FILE} "
                "gives none, and timm will assume ImageNet's"
            ),
            stacklevel=2,
        )
    tensors = {k: v.contiguous() for k, v in stored.state.items()}
    weights = out / EXPORT_FORMATS[fmt]

    def write_weights(path: Path) -> None:
        if fmt == "mae":
            with path.open("wb") as f:
                torch.save({"model": tensors}, f)
        else:
            save_file(tensors, str(path), metadata={"format": "pt"})

    def write_config(path: Path) -> None:
        path.write_text(json.dumps(config, indent=2) + "\n")

    stale = [out / name for name in WEIGHTS_FILES if name != weights.name]
    _write_folder(out, {weights: write_weights, out / CONFIG_FILE: write_config}, stale)
    return weights, out / CONFIG_FILE


def _format(fmt: str) -> str:
    if fmt in FORMAT_ALIASES:
        new = FORMAT_ALIASES[fmt]
        warnings.warn(
            SemAIMWarning(f"--format {fmt} is deprecated and goes in semaim 0.3: use --format {new}"),
            stacklevel=3,
        )
        return new
    if fmt not in EXPORT_FORMATS:
        raise ConfigError(f"--format: expected one of {list(EXPORT_FORMATS)}, got {fmt!r}")
    return fmt


def _forms(path: Path) -> set[Path]:
    """The absolute path as written and with every link resolved."""
    return {Path(os.path.abspath(path)), path.resolve()}


def _refuse_overlap(out: Path, inputs: list[Path] | tuple[Path, ...]) -> None:
    """A :class:`ConfigError` when ``out`` is an input or a folder holding one (through links too)."""
    outs = _forms(out)
    for given in inputs:
        for form in _forms(given):
            if form in outs:
                raise ConfigError(
                    f"--out: {out} is an input of this export ({given}); export writes a new folder and "
                    "never over its input"
                )
            if outs & set(form.parents):
                raise ConfigError(
                    f"--out: {out} holds an input of this export ({given}); export never writes into its "
                    "input's folder: give a new folder"
                )


def _refuse_occupied(out: Path, force: bool) -> None:
    """A non-empty ``out`` without ``force`` is a :class:`RunDirError`; so is, even with it, a folder where
    export writes a file."""
    if not out.is_dir():
        return
    held = sorted(p.name for p in out.iterdir())
    if held and not force:
        shown = ", ".join(held[:5]) + (f" and {len(held) - 5} more" if len(held) > 5 else "")
        raise RunDirError(
            f"--out: {out} is not empty (it holds {shown}); --force replaces the files export writes "
            f"({', '.join(WEIGHTS_FILES)}, {CONFIG_FILE}) and leaves the rest, or give a new folder"
        )
    for name in (*WEIGHTS_FILES, CONFIG_FILE):
        target = out / name
        if target.exists() and not target.is_file():
            raise RunDirError(f"--out: {target} is not a file, and export writes a file there: move it away")


def _write_folder(out: Path, writers: dict[Path, Any], stale: list[Path]) -> None:
    """Each ``writers`` entry writes its file under a temporary name in ``out``; then all are renamed into
    place and ``stale`` files removed. Any failure before the renames removes what it wrote (temporary
    files, the folders it created) and leaves ``out`` as it was. Files get the mode ``open()`` gives."""
    created = [p for p in (out, *out.parents) if not p.exists()]
    written: dict[Path, Path] = {}
    final = out
    try:
        out.mkdir(parents=True, exist_ok=True)
        for final, write in writers.items():
            tmp = out / f".{final.name}.{secrets.token_hex(4)}.tmp"
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            written[final] = tmp
            mode = tmp.stat().st_mode & 0o777  # what open() gives: 0o666 less the umask
            write(tmp)
            os.chmod(tmp, mode)  # a writer that makes its own file (safetensors does) makes it 0o600
            with tmp.open("rb+") as f:
                os.fsync(f.fileno())
    except BaseException as err:
        for tmp in written.values():
            tmp.unlink(missing_ok=True)
        for folder in created:  # deepest first
            try:
                folder.rmdir()
            except OSError:
                break
        if isinstance(err, OSError):
            raise _write_error(final, out, err) from err
        raise
    for final, tmp in written.items():
        os.replace(tmp, final)
    for path in stale:
        path.unlink(missing_ok=True)
    try:
        dir_fd = os.open(out, os.O_RDONLY)
    except OSError:  # a platform without directory handles
        return
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _write_error(path: Path, out: Path, err: OSError) -> RunDirError:
    why = "the disk is full" if err.errno == errno.ENOSPC else (err.strerror or str(err))
    return RunDirError(f"--out: cannot write {path}: {why}; the files in {out} are as they were")
