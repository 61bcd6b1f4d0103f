"""Study runs shared by processes: every run done once, after the runs it needs, a cut run taken up again."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta

import pytest

from semaim.engine.run import append_record
from semaim.errors import ConfigError
from semaim.study.runner import StudyRunner, machine_name, parse_deadline

KEYS = ("kind", "name", "seed")


def plan_of_runs(runner: StudyRunner, log: list, lock: threading.Lock, who: int) -> None:
    """Two pretrainings (slow), a curve that needs the first, fine-tunings that need both; then do them."""

    def work(name: str, seconds: float = 0.0):
        def do() -> dict:
            with lock:
                log.append((name, who, sorted(k[1] for k in runner.done)))
            time.sleep(seconds)
            return {"value": len(name)}

        return do

    for name in ("pre-a", "pre-b"):
        runner.run(("pretrain", name, 0), work(name, 0.3))
    runner.run(("curve", "a-1", 0), work("a-1"), needs=[("pretrain", "pre-a", 0)])
    for name in ("a", "b"):
        runner.run(
            ("finetune", name, 0), work(name), needs=[("pretrain", "pre-a", 0), ("pretrain", "pre-b", 0)]
        )
    runner.finish()


@pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")  # a stuck-study error
def test_two_processes_do_every_run_once_after_what_it_needs(tmp_path):
    log, lock = [], threading.Lock()
    runners = [StudyRunner(tmp_path, {"plan": 1}, KEYS, poll_s=0.05) for _ in range(2)]
    threads = [threading.Thread(target=plan_of_runs, args=(r, log, lock, i)) for i, r in enumerate(runners)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    starts = {name: (who, seen) for name, who, seen in log}
    assert sorted(starts) == ["a", "a-1", "b", "pre-a", "pre-b"] and len(log) == 5  # each run once
    assert {starts["pre-a"][0], starts["pre-b"][0]} == {0, 1}  # the two pretrainings side by side
    assert "pre-a" in starts["a-1"][1]
    assert {"pre-a", "pre-b"} <= set(starts["a"][1]) and {"pre-a", "pre-b"} <= set(starts["b"][1])  # waited
    rows = StudyRunner(tmp_path, {"plan": 1}, KEYS).finish()
    assert len(rows) == 5 and {r["name"] for r in rows} == set(starts)


def test_a_run_another_process_holds_is_taken_up_when_that_process_dies(tmp_path):
    runner = StudyRunner(tmp_path, {"plan": 1}, KEYS, poll_s=0.05)
    claim = runner.claim(("pretrain", "a", 0)).path
    claim.parent.mkdir(parents=True)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            (
                "import fcntl, os, sys, time\n"
                f"fd = os.open({str(claim)!r}, os.O_CREAT | os.O_RDWR)\n"
                "fcntl.lockf(fd, fcntl.LOCK_EX)\nprint('held', flush=True)\ntime.sleep(1.0)\nos._exit(9)  # killed mid-run\n"
            ),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "held"
    done = []
    runner.run(("pretrain", "a", 0), lambda: done.append(("a", holder.poll())) or {})
    runner.run(("pretrain", "b", 0), lambda: done.append(("b", holder.poll())) or {})
    runner.finish()
    assert done[0] == ("b", None)  # the free run first, while the other process holds "a"
    assert done[1][0] == "a" and done[1][1] == 9  # then "a", once its holder was gone
    holder.wait()
    holder.stdout.close()


def test_a_rerun_skips_finished_runs_and_a_folder_keeps_its_plan(tmp_path):
    calls = []
    runner = StudyRunner(tmp_path, {"plan": 1}, KEYS)
    runner.run(("a", "x", 0), lambda: calls.append(1) or {})
    runner.finish()
    again = StudyRunner(tmp_path, {"plan": 1}, KEYS)
    again.run(("a", "x", 0), lambda: calls.append(2) or {})
    assert len(again.finish()) == 1 and calls == [1]
    with pytest.raises(ConfigError, match="other settings"):
        StudyRunner(tmp_path, {"plan": 2}, KEYS)


def test_only_seeds_leaves_the_others_and_their_dependants_for_a_rerun(tmp_path):
    calls = []
    runner = StudyRunner(tmp_path, {"plan": 1}, KEYS, only_seeds=[1], poll_s=0.01)
    runner.run(("pretrain", "a", 0), lambda: calls.append("a0") or {})
    runner.run(("pretrain", "a", 1), lambda: calls.append("a1") or {})
    runner.run(("finetune", "a", 1), lambda: calls.append("f1") or {}, needs=[("pretrain", "a", 0)])
    runner.finish()  # does not wait for seed 0's pretraining, which no process will do now
    assert calls == ["a1"]


def test_runs_that_wait_for_each_other_are_a_bug_not_a_hang(tmp_path):
    runner = StudyRunner(tmp_path, {"plan": 1}, KEYS, poll_s=0.01)
    runner.run(("a", "x", 0), dict, needs=[("a", "y", 0)])
    runner.run(("a", "y", 0), dict, needs=[("a", "x", 0)])
    with pytest.raises(ConfigError, match="no process is doing"):
        runner.finish()


def test_a_process_that_finds_its_runs_done_by_another_returns_without_error(tmp_path):
    late = StudyRunner(tmp_path, {"plan": 1}, KEYS, poll_s=0.01)
    late.run(("a", "x", 0), dict)
    early = StudyRunner(tmp_path, {"plan": 1}, KEYS)
    early.run(("a", "x", 0), lambda: {"value": 1})
    early.finish()
    assert [r["value"] for r in late.finish()] == [1]  # its view was stale, not a bug in the study


def test_a_need_that_is_no_run_is_a_bug_and_the_key_always_wins(tmp_path):
    runner = StudyRunner(tmp_path, {"plan": 1}, KEYS)
    runner.run(("a", "x", 0), lambda: {"name": "y", "seed": 5})
    assert [(r["name"], r["seed"]) for r in runner.finish()] == [("x", 0)]
    runner.run(("a", "z", 0), dict, needs=[("a", "nowhere", 0)])
    with pytest.raises(ConfigError, match="not a run of this study"):
        runner.finish()


def test_a_finished_run_whose_files_are_gone_is_done_again_when_needed_and_must_reproduce_its_row(tmp_path):
    checkpoint, calls, loss = tmp_path / "pre.pt", [], [0.5]

    def pretrain() -> dict:
        calls.append("pre")
        checkpoint.write_text("weights")
        return {"steps": 10, "final_loss": loss[0]}

    def study(*finetunes: str) -> StudyRunner:
        runner = StudyRunner(tmp_path, {"plan": 1}, KEYS, poll_s=0.01)
        runner.run(("pretrain", "a", 0), pretrain, kept=checkpoint.is_file)
        for name in finetunes:
            runner.run(
                ("finetune", name, 0),
                lambda n=name: calls.append(n) or {"read": checkpoint.read_text()},
                needs=[("pretrain", "a", 0)],
            )
        return runner

    study("x").finish()
    checkpoint.unlink()  # the rows were kept, the run folders not
    assert len(study("x").finish()) == 2 and calls == ["pre", "x"]  # nothing left needs it: not done again
    rows = study("x", "y").finish()
    assert calls == ["pre", "x", "pre", "y"] and len(rows) == 3  # done again before "y", no second row
    assert rows[-1]["read"] == "weights"

    checkpoint.unlink()
    loss[0] = 0.6  # not the recorded row: the rows of "x" and "y" came from other files
    with pytest.raises(ConfigError, match="does not reproduce its recorded row"):
        study("x", "y", "z").finish()
    with pytest.raises(ConfigError, match="does not reproduce"):  # and stays refused, files or not
        study("x", "y", "z").finish()
    assert calls == ["pre", "x", "pre", "y", "pre"]


def test_a_lost_run_is_done_again_just_before_the_first_run_that_needs_it(tmp_path):
    kept, calls = {"pre": False}, []

    def work(name: str):
        return lambda: calls.append(name) or kept.update({name: True}) or {}

    first = StudyRunner(tmp_path, {"plan": 1}, KEYS)
    first.run(("pretrain", "pre", 0), work("pre"))
    first.finish()
    kept["pre"], calls[:] = False, []  # its files gone; later runs (say the next phase's) still need it
    runner = StudyRunner(tmp_path, {"plan": 1}, KEYS, poll_s=0.01)
    runner.run(("pretrain", "pre", 0), work("pre"), kept=lambda: kept["pre"])
    runner.run(("finetune", "other", 0), work("other"))
    runner.run(("finetune", "late", 0), work("late"), needs=[("pretrain", "pre", 0)])
    runner.finish()
    assert calls == ["other", "pre", "late"]  # not first in the list: a session cut would lose it again


def test_a_deadline_starts_only_the_runs_expected_to_end_before_it(tmp_path, capsys):
    finished = [
        {"kind": "pretrain", "name": "old", "seed": 1, "wall_s": 3000.0},  # how long each kind took
        {"kind": "finetune", "name": "old", "seed": 1, "wall_s": 500.0},
        {"kind": "finetune", "name": "old", "seed": 2, "wall_s": 700.0},
    ]
    for row in finished:
        append_record(tmp_path / "results.jsonl", {**row, "machine": "here"})
    calls = []

    def study(deadline: float | None) -> StudyRunner:
        runner = StudyRunner(tmp_path, {"plan": 1}, KEYS, poll_s=0.01, deadline=deadline, machine="here")
        work = {name: (lambda n=name: calls.append(n) or {}) for name in ("pre", "ft-pre", "ft", "eval")}
        runner.run(("pretrain", "pre", 0), work["pre"], kept=lambda: True)  # its checkpoint: read by "ft-pre"
        runner.run(("finetune", "ft-pre", 0), work["ft-pre"], needs=[("pretrain", "pre", 0)])
        runner.run(("finetune", "ft", 0), work["ft"])  # the median fine-tuning, 600 s: fits
        runner.run(("eval", "new", 0), work["eval"])  # no eval has finished: nothing to go by, started
        return runner

    assert len(study(time.time() + 3300).finish()) == 3 + 2  # the pretraining alone fits, not with its reader
    assert calls == ["ft", "eval"]
    assert "2 runs left for a rerun; none is expected to end before the deadline" in capsys.readouterr().out
    study(
        time.time() + 3700
    ).finish()  # both fit (the fine-tunings here: 500, 700 and ~0 s): the pretraining, then its reader
    assert calls == ["ft", "eval", "pre", "ft-pre"]


def test_a_deadline_counts_a_lost_run_done_again_with_the_run_that_needs_it(tmp_path):
    finished = [
        {"kind": "pretrain", "name": "pre", "seed": 0, "wall_s": 3000.0},
        {"kind": "finetune", "name": "ft", "seed": 0, "wall_s": 600.0},
    ]
    for row in finished:
        append_record(tmp_path / "results.jsonl", row)
    calls, kept = [], {"pre": False, "src": False}  # its checkpoint gone, and a new pretraining reads it

    def work(name: str):
        return lambda: calls.append(name) or kept.update({name: True}) or {}

    def study(deadline: float) -> StudyRunner:
        runner = StudyRunner(tmp_path, {"plan": 1}, KEYS, poll_s=0.01, deadline=deadline)
        runner.run(("pretrain", "pre", 0), work("pre"), kept=lambda: kept["pre"])
        runner.run(
            ("pretrain", "src", 0), work("src"), needs=[("pretrain", "pre", 0)], kept=lambda: kept["src"]
        )
        runner.run(("finetune", "late", 0), work("late"), needs=[("pretrain", "src", 0)])
        return runner

    study(time.time() + 6300).finish()
    assert calls == []  # 3000 s to do it again, 3000 s for the pretraining that reads it, 600 s to read that
    study(time.time() + 6700).finish()
    assert calls == ["pre", "src", "late"]


def test_deadlines_are_read_as_durations_times_of_day_or_dates_and_a_past_date_is_refused():
    now = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
    assert parse_deadline("+90m", now) == (now + timedelta(minutes=90)).timestamp()
    assert parse_deadline("+2h30m", now) == (now + timedelta(hours=2, minutes=30)).timestamp()
    assert (
        parse_deadline("13:15", now)
        == parse_deadline("2026-12-02T13:15", now)
        == datetime(2026, 12, 2, 13, 15, tzinfo=UTC).timestamp()
    )
    assert parse_deadline("11:59", now) == datetime(2026, 12, 3, 11, 59, tzinfo=UTC).timestamp()  # tomorrow's
    with pytest.raises(ConfigError, match="already past"):
        parse_deadline("2026-12-02T11:59", now)
    for bad in ("soon", "+", "25:00"):
        with pytest.raises(ConfigError, match=f"--deadline '{re.escape(bad)}'"):
            parse_deadline(bad, now)


@pytest.mark.parametrize(
    "bad", ["+0m", "+0h", "+0h0m", "+99999999h", "+99999999999999999999m", "+" + "9" * 5000 + "h"]
)
def test_a_deadline_that_is_no_later_than_now_or_past_any_date_is_refused(bad):
    now = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
    with pytest.raises(ConfigError, match=f"--deadline '{re.escape(bad[:40])}"):
        parse_deadline(bad, now)


@pytest.mark.parametrize("empty", ["", "  "])
def test_an_empty_deadline_is_refused_not_read_as_none(empty):
    with pytest.raises(ConfigError, match=f"--deadline {empty!r}: empty"):
        parse_deadline(empty)


def test_the_runs_a_deadline_leaves_and_an_interrupted_study_say_how_to_resume(tmp_path, capsys):
    append_record(
        tmp_path / "results.jsonl", {"kind": "pretrain", "name": "old", "seed": 1, "wall_s": 3000.0}
    )
    runner = StudyRunner(tmp_path, {"plan": 1}, KEYS, poll_s=0.01, deadline=time.time() + 60)
    runner.run(("pretrain", "new", 0), lambda: {})
    runner.finish()
    out = capsys.readouterr().out
    assert "1 run left" in out and "rerun the same study command" in out and "--resume" not in out

    def interrupted() -> dict:
        raise KeyboardInterrupt

    runner = StudyRunner(tmp_path, {"plan": 1}, KEYS, poll_s=0.01)
    runner.run(("eval", "cut", 0), interrupted)
    with pytest.raises(KeyboardInterrupt) as info:
        runner.finish()
    notes = " ".join(getattr(info.value, "__notes__", []))
    assert "rerun the same study command" in notes and "--resume" not in notes
    claim = runner.claim(("eval", "cut", 0))
    assert claim.take()  # let go of: the rerun takes it up
    claim.release()


def test_a_deadline_goes_by_the_runs_alike_on_this_machine_where_some_ran_here(tmp_path):
    finished = [
        {"kind": "pretrain", "name": "a", "seed": 0, "wall_s": 3000.0, "machine": "slow"},
        {"kind": "pretrain", "name": "b", "seed": 0, "wall_s": 3200.0},  # written before rows named one
        {"kind": "pretrain", "name": "c", "seed": 0, "wall_s": 1000.0, "machine": "fast"},
    ]
    for row in finished:
        append_record(tmp_path / "results.jsonl", row)

    def study(machine: str) -> StudyRunner:
        runner = StudyRunner(
            tmp_path, {"plan": 1}, KEYS, poll_s=0.01, deadline=time.time() + 1500, machine=machine
        )
        runner.run(("pretrain", "d", 0), lambda: {})
        return runner

    assert study("new").expected_s(("pretrain", "d", 0)) == 3000.0  # none ran here: the median of all
    assert study("slow").finish() == finished  # 3000 s on this machine: does not fit
    rows = study("fast").finish()  # 1000 s here: fits, and its row says where it ran
    assert rows[-1]["name"] == "d" and rows[-1]["machine"] == "fast"
    assert " threads" in machine_name()


def test_a_run_another_process_finishes_while_this_one_looks_is_not_taken_for_a_stuck_study(tmp_path):
    """This process saw the run missing and held; the other finished it and let go before this one tried
    it. ``try_run`` then finds its row and returns without running: the study is not stuck."""
    ours, theirs = (StudyRunner(tmp_path, {"plan": 1}, KEYS, poll_s=0.01) for _ in range(2))
    ran = []
    for runner in (ours, theirs):
        runner.run(("finetune", "b", 0), lambda: ran.append(1) or {"value": 1})
    seen = set(ours.done)  # ours looked: b missing, held by theirs
    theirs.finish()  # theirs finishes b, appends its row and lets go
    assert not ours.try_run(ours.runs[0])  # ours takes the claim, reloads and finds b done
    ours.check_not_stuck(ours.runs, seen)  # the rows changed since ours looked: not stuck
    with pytest.raises(ConfigError, match="wait for runs no process is doing"):
        ours.check_not_stuck(ours.runs, set(ours.done))  # nothing changed and nobody holds it: a bug
    assert ran == [1] and len(ours.finish()) == 1
