"""Progress of long work on stderr, suited to a terminal and to a log file alike.

On a terminal: a tqdm bar, redrawn in place. Anywhere else (``semaim pretrain > log 2>&1``, a job
scheduler's log): one plain line every :data:`interval` seconds and one at the end, never a carriage
return, so that a 100k-step run's log stays a few hundred lines::

    pretrain  step 120/468 (26%)  epoch 1/2  loss 1.1234  lr 2.50e-04  img_s 154  2.41 step/s  elapsed 50s  eta 2m24s

``--log-interval SECONDS`` sets the interval for a command (:func:`set_interval`).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import IO, Any, TypeVar

DEFAULT_INTERVAL_S = 60.0
_interval = DEFAULT_INTERVAL_S

T = TypeVar("T")


def set_interval(seconds: float) -> None:
    """Seconds between two plain progress lines when stderr is not a terminal."""
    global _interval
    _interval = seconds


def is_terminal(stream: IO[str]) -> bool:
    return bool(getattr(stream, "isatty", None)) and stream.isatty()


def clock(seconds: float) -> str:
    """``50s``, ``2m24s``, ``3h05m``: short enough for a progress line."""
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class Progress:
    """A bar on a terminal, a plain line per interval elsewhere; nothing at all when not ``enabled``."""

    def __init__(
        self,
        name: str,
        total: int | None,
        *,
        initial: int = 0,
        unit: str = "step",
        enabled: bool = True,
        stream: IO[str] | None = None,
    ) -> None:
        self.name, self.total, self.unit, self.enabled = name, total, unit, enabled
        self.stream = stream or sys.stderr
        self.count = self.first = self.printed = initial
        self.start = self.last_line = time.monotonic()
        self.description, self.values = "", {}
        self.bar = None
        if enabled and is_terminal(self.stream):
            from tqdm import tqdm

            self.bar = tqdm(
                total=total,
                initial=initial,
                unit=unit,
                desc=name,
                dynamic_ncols=True,
                file=self.stream,
                mininterval=1.0,
                leave=False,
            )

    def update(self, n: int = 1, description: str = "", **values: Any) -> None:
        """``n`` more done; ``description`` and ``values`` (already formatted) describe the latest one."""
        self.count += n
        self.description, self.values = description, values
        if self.bar is not None:
            self.bar.set_description(f"{self.name} {description}".strip(), refresh=False)
            self.bar.set_postfix(values, refresh=False)
            self.bar.update(n)
        elif self.enabled and time.monotonic() - self.last_line >= _interval:
            self.line()

    def line(self) -> None:
        """One plain line: where it stands, the latest values, the rate, the time so far and to go."""
        now = time.monotonic()
        elapsed = now - self.start
        rate = (self.count - self.first) / elapsed if elapsed > 0 else 0.0
        where = f"{self.unit} {self.count}"
        if self.total:
            where += f"/{self.total} ({100 * self.count / self.total:.0f}%)"
        parts = [self.name, where, self.description, *(f"{k} {v}" for k, v in self.values.items())]
        parts += [f"{rate:.2f} {self.unit}/s", f"elapsed {clock(elapsed)}"]
        if self.total and rate > 0 and self.count < self.total:
            parts.append(f"eta {clock((self.total - self.count) / rate)}")
        print("  ".join(p for p in parts if p), file=self.stream, flush=True)
        self.last_line, self.printed = now, self.count

    def close(self) -> None:
        """Clear the bar, or write the last line if the work moved on since the previous one."""
        if self.bar is not None:
            self.bar.close()
        elif self.enabled and self.count > self.printed:
            self.line()


def track(
    items: Iterable[T], name: str, *, total: int | None = None, unit: str = "batch", enabled: bool = True
) -> Iterator[T]:
    """``items``, reporting progress as :class:`Progress` does (a bar, or a line per interval)."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    progress = Progress(name, total, unit=unit, enabled=enabled)
    try:
        for item in items:
            yield item
            progress.update()
    finally:
        progress.close()
