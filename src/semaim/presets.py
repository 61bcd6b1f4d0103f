"""Presets (``configs/*.yaml`` in the package) and ``--set key=value`` overrides, both type-checked
against the dataclasses of :mod:`semaim.config`."""

from __future__ import annotations

import contextlib
import types
import typing
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any

import yaml

from .config import DataConfig, ModelConfig, PretrainConfig, TrainConfig

PRESET_DIR = Path(__file__).parent / "configs"
SECTIONS = {"model": ModelConfig, "data": DataConfig, "train": TrainConfig}


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def load_preset(name: str) -> PretrainConfig:
    """A preset by name (``cpu-tiny``) or a path to a YAML file of the same shape."""
    path = Path(name)
    if not (path.suffix in (".yaml", ".yml") and path.is_file()):
        path = PRESET_DIR / f"{name}.yaml"
    if not path.is_file():
        raise ValueError(f"preset: {name!r} does not exist; available presets are {preset_names()}")
    values = yaml.safe_load(path.read_text()) or {}
    cfg = PretrainConfig(ModelConfig(), DataConfig(), TrainConfig())
    for section, entries in values.items():
        if section not in SECTIONS:
            raise ValueError(f"preset {path}: unknown section {section!r}; expected {list(SECTIONS)}")
        for key, value in (entries or {}).items():
            set_field(cfg, f"{section}.{key}", value)
    return cfg


def parse_assignment(text: str) -> tuple[str, Any]:
    """``"train.lr=1e-3" -> ("train.lr", 0.001)``: the value is read as YAML (``null``, ``true``, ``[1, 2]``)."""
    if "=" not in text:
        raise ValueError(f"--set: expected key=value, got {text!r}")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else raw
    except yaml.YAMLError:
        value = raw
    if isinstance(value, str) and "," in value and not raw.strip().startswith(("'", '"')):
        with contextlib.suppress(yaml.YAMLError):  # "0.9,0.95" is a tuple
            value = [yaml.safe_load(v) for v in value.split(",")]
    return key.strip(), value


def set_field(cfg: PretrainConfig, key: str, value: Any) -> None:
    """Set ``section.field`` (or a bare ``field`` that only one section has) with a type check."""
    section, name = _resolve(key)
    target = getattr(cfg, section)
    hints = typing.get_type_hints(type(target))
    setattr(target, name, coerce(value, hints[name], f"{section}.{name}"))


def _resolve(key: str) -> tuple[str, str]:
    if "." in key:
        section, name = key.split(".", 1)
        if section not in SECTIONS:
            raise ValueError(
                f"--set: unknown section {section!r} in {key!r}; expected one of {list(SECTIONS)}"
            )
        if name not in {f.name for f in fields(SECTIONS[section])}:
            known = sorted(f.name for f in fields(SECTIONS[section]))
            raise ValueError(f"--set: unknown field {key!r}; {section} has {known}")
        return section, name
    owners = [s for s, cls in SECTIONS.items() if key in {f.name for f in fields(cls)}]
    if len(owners) != 1:
        hint = "no section has it" if not owners else f"it is in {owners}: write section.{key}"
        raise ValueError(f"--set: unknown field {key!r} ({hint})")
    return owners[0], key


def coerce(value: Any, hint: Any, name: str) -> Any:
    """Check ``value`` against a type hint; convert where it is unambiguous (int -> float, list -> tuple)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        arms = typing.get_args(hint)
        if value is None and type(None) in arms:
            return None
        for arm in arms:
            if arm is type(None):
                continue
            with contextlib.suppress(ValueError):
                return coerce(value, arm, name)
        raise ValueError(f"{name}: expected {_describe(hint)}, got {value!r}")
    if origin is tuple:
        args = typing.get_args(hint)
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{name}: expected {_describe(hint)}, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(coerce(v, args[0], name) for v in value)
        if len(value) != len(args):
            raise ValueError(f"{name}: expected {len(args)} values, got {value!r}")
        return tuple(coerce(v, a, name) for v, a in zip(value, args, strict=True))
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" (no dot) as a string
            with contextlib.suppress(ValueError):
                return float(value)
    elif hint is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
    elif is_dataclass(hint):
        raise ValueError(f"{name}: set its fields one by one ({name}.FIELD=...)")
    raise ValueError(f"{name}: expected {_describe(hint)}, got {value!r} ({type(value).__name__})")


def _describe(hint: Any) -> str:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(hint))
    if hint is type(None):
        return "null"
    if typing.get_origin(hint) is tuple:
        return "a list " + str(list(typing.get_args(hint))).replace("Ellipsis", "...")
    return getattr(hint, "__name__", str(hint))
