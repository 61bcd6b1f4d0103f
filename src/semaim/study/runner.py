"""The runs of one study folder: its plan, its finished runs, and which of them this process does.

A study is a fixed list of runs, each a function that returns one row of ``results.jsonl``. A rerun skips
the rows already there (and a cut pretraining or fine-tuning resumes from its checkpoint). Any number of
processes running the same study command on the same folder share its runs (N GPUs, or two
single-threaded processes on two CPU cores): each takes the first run in the list that is not done, not
taken by another process, and whose needs (a fine-tuning needs its pretraining) are done. A process
takes a run by holding a lock on ``claims/<run>`` (a POSIX lock, released when the process ends, killed
or not, so a run cut short is taken up again, from its checkpoint, by the next process that reaches it).
``--only-seeds`` does the runs of some seeds now and the rest later (e.g. one seed per working session);
``--deadline`` starts only the runs expected to end before a time (a job's or a session's end), from how long
the finished runs of the same kind took (on this machine, where some ran here), and leaves the rest for a rerun.
A finished run whose files a later run reads (a pretraining's checkpoint) and which are gone (the rows were
kept, the run folders not) is done again when a later run needs it, and must reproduce its recorded row.
"""

from __future__ import annotations

import fcntl
import math
import os
import re
import statistics
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar

import yaml

from ..engine.run import append_record, write_text_atomic
from ..engine.runlog import read_records
from ..errors import ConfigError

Key = tuple

RESUME_HINT = (
    "rerun the same study command to resume it: the finished runs are kept and skipped, a cut pretraining "
    "or fine-tuning continues from its checkpoint"
)
"""How a study is resumed (studies have no ``--resume`` flag): said when runs are left and added as a note
to the ``KeyboardInterrupt`` that stops a study."""


@dataclass
class Run:
    key: Key
    work: Callable[[], dict[str, Any]]
    needs: tuple[Key, ...]
    kept: Callable[[], bool] | None = None
    """Whether the files later runs read are there and finished (``None``: later runs read none)."""


class Claim:
    """An exclusive, non-blocking hold on one run: a POSIX lock on its claim file, and (because POSIX locks
    do not exclude the process that holds them) a set of the claims this process holds, for threads."""

    _held: ClassVar[set[Path]] = set()
    _guard: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, path: Path) -> None:
        self.path, self.fd = (
            path.resolve(),
            None,
        )  # one spelling: POSIX locks do not exclude their own process

    def take(self) -> bool:
        with Claim._guard:
            if self.path in Claim._held:
                return False
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o644)
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                return False
            self.fd = fd
            Claim._held.add(self.path)
            return True

    def release(self) -> None:
        with Claim._guard:
            if self.fd is not None:
                os.close(self.fd)  # closing drops the POSIX lock
                Claim._held.discard(self.path)
                self.fd = None


