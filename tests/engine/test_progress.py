"""Progress on stderr: a bar on a terminal, a plain line per interval in a log file, never a flood."""

from __future__ import annotations

import io

from semaim.cli import main
from semaim.engine import progress as progress_module
from semaim.engine.progress import Progress, clock, track
from tests.conftest import TINY_RUN


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_log_file_gets_one_plain_line_per_interval_and_the_last(monkeypatch):
    log = io.StringIO()
    monkeypatch.setattr(progress_module, "_interval", 0.0)  # a line for every update
    bar = Progress("pretrain", 10, initial=2, stream=log)
    for step in range(3, 6):
        bar.update(1, "epoch 1/2", loss=f"{1 / step:.4f}")
    bar.close()  # nothing new since the last line: no repeat
    lines = log.getvalue().splitlines()
    assert len(lines) == 3 and "\r" not in log.getvalue()
    assert lines[0].startswith("pretrain  step 3/10 (30%)  epoch 1/2  loss 0.3333  ")
    assert " step/s  elapsed " in lines[-1] and "  eta " in lines[-1]

    log = io.StringIO()
    monkeypatch.setattr(progress_module, "_interval", 3600.0)
    bar = Progress("finetune", 100, stream=log)
    for _ in range(100):
        bar.update(1, loss="0.5")
    bar.close()  # the interval never passed: only the closing line
    assert log.getvalue().count("\n") == 1 and "step 100/100 (100%)" in log.getvalue()
    assert "eta" not in log.getvalue()  # done: nothing to go


def test_a_terminal_gets_a_bar_and_disabled_progress_writes_nothing():
    screen = Terminal()
    bar = Progress("pretrain", 4, stream=screen)
    bar.update(2, loss="1.0")
    bar.close()
    assert "\r" in screen.getvalue()  # redrawn in place
    quiet = io.StringIO()
    for _ in track(range(5), "features train", enabled=False):
        pass
    bar = Progress("pretrain", 4, enabled=False, stream=quiet)
    bar.update(4)
    bar.close()
    assert quiet.getvalue() == ""
    assert (clock(50), clock(144), clock(11100)) == ("50s", "2m24s", "3h05m")


def test_pretrain_into_a_log_file_writes_a_few_lines_not_a_flood(tmp_path, capsys):
    """``semaim pretrain > log 2>&1``: the header on its own line, then one progress line per interval (here
    the default, longer than the run: the closing line only), then the summary and how to evaluate."""
    quiet = [a for a in TINY_RUN if a != "--no-progress"]
    out = tmp_path / "run"
    argv = ["pretrain", "--limit", "256", "--batch-size", "8", "--epochs", "2", *quiet]
    assert main([*argv, "--out", str(out)]) == 0  # the default interval: a few lines whatever the speed
    printed = capsys.readouterr()
    steps = 64
    assert "\r" not in printed.err and len(printed.err) <= 100 * steps
    assert (
        f"evaluate it: semaim knn --checkpoint {out / 'checkpoint-last.pt'} --data fashion-mnist"
        in printed.out
    )
    assert main([*argv, "--out", str(tmp_path / "long"), "--log-interval", "3600"]) == 0
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith("semaim pretrain: 256 images") and len(lines) == 2
    assert lines[1].startswith(f"pretrain  step {steps}/{steps} (100%)  epoch 2/2  loss ")
    assert main([*argv, "--out", str(tmp_path / "again"), "--log-interval", "0"]) == 0
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 + steps  # the header, then a line per step
    assert main([*argv, "--out", str(tmp_path / "never"), "--log-interval", "-1"]) == 2  # refused by name
    assert "--log-interval: expected seconds >= 0" in capsys.readouterr().err
