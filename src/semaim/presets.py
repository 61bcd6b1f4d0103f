"""Presets (``configs/**/*.yaml`` in the package) and how every command builds its config from them.

A preset is a YAML file with the shape of the command's config (its sections), so the ``config.yaml``
that a run writes into its folder is itself a preset that rebuilds the run. Order of precedence, the
same for every command: preset (or, when resuming, the run's own ``config.yaml``), then the command's
flags, then ``--set section.field=value``.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any, TypeVar

import yaml

from .config import PretrainConfig, Sections, parse_assignment
from .errors import ConfigError

PRESET_DIR = Path(__file__).parent / "configs"
C = TypeVar("C", bound=Sections)


def preset_names(kind: type[Sections] = PretrainConfig) -> list[str]:
    """The presets shipped for a command's config class."""
    return sorted(p.stem for p in (PRESET_DIR / kind.PRESETS).glob("*.yaml"))


def load_preset(name: str, kind: type[C] = PretrainConfig) -> C:
    """A preset by name (``cpu-tiny``) or a path to a YAML file of the same shape (e.g. a run's config.yaml)."""
    path = Path(name)
    if not (path.suffix in (".yaml", ".yml") and path.is_file()):
        path = PRESET_DIR / kind.PRESETS / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"preset: {name!r} does not exist; available presets are {preset_names(kind)}")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"preset {path}: not valid YAML ({err})") from err
    if not isinstance(values, dict):
        raise ConfigError(f"preset {path}: expected sections {list(kind.section_types())}, got {values!r}")
    cfg = kind.default()
    for section, entries in values.items():
        if section not in kind.section_types():
            raise ConfigError(
                f"preset {path}: unknown section {section!r}; expected {list(kind.section_types())}"
            )
        if not isinstance(entries, dict | None):
            raise ConfigError(
                f"preset {path}: section {section!r} must map fields to values, got {entries!r}"
            )
        for key, value in (entries or {}).items():
            cfg.set(f"{section}.{key}", value)
    return cfg


def build_config(kind: type[C], preset: str | None, flags: dict[str, Any], assignments: Iterable[str]) -> C:
    """Preset (``None``: the defaults), then the flags that were given (``{"section.field": value}``,
    ``None`` = not given), then ``--set`` assignments; validated."""
    cfg = load_preset(preset, kind) if preset is not None else kind.default()
    for key, value in flags.items():
        if value is not None:
            cfg.set(key, value)
    for assignment in assignments:
        cfg.set(*parse_assignment(assignment))
    return cfg.validate()
