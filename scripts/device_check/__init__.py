"""The steps of ``scripts/device-check.py`` that import torch: the version gate, the measurements and the short
training runs. Nothing here is installed with semaim; ``device-check.py`` finds this folder beside itself."""

from __future__ import annotations

from typing import Any


class StepError(Exception):
    """A step that ran but whose check failed; ``results`` keeps what it measured for the summary."""

    def __init__(self, message: str, results: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.results = results or {}
