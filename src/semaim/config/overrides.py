"""How values get into a config: the dict / YAML round trip, ``--set`` parsing and the type check.

Nothing here knows a particular section: :class:`Sections` works on any dataclass of dataclasses, reading
the field types from their annotations, so that a preset, a command's flags, ``--set section.field=value``
and a checkpoint's stored dict all go through one type check (:func:`coerce`) whose error names the field,
what it got and what it expected. The sections themselves are :mod:`semaim.config.schema`.
"""

from __future__ import annotations

import contextlib
import types
import typing
from dataclasses import asdict, fields, is_dataclass
from typing import Any, ClassVar

import yaml

from ..errors import ConfigError


class Sections:
    """Base of a command's config: a dataclass whose fields are sections (dataclasses of plain values).

    ``set("section.field", value)`` type-checks against the section's annotations; a bare ``field``
    works when exactly one section has it. ``to_dict`` / ``from_dict`` round-trip through YAML and JSON.
    """

    PRESETS: ClassVar[str] = ""  # the folder of configs/ holding this command's presets ("" = configs/)

    @classmethod
    def section_types(cls) -> dict[str, type]:
        """``{section name: section class}`` in field order, the order of ``to_dict`` and config.yaml."""
        return {f.name: typing.get_type_hints(cls)[f.name] for f in fields(cls)}

    @classmethod
    def default(cls) -> Sections:
        """Every section at its defaults: what a command starts from when no preset is given."""
        return cls(**{name: kind() for name, kind in cls.section_types().items()})

    def validate(self) -> Sections:
        """Validate every section under its own name (``train.``); a command adds its cross-section checks."""
        for name in self.section_types():
            section = getattr(self, name)
            if hasattr(section, "validate"):
                section.validate(prefix=f"{name}.")
        return self

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (tuples as lists), in field order: what config.yaml and checkpoints store."""
        return {name: plain(asdict(getattr(self, name))) for name in self.section_types()}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Sections:
        """The inverse of ``to_dict``, values type-checked; a missing section or field keeps its default."""
        types_ = cls.section_types()
        unknown = sorted(set(values) - set(types_))
        if unknown:
            raise ConfigError(f"config: unknown section(s) {unknown}; expected {list(types_)}")
        return cls(
            **{name: make_section(kind, values.get(name) or {}, name) for name, kind in types_.items()}
        )

    def set(self, key: str, value: Any) -> None:
        """Set ``section.field`` (or a bare ``field`` that only one section has) with a type check."""
        section, name = self._resolve(key)
        target = getattr(self, section)
        hint = typing.get_type_hints(type(target))[name]
        setattr(target, name, coerce(value, hint, f"{section}.{name}"))

    def _resolve(self, key: str) -> tuple[str, str]:
        """``"section.field"`` or a bare ``"field"`` -> ``(section, field)``, or an error naming the key."""
        types_ = self.section_types()
        if "." in key:
            section, name = key.split(".", 1)
            if section not in types_:
                raise ConfigError(
                    f"--set: unknown section {section!r} in {key!r}; expected one of {list(types_)}"
                )
            known = sorted(f.name for f in fields(types_[section]))
            if name not in known:
                raise ConfigError(f"--set: unknown field {key!r}; {section} has {known}")
            return section, name
        owners = [s for s, kind in types_.items() if key in {f.name for f in fields(kind)}]
        if len(owners) != 1:
            hint = "no section has it" if not owners else f"it is in {owners}: write section.{key}"
            raise ConfigError(f"--set: unknown field {key!r} ({hint})")
        return owners[0], key


def plain(values: dict[str, Any]) -> dict[str, Any]:
    """Tuples -> lists, so that YAML and JSON write plain sequences."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}


def make_section(cls: type, values: dict[str, Any], name: str) -> Any:
    """A section from a plain dict (YAML, checkpoint), every value type-checked; unknown keys refused."""
    hints = typing.get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"{name}: unknown field(s) {unknown}; known fields are {sorted(known)}")
    return cls(**{key: coerce(value, hints[key], f"{name}.{key}") for key, value in values.items()})


def parse_assignment(text: str) -> tuple[str, Any]:
    """``"train.lr=1e-3" -> ("train.lr", 0.001)``: the value is read as YAML (``null``, ``true``, ``[1, 2]``)."""
    if "=" not in text:
        raise ConfigError(f"--set: expected key=value, got {text!r}")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else raw
    except yaml.YAMLError:
        value = raw
    if isinstance(value, str) and "," in value and not raw.strip().startswith(("'", '"')):
        with contextlib.suppress(yaml.YAMLError):  # "0.9,0.95" is a tuple
            value = [yaml.safe_load(v) for v in value.split(",")]
    return key.strip(), value


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
            with contextlib.suppress(ConfigError):
                return coerce(value, arm, name)
        raise ConfigError(f"{name}: expected {_describe(hint)}, got {value!r}")
    if origin is tuple:
        args = typing.get_args(hint)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{name}: expected {_describe(hint)}, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(coerce(v, args[0], name) for v in value)
        if len(value) != len(args):
            raise ConfigError(f"{name}: expected {len(args)} values, got {value!r}")
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
        raise ConfigError(f"{name}: set its fields one by one ({name}.FIELD=...)")
    raise ConfigError(f"{name}: expected {_describe(hint)}, got {value!r} ({type(value).__name__})")


def _describe(hint: Any) -> str:
    """A type hint as the error messages spell it: ``int or null``, ``a list [...]``."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(hint))
    if hint is type(None):
        return "null"
    if typing.get_origin(hint) is tuple:
        return "a list " + str(list(typing.get_args(hint))).replace("Ellipsis", "...")
    return getattr(hint, "__name__", str(hint))
