"""What a training run writes as it goes: metrics.jsonl, TensorBoard scalars and its progress on stderr."""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path
from typing import Any

import torch

from ..errors import DataError, RunDirError
from .distributed import DistInfo, all_reduce_mean
from .progress import Progress
from .run import write_error, write_text_atomic


def read_records(path: Path) -> list[dict[str, Any]]:
    """The records of a ``.jsonl`` file. An incomplete last line (a kill or a full disk mid-write) is
    dropped; a damaged line before it is a :class:`DataError` naming the file and the line."""
    lines = path.read_text().splitlines()
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as err:
            if number == len(lines):
                break
            raise DataError(f"{path}, line {number}: not a JSON record ({err.msg})") from err
    return records


def truncate_metrics(path: Path, last_step: int) -> None:
    """Drop metric lines written after the checkpoint a run resumes from (a kill leaves some behind)."""
    if not path.is_file():
        return
    keep = [r for r in read_records(path) if r["step"] <= last_step]
    write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in keep))


class RunLog:
    """One JSON object per line in ``metrics.jsonl``, the same scalars in TensorBoard, and the progress (a bar on
    a terminal, a plain line per interval in a log file: :mod:`semaim.engine.progress`)."""

    def __init__(
        self,
        out: Path,
        tag: str,
        *,
        total: int,
        step: int,
        resume: bool,
        progress: bool,
        name: str = "metrics",
    ) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.path = out / f"{name}.jsonl"
        if resume:
            truncate_metrics(self.path, step)
        self.file = open(self.path, "a" if resume else "w")  # noqa: SIM115
        self.writer = SummaryWriter(str(out / "tb"), purge_step=step if resume else None)
        self.tag = tag
        self.progress = Progress(tag, total, initial=step, enabled=progress)

    def log(self, record: dict[str, Any], description: str = "", *, steps: int = 1, **postfix: str) -> None:
        """Write ``record`` (the last of ``steps`` steps) and move the progress on by ``steps``."""
        try:
            self.file.write(json.dumps(record) + "\n")
            self.file.flush()
        except OSError as err:
            raise RunDirError(f"{write_error(self.path, err)}; the last checkpoint is intact") from err
        for key, value in record.items():
            if key not in ("step", "epoch", "time") and isinstance(value, (int, float)):
                self.writer.add_scalar(f"{self.tag}/{key}", value, record["step"])
        self.progress.update(steps, description, **postfix)

    def scalar(self, key: str, value: float, step: int) -> None:
        self.writer.add_scalar(f"{self.tag}/{key}", value, step)

    def close(self) -> None:
        self.progress.close()
        self.writer.close()
        with contextlib.suppress(OSError):  # a failed write was already reported; don't mask it
            self.file.close()


class Interval:
    """The steps since the last read: their summed loss and last gradient norm, kept on the device. Reading a
    value waits for the device, so a training loop reads once per logged step, not per step."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.reset()

    def reset(self) -> None:
        self.loss_sum, self.grad_norm = (
            torch.zeros((), device=self.device),
            torch.zeros((), device=self.device),
        )
        self.steps, self.start = 0, time.perf_counter()

    def add(self, loss: torch.Tensor, grad_norm: torch.Tensor) -> None:
        self.loss_sum += loss
        self.grad_norm = grad_norm
        self.steps += 1

    def read(self, info: DistInfo | None = None) -> tuple[float, float]:
        """``(mean loss over the steps and ranks, last gradient norm)``, in one transfer from the device."""
        mean = self.loss_sum / self.steps
        values = torch.stack([all_reduce_mean(mean, info) if info else mean, self.grad_norm.float()])
        loss, grad_norm = values.tolist()
        return loss, grad_norm
