"""The value checks every configuration uses: each failure is a :class:`~semaim.errors.ConfigError` that
names the field, what it got and what it expected."""

from __future__ import annotations

import math
from typing import Any

from .errors import ConfigError


def to_2tuple(value: int | tuple[int, int] | list[int], name: str) -> tuple[int, int]:
    """``32 -> (32, 32)``; ``(32, 48) -> (32, 48)``; anything else is a ``ConfigError`` naming ``name``."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value, value
    if isinstance(value, (tuple, list)) and len(value) == 2 and all(isinstance(v, int) for v in value):
        return int(value[0]), int(value[1])
    raise ConfigError(f"{name}: expected an int or a pair of ints (height, width), got {value!r}")


def require(ok: bool, name: str, expected: str, got: Any) -> None:
    """``ConfigError("name: expected ..., got ...")`` unless ``ok``."""
    if not ok:
        raise ConfigError(f"{name}: expected {expected}, got {got!r}")


def require_positive(section: Any, prefix: str, *names: str, allow_zero: bool = False) -> None:
    """Every named field is a finite number > 0 (>= 0 with ``allow_zero``); ``None`` is allowed."""
    for name in names:
        value = getattr(section, name)
        if value is None:
            continue
        ok = math.isfinite(value) and (value >= 0 if allow_zero else value > 0)
        require(ok, f"{prefix}{name}", "a number >= 0" if allow_zero else "a number > 0", value)


def require_choice(value: Any, name: str, choices: tuple[str, ...]) -> None:
    require(value in choices, name, f"one of {choices}", value)


def require_crop_scale(value: tuple[float, float], name: str) -> None:
    ok = len(value) == 2 and 0 < value[0] <= value[1] <= 1
    require(ok, name, "[min, max] with 0 < min <= max <= 1", list(value))
