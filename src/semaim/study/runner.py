"""The runs of one study folder: its plan, its finished runs, and which of them this process does.

A study is a fixed list of runs, each a function that returns one row of ``results.jsonl``. A rerun skips
the rows already there (and a cut pretraining or fine-tuning resumes from its checkpoint). ``--shard K/N``
lets N processes (N GPUs, or two single-threaded processes on two CPU cores) share one study folder: the
process K does the runs whose position in the list is K modulo N, and waits for another shard's row when
one of its runs needs it (a fine-tuning needs its pretraining). ``--only-seeds`` does the runs of some seeds
now and the rest later (e.g. one seed per working session, the rows kept between them).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import yaml

from ..engine.run import append_record, write_text_atomic
from ..engine.runlog import read_records
from ..errors import ConfigError

Key = tuple


class StudyRunner:
    """``run(key, work, needs)`` for every run of the study, in the same order in every process."""

    def __init__(self, folder: Path, plan: dict[str, Any], key_fields: tuple[str, ...],
                 shard: tuple[int, int] = (0, 1), only_seeds: Iterable[int] | None = None,
                 poll_s: float = 20.0, normalise: Callable[[dict], dict] | None = None) -> None:  # fmt: skip
        self.folder, self.key_fields, self.poll_s = Path(folder), key_fields, poll_s
        self.shard, self.count = shard, shard[1]
        self.only_seeds = None if only_seeds is None else set(only_seeds)
        if not 0 <= shard[0] < shard[1]:
            raise ConfigError(f"--shard: expected K/N with 0 <= K < N, got {shard[0]}/{shard[1]}")
        check_plan(self.folder, plan, normalise)
        self.results = self.folder / "results.jsonl"
        self.position, self.owner = 0, {}
        self.reload()

    def key(self, row: dict[str, Any]) -> Key:
        return tuple(row[name] for name in self.key_fields if name in row)

    def row(self, key: Key) -> dict[str, Any]:
        """The finished row of ``key`` (after :meth:`wait_for` it exists)."""
        return next(r for r in self.rows if self.key(r) == key)

    def reload(self) -> list[dict[str, Any]]:
        """Every finished row (another shard's included)."""
        self.rows = read_records(self.results) if self.results.is_file() else []
        self.done = {self.key(r) for r in self.rows}
        return self.rows

    def run(self, key: Key, work: Callable[[], dict[str, Any]], needs: Iterable[Key] = (),
            beside: Key | None = None) -> None:  # fmt: skip
        """Do ``work`` unless its row exists or it is another shard's (the next in turn, or the shard of the
        run ``beside`` names: a chain of runs stays on one shard); first wait for the rows it ``needs``."""
        if beside is None:
            self.owner[key] = self.position % self.count
            self.position += 1
        else:
            self.owner[key] = self.owner[beside]
        seed = dict(zip(self.key_fields, key, strict=False)).get("seed")
        skipped = self.only_seeds is not None and seed not in self.only_seeds
        if key in self.done or self.owner[key] != self.shard[0] or skipped:
            return
        self.wait_for(needs)
        start = time.perf_counter()
        row = {**dict(zip(self.key_fields, key, strict=False)), **work(), "wall_s": time.perf_counter() - start}
        append_record(self.results, row)
        self.rows.append(row)
        self.done.add(key)
        scores = ", ".join(f"{k} {v:.2f}" for k, v in row.items() if k.endswith(("top1", "miou")))
        print(f"[{len(self.rows)}] {key}: {scores}", flush=True)

    def wait_for(self, keys: Iterable[Key]) -> None:
        """Block until every key has a row (written by another shard); a single process never waits."""
        missing = [k for k in keys if k not in self.done]
        if missing and self.count > 1:
            print(f"shard {self.shard[0]}/{self.count}: waiting for {missing}", flush=True)
        while missing:
            if self.count == 1:
                raise ConfigError(f"study: {missing} must run before this run (a bug in the study's order)")
            time.sleep(self.poll_s)
            self.reload()
            missing = [k for k in missing if k not in self.done]

    def finish(self) -> list[dict[str, Any]]:
        """Every row of the folder, for the report (the other shards' too)."""
        return self.reload()


def check_plan(folder: Path, plan: dict[str, Any], normalise: Callable[[dict], dict] | None = None) -> None:
    """A study folder keeps its plan (``config.yaml``): another plan there is an error, not a mix.
    ``normalise`` fills a saved plan's fields that a newer version added with their defaults."""
    folder.mkdir(parents=True, exist_ok=True)
    saved = folder / "config.yaml"
    if saved.is_file() and (normalise or (lambda d: d))(yaml.safe_load(saved.read_text())) != plan:
        raise ConfigError(f"{folder} holds a study with other settings ({saved}); use another --out")
    if not saved.is_file():  # atomic: the other shards may be reading it
        write_text_atomic(saved, yaml.safe_dump(plan, sort_keys=False))


def parse_shard(text: str) -> tuple[int, int]:
    """``"K/N"`` -> ``(K, N)``."""
    try:
        k, n = (int(part) for part in text.split("/"))
    except ValueError:
        raise ConfigError(f"--shard: expected K/N such as 0/2, got {text!r}") from None
    if not 0 <= k < n:
        raise ConfigError(f"--shard: expected K/N with 0 <= K < N, got {text!r}")
    return k, n