class StudyRunner:
    """Register every run of the study with :meth:`run` (the same list in every process), then
    :meth:`finish` does this process's share and returns every finished row."""

    def __init__(
        self,
        folder: Path,
        plan: dict[str, Any],
        key_fields: tuple[str, ...],
        *,
        only_seeds: Iterable[int] | None = None,
        poll_s: float = 20.0,
        normalise: Callable[[dict], dict] | None = None,
        deadline: float | None = None,
        like: tuple[str, ...] | None = None,
        machine: str | None = None,
    ) -> None:
        """``deadline``: a POSIX time after which no run should still be going (:meth:`fits`); ``like``: the key
        fields that make two runs alike in duration (default: the first); ``machine``: what each row records it
        ran on (default :func:`machine_name`)."""
        self.folder, self.key_fields, self.poll_s = Path(folder), key_fields, poll_s
        self.only_seeds = None if only_seeds is None else set(only_seeds)
        self.deadline, self.like = deadline, like or key_fields[:1]
        self.machine = machine or machine_name()
        check_plan(self.folder, plan, normalise)
        self.results = self.folder / "results.jsonl"
        self.runs: list[Run] = []
        self.reload()

    def key(self, row: dict[str, Any]) -> Key:
        return tuple(row[name] for name in self.key_fields if name in row)

    def row(self, key: Key) -> dict[str, Any]:
        """The finished row of ``key`` (a run's needs are done before its work starts)."""
        return next(r for r in self.rows if self.key(r) == key)

    def reload(self) -> list[dict[str, Any]]:
        """Every finished row (other processes' included)."""
        self.rows = read_records(self.results) if self.results.is_file() else []
        self.done = {self.key(r) for r in self.rows}
        return self.rows

    def run(
        self,
        key: Key,
        work: Callable[[], dict[str, Any]],
        needs: Iterable[Key] = (),
        kept: Callable[[], bool] | None = None,
    ) -> None:
        """Add a run to the study's list (done by :meth:`finish`), unless ``--only-seeds`` leaves it out.
        ``kept``: whether the files later runs read are still there (:attr:`Run.kept`)."""
        seed = dict(zip(self.key_fields, key, strict=False)).get("seed")
        if self.only_seeds is None or seed in self.only_seeds:
            self.runs.append(Run(key, work, tuple(needs), kept))

    def claim(self, key: Key) -> Claim:
        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", "-".join(str(part) for part in key))
        return Claim(self.folder / "claims" / name)

    def finish(self) -> list[dict[str, Any]]:
        """Do the runs in list order, each as soon as its needs are done and no other process holds it; wait
        (polling ``results.jsonl``) while every remaining run is held or waits; with a deadline, only the runs that
        :meth:`fits`, and stop when none does. Returns every row."""
        try:
            return self._finish()
        except KeyboardInterrupt as interrupt:  # the note shows in a traceback; the CLI may print it
            interrupt.add_note(f"study {self.folder}: {RESUME_HINT}")
            raise

    def _finish(self) -> list[dict[str, Any]]:
        self.reload()
        while True:
            todo = self.runnable()
            seen = set(self.done)  # what this look saw: try_run reloads, so compare with this
            ready = self.done - {r.key for r in todo}  # a finished run whose files are gone is not ready
            fitting = [r for r in todo if self.fits(r, todo)]
            if todo and not fitting:  # none will fit later either
                runs = f"{len(todo)} run{'s' * (len(todo) != 1)}"
                print(
                    f"study: {runs} left for a rerun; none is expected to end before the deadline "
                    f"({RESUME_HINT}, with a later --deadline or none)",
                    flush=True,
                )
            if not fitting:
                return self.reload()
            if not any(self.try_run(r) for r in fitting if all(k in ready for k in r.needs)):
                self.check_not_stuck(fitting, seen)
                time.sleep(self.poll_s)
            self.reload()

    def runnable(self) -> list[Run]:
        """The runs not done whose needs are done or can be done now: a need that ``--only-seeds`` left out
        leaves its run for a later rerun; a need that is no run of the study is a bug in the study. A finished
        run that a remaining run needs and whose files are gone is to do again."""
        todo = [r for r in self.runs if r.key not in self.done]
        while True:  # a run done again may need another whose files are gone too
            needed, keys = {k for r in todo for k in r.needs}, {r.key for r in todo}
            self.check_reproducible(needed)
            lost = [r for r in self.runs if r.key in needed and r.key not in keys and r.kept and not r.kept()]
            if not lost:
                break
            for run in lost:  # just before the first run that needs it: not sooner, it may be lost again
                todo.insert(next(i for i, r in enumerate(todo) if run.key in r.needs), run)
        while True:
            keys = {r.key for r in todo}
            missing = {k for r in todo for k in r.needs if k not in self.done and k not in keys}
            for key in missing:
                seed = dict(zip(self.key_fields, key, strict=False)).get("seed")
                if self.only_seeds is None or seed in self.only_seeds:
                    raise ConfigError(
                        f"study: a run needs {key}, which is not a run of this study (a bug in the plan)"
                    )
            kept = [r for r in todo if not missing.intersection(r.needs)]
            if len(kept) == len(todo):
                return todo
            todo = kept

    def fits(self, run: Run, todo: list[Run]) -> bool:
        """Whether ``run`` is expected to end before the deadline, with the runs of ``todo`` it waits for, and
        with those that read its files (they may not outlive the deadline: a session's machine, a job's disk).
        A run waited for counts in full even when another process is doing it: a deadline errs towards leaving runs."""
        if self.deadline is None:
            return True
        todo, group = {r.key: r for r in todo}, {run.key: run}
        while (
            True
        ):  # the needs not done, and the readers of kept files, of every run in the group, till none is new
            more = {k: todo[k] for r in group.values() for k in r.needs if k in todo}
            kept = {r.key for r in group.values() if r.kept is not None}
            more.update({r.key: r for r in todo.values() if kept.intersection(r.needs)})
            if more.keys() <= group.keys():
                return time.time() + sum(self.expected_s(key) for key in group) <= self.deadline
            group.update(more)

    def expected_s(self, key: Key) -> float:
        """The median wall time of the finished runs alike to ``key`` (``like``): of those that ran on this
        machine if any did (the machines of one study's sessions differ twofold in speed), else of all; 0 when
        none has finished (nothing to go by: the run is started)."""
        named = dict(zip(self.key_fields, key, strict=False))
        alike = [r for r in self.rows if "wall_s" in r and all(r.get(f) == named.get(f) for f in self.like)]
        here = [r for r in alike if r.get("machine") == self.machine]
        return statistics.median(r["wall_s"] for r in here or alike) if alike else 0.0

    def try_run(self, run: Run) -> bool:
        """Do ``run`` if no other process holds it (and its row is still missing); ``True`` when done here."""
        claim = self.claim(run.key)
        if not claim.take():
            return False
        try:
            self.reload()
            again = run.key in self.done
            if again and (run.kept is None or run.kept()):  # another process finished it while we looked
                return False
            start = time.perf_counter()
            row = {
                **run.work(),
                **dict(zip(self.key_fields, run.key, strict=False)),  # the key always wins
                "wall_s": time.perf_counter() - start,
                "machine": self.machine,
            }
            if again:
                self.check_reproduced(run.key, row)
                print(
                    f"[again] {run.key}: its files were gone; done again, it reproduces its row", flush=True
                )
                return True
            append_record(self.results, row)
        finally:
            claim.release()
        self.rows.append(row)
        self.done.add(run.key)
        scores = ", ".join(f"{k} {v:.2f}" for k, v in row.items() if k.endswith(("top1", "miou")))
        print(f"[{len(self.rows)}] {run.key}: {scores}", flush=True)
        return True

    def check_reproduced(self, key: Key, row: dict[str, Any]) -> None:
        """A run done again must give its recorded numbers (the later rows were computed from its first
        files); if not, it is marked, and every run that needs it stops with :meth:`check_reproducible`."""
        old = self.row(key)
        numbers = [
            k
            for k, v in old.items()
            if k != "wall_s" and all(isinstance(x, (int, float)) for x in (v, row.get(k)))
        ]
        differ = {
            k: (old[k], row[k])
            for k in numbers
            if not math.isclose(old[k], row[k], rel_tol=1e-6, abs_tol=1e-9)
        }
        if differ:
            text = (
                f"study: {key} was done again (its files were gone) and does not reproduce its recorded row "
                f"(recorded, now: {differ}); the rows that used its first files and the new files disagree: "
                "remove this run's row and the rows of the runs that need it from results.jsonl, then rerun"
            )
            write_text_atomic(self.unreproduced(key), text + "\n")
            raise ConfigError(text)

    def check_reproducible(self, keys: Iterable[Key]) -> None:
        for key in keys:
            if self.unreproduced(key).is_file():
                raise ConfigError(self.unreproduced(key).read_text().strip())

    def unreproduced(self, key: Key) -> Path:
        path = self.claim(key).path
        return path.with_name(f"{path.name}.unreproduced")

    def check_not_stuck(self, todo: list[Run], seen: set[Key]) -> None:
        """Nothing could run: fine while another process holds a run or has finished one since ``todo`` was
        built from the rows in ``seen``; a bug in the study's order otherwise."""
        self.reload()
        if self.done != seen:
            return
        for run in todo:
            claim = self.claim(run.key)
            if not claim.take():
                return  # another process is working
            claim.release()
        self.reload()  # a process may have finished a run and let go of it since the look above
        if self.done != seen:
            return
        raise ConfigError(
            f"study: {[r.key for r in todo]} wait for runs no process is doing (a bug in the study's order)"
        )


