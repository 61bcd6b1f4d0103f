"""Study runs shared by shards: every run done once, by its shard, after the runs it needs."""

from __future__ import annotations

import threading
import time

import pytest

from semaim.errors import ConfigError
from semaim.study.runner import StudyRunner, parse_shard

KEYS = ("kind", "name")


def plan_of_runs(runner: StudyRunner, log: list, lock: threading.Lock) -> None:
    """Two pretrainings (slow), a chain beside the first, and fine-tunings that need them."""

    def work(name: str, seconds: float = 0.0):
        def do() -> dict:
            with lock:
                log.append(("start", name, runner.shard[0], sorted(n for _, n in runner.done)))
            time.sleep(seconds)
            return {"value": len(name)}

        return do

    for name in ("pre-a", "pre-b"):
        runner.run(("pretrain", name), work(name, 0.3))
    runner.run(("curve", "a-1"), work("a-1"), needs=[("pretrain", "pre-a")], beside=("pretrain", "pre-a"))
    for name in ("a", "b"):
        runner.run(("finetune", name), work(name), needs=[("pretrain", "pre-a"), ("pretrain", "pre-b")])


def test_two_shards_do_every_run_once_and_wait_for_what_they_need(tmp_path):
    log, lock = [], threading.Lock()
    runners = [StudyRunner(tmp_path, {"plan": 1}, KEYS, (k, 2), poll_s=0.05) for k in range(2)]
    threads = [threading.Thread(target=plan_of_runs, args=(r, log, lock)) for r in runners]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    starts = {name: (shard, seen) for _, name, shard, seen in log}
    assert sorted(starts) == ["a", "a-1", "b", "pre-a", "pre-b"]  # each run once
    assert starts["pre-a"][0] == starts["a-1"][0] == 0 and starts["pre-b"][0] == 1  # the chain stays beside
    assert starts["b"][0] == 1 and starts["a"][0] == 0
    assert {"pre-a", "pre-b"} <= set(starts["a"][1]) and {"pre-a", "pre-b"} <= set(starts["b"][1])  # waited
    assert "pre-a" in starts["a-1"][1]
    rows = StudyRunner(tmp_path, {"plan": 1}, KEYS).finish()
    assert len(rows) == 5 and {r["name"] for r in rows} == set(starts)


def test_a_rerun_skips_finished_runs_and_a_folder_keeps_its_plan(tmp_path):
    runner = StudyRunner(tmp_path, {"plan": 1}, KEYS)
    calls = []
    runner.run(("a", "x"), lambda: calls.append(1) or {})
    StudyRunner(tmp_path, {"plan": 1}, KEYS).run(("a", "x"), lambda: calls.append(2) or {})
    assert calls == [1]
    with pytest.raises(ConfigError, match="other settings"):
        StudyRunner(tmp_path, {"plan": 2}, KEYS)


@pytest.mark.parametrize("text", ["2/2", "1", "a/b", "-1/2"])
def test_bad_shards_are_refused(text):
    with pytest.raises(ConfigError, match="--shard"):
        parse_shard(text)
    assert parse_shard("1/2") == (1, 2)
