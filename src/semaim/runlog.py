"""What a training run writes as it goes: metrics.jsonl, TensorBoard scalars and a progress bar."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def truncate_metrics(path: Path, last_step: int) -> None:
    """Drop metric lines written after the checkpoint a run resumes from (a kill leaves some behind)."""
    if not path.is_file():
        return
    keep = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= last_step]
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(line + "\n" for line in keep))
    tmp.replace(path)


class RunLog:
    """One JSON object per line in ``metrics.jsonl``, the same scalars in TensorBoard, a tqdm bar."""

    def __init__(
        self, out: Path, tag: str, total: int, step: int, resume: bool, progress: bool, name: str = "metrics"
    ) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.path = out / f"{name}.jsonl"
        if resume:
            truncate_metrics(self.path, step)
        self.file = open(self.path, "a" if resume else "w")  # noqa: SIM115
        self.writer = SummaryWriter(str(out / "tb"), purge_step=step if resume else None)
        self.tag = tag
        self.bar = None
        if progress:
            from tqdm import tqdm

            self.bar = tqdm(
                total=total, initial=step, unit="step", dynamic_ncols=True, file=sys.stderr, mininterval=1.0
            )

    def log(self, record: dict[str, Any], description: str = "", **postfix: str) -> None:
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        for key, value in record.items():
            if key not in ("step", "epoch", "time") and isinstance(value, (int, float)):
                self.writer.add_scalar(f"{self.tag}/{key}", value, record["step"])
        if self.bar is not None:
            self.bar.set_description(description)
            self.bar.set_postfix(**postfix)
            self.bar.update(1)

    def scalar(self, key: str, value: float, step: int) -> None:
        self.writer.add_scalar(f"{self.tag}/{key}", value, step)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        self.writer.close()
        self.file.close()