def machine_name() -> str:
    """What a run's wall time depends on besides its work: the GPU, or the CPU model, the vector instructions
    torch's kernels use (virtual machines often name every CPU alike) and torch's thread count."""
    import torch

    from .stats import cpu_model

    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"{cpu_model()} ({torch.backends.cpu.get_cpu_capability()}), {torch.get_num_threads()} threads"


def check_plan(folder: Path, plan: dict[str, Any], normalise: Callable[[dict], dict] | None = None) -> None:
    """A study folder keeps its plan (``config.yaml``): another plan there is an error, not a mix.
    ``normalise`` fills a saved plan's fields that a newer version added with their defaults."""
    folder.mkdir(parents=True, exist_ok=True)
    saved = folder / "config.yaml"
    if saved.is_file() and (normalise or (lambda d: d))(yaml.safe_load(saved.read_text())) != plan:
        raise ConfigError(f"{folder} holds a study with other settings ({saved}); use another --out")
    if not saved.is_file():  # atomic: the other processes may be reading it
        write_text_atomic(saved, yaml.safe_dump(plan, sort_keys=False))


def parse_deadline(text: str, now: datetime | None = None) -> float:
    """``--deadline``: a duration from now (``+90m``, ``+2h30m``), a time of day (``13:15``, local time: today, or
    tomorrow once past, as at(1) reads it) or a date and time (``2026-12-02T13:15``); returns a POSIX time.

    A :class:`ConfigError` naming ``--deadline`` and the value, before any run: an empty value (no deadline is
    the flag left out, not an empty one), a deadline not after now (``+0m`` would start nothing and report
    nothing) and one past the last date Python represents (``+99999999h``)."""
    now = now or datetime.now().astimezone()
    shown = repr(text if len(text) <= 40 else f"{text[:40]}...")
    if not text.strip():
        raise ConfigError(
            f"--deadline {shown}: empty; give +90m, +2h30m, HH:MM or YYYY-MM-DDTHH:MM, or leave the flag out "
            "for no deadline"
        )
    relative = re.fullmatch(r"\+(?:(\d+)h)?(?:(\d+)m)?", text.strip())
    try:
        when = _deadline_time(text, relative, now)
    except (OverflowError, ValueError):  # a date past year 9999, or more digits than int() reads
        raise ConfigError(f"--deadline {shown}: too far in the future to represent") from None
    if when is None:
        raise ConfigError(f"--deadline {shown}: expected +90m, +2h30m, HH:MM or YYYY-MM-DDTHH:MM")
    when = when if when.tzinfo else when.replace(tzinfo=now.tzinfo)  # no zone given: the local one
    if when <= now:
        past = "is now: it would start no run" if when == now else "is already past"
        raise ConfigError(f"--deadline {shown} {past} (now {now:%Y-%m-%d %H:%M})")
    return when.timestamp()


def _deadline_time(text: str, relative: re.Match | None, now: datetime) -> datetime | None:
    """The date and time ``text`` names (:func:`parse_deadline`), ``None`` for no known form; an
    ``OverflowError`` or ``ValueError`` for one out of range."""
    if relative and any(relative.groups()):
        hours, minutes = (int(g or 0) for g in relative.groups())
        return now + timedelta(hours=hours, minutes=minutes)
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        pass
    try:
        clock = datetime.strptime(text, "%H:%M").time()
    except ValueError:
        return None
    when = datetime.combine(now.date(), clock, tzinfo=now.tzinfo)
    return when + timedelta(days=1) if when <= now else when  # 00:20 said at 22:00 means tonight
