"""Run folders under abuse: a second writer, --force killed early, damaged metrics, a full disk,
an unwritable --out, bad values, and a fine-tuning loss that is not finite."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import semaim.engine.checkpoint as checkpoint_module
import semaim.engine.pretrain as pretrain_module
from semaim.cli import main
from semaim.engine.checkpoint import load_checkpoint
from semaim.engine.runlog import RunLog
from semaim.errors import RunDirError
from tests.conftest import TINY_RUN

RUN = ["--limit", "32", "--batch-size", "8", "--epochs", "1", *TINY_RUN, "--precision", "fp32"]


def pretrain(out, *extra: str) -> int:
    return main(["pretrain", "--out", str(out), *RUN, *extra])


HOLD = """
import sys, time
from pathlib import Path
from semaim.engine.run import RunFolder
RunFolder(Path(sys.argv[1]), resume=sys.argv[2] == "resume").__enter__()
print("holding", flush=True)
time.sleep(120)
"""


@contextlib.contextmanager
def held_by_another_process(out, resume: bool = False):
    """A process that holds ``out`` as a run in progress would, until the block ends (then SIGKILL)."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src")}
    args = [sys.executable, "-c", HOLD, str(out), "resume" if resume else "new"]
    with subprocess.Popen(
        args, stdout=subprocess.PIPE, text=True, env=env
    ) as holder:  # closes its pipe, waits
        try:
            assert holder.stdout.readline().strip() == "holding"
            yield holder.pid
        finally:
            holder.kill()


def test_a_second_writer_is_refused_while_the_first_holds_the_folder(tmp_path, capsys):
    out = tmp_path / "run"
    with held_by_another_process(out) as pid:
        assert pretrain(out) == 2
        assert f"is in use by process {pid}" in capsys.readouterr().err
        assert pretrain(out, "--resume") == 2
        assert not (out / "config.yaml").exists()
    assert pretrain(out) == 0  # the holder was killed: its stale lock file does not block a new run
    with held_by_another_process(out, resume=True):
        assert pretrain(out, "--resume") == 2
        assert "is in use" in capsys.readouterr().err
    assert pretrain(out, "--resume", "--epochs", "2") == 0
    assert not (out / ".semaim.lock").exists()  # a run that ends releases and removes its lock


def test_a_run_that_fails_its_checks_leaves_no_folder(tmp_path):
    out = tmp_path / "new"
    assert pretrain(out, "--data", str(tmp_path / "missing")) == 2
    assert not out.exists()


def test_force_clears_the_old_run_before_its_first_save(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    assert pretrain(out) == 0
    (out / "notes.txt").write_text("mine")

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(pretrain_module, "save_checkpoint", killed)
    assert pretrain(out, "--force", "--seed", "5") == 130
    assert not (out / "checkpoint-last.pt").exists()  # the old run's checkpoint is gone
    assert (out / "notes.txt").read_text() == "mine"  # a file that is not the run's stays
    monkeypatch.undo()
    assert pretrain(out, "--resume") == 2  # nothing to resume, instead of the old run under the new config
    assert "no checkpoint to resume" in capsys.readouterr().err


def test_resume_drops_an_incomplete_last_metrics_line_and_names_a_damaged_one(tmp_path, capsys):
    out = tmp_path / "run"
    steps = ["--set", "train.save_every_steps=1"]
    assert pretrain(out, *steps) == 0
    metrics = out / "metrics.jsonl"
    metrics.write_text(metrics.read_text() + '{"step": 5, "lo')  # a kill in mid-write
    assert pretrain(out, *steps, "--resume", "--epochs", "2") == 0
    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, 9))
    lines = metrics.read_text().splitlines()
    metrics.write_text("\n".join([lines[0], "garbage", *lines[1:]]) + "\n")
    assert pretrain(out, *steps, "--resume", "--epochs", "3") == 2
    assert f"{metrics}, line 2: not a JSON record" in capsys.readouterr().err


def test_a_full_disk_keeps_the_previous_checkpoint_and_says_so(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    real_save, calls = torch.save, {"n": 0}

    def save_until_full(obj, f, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(checkpoint_module.torch, "save", save_until_full)
    assert pretrain(out, "--set", "train.save_every_steps=1") == 2
    err = capsys.readouterr().err
    assert "disk full while writing" in err and "checkpoint-last.pt is intact" in err
    monkeypatch.undo()
    assert load_checkpoint(out / "checkpoint-last.pt")["step"] == 2
    assert not list(out.glob(".*.tmp"))


def test_a_full_disk_while_logging_metrics_is_a_clear_error(tmp_path):
    log = RunLog(tmp_path, "pretrain", total=1, step=0, resume=False, progress=False)
    log.file.close()
    log.file = open("/dev/full", "w")  # noqa: SIM115  (every write fails with ENOSPC)
    with pytest.raises(RunDirError, match="disk full while writing .*metrics.jsonl"):
        log.log({"step": 1, "loss": 0.5})
    log.close()


def test_an_unwritable_out_is_a_clear_error(tmp_path, capsys):
    assert pretrain("/proc/semaim-run") == 2
    assert "--out: cannot write to /proc/semaim-run" in capsys.readouterr().err


@pytest.mark.parametrize(
    "setting, field",
    [
        ("train.clip_grad=-1", "train.clip_grad"),
        ("train.save_every_steps=0", "train.save_every_steps"),
        ("train.warmup_epochs=-1", "train.warmup_epochs"),
        ("train.lr=0", "train.lr"),
        ("data.crop_scale=[0.9,0.2]", "data.crop_scale"),
        ("data.mean=[0.5,0.5]", "data.mean"),
        ("model.lam=.nan", "model.lam"),
        ("model.img_size=0", "model.img_size"),
        ("model.img_size=-32", "model.img_size"),
        ("train.device=tpu", "device"),
        ("train.precision=fp8", "train.precision"),
    ],
)
def test_impossible_values_exit_2_naming_the_field(tmp_path, capsys, setting, field):
    out = tmp_path / "run"
    assert pretrain(out, "--set", setting) == 2
    assert f"{field}: expected" in capsys.readouterr().err
    assert not out.exists()


def test_a_bug_keeps_its_traceback(monkeypatch):
    import semaim.cli as cli

    def buggy(args):
        raise ValueError("an internal bug, not the user's input")

    monkeypatch.setitem(cli.COMMANDS, "export", buggy)
    with pytest.raises(ValueError, match="internal bug"):
        main(["export", "--checkpoint", "x.pt"])


def test_the_same_process_cannot_enter_a_folder_twice(tmp_path):
    from semaim.engine.run import RunFolder

    with RunFolder(tmp_path / "run"), pytest.raises(RunDirError, match="in use by this process"):
        RunFolder(tmp_path / "run").__enter__()
    with RunFolder(tmp_path / "run"):  # released on exit
        pass


def test_a_failed_run_removes_every_folder_it_created(tmp_path):
    out = tmp_path / "a" / "b" / "run"
    assert pretrain(out, "--data", str(tmp_path / "missing")) == 2
    assert not (tmp_path / "a").exists()


def test_force_never_deletes_the_runs_own_input(tmp_path, capsys):
    out = tmp_path / "run"
    assert pretrain(out) == 0
    checkpoint = out / "checkpoint-last.pt"
    args = ["finetune", "--checkpoint", str(checkpoint), "--out", str(out), "--force", "--no-progress"]
    assert main(args) == 2
    assert "is an input of this run" in capsys.readouterr().err
    assert load_checkpoint(checkpoint)["step"] == 4  # untouched


def test_a_full_disk_while_writing_the_config_keeps_the_old_one(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    assert pretrain(out) == 0
    before = (out / "config.yaml").read_text()
    real = Path.write_text

    def full(self, *args, **kwargs):
        if self.name.endswith(".tmp"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", full)
    assert pretrain(out, "--resume", "--epochs", "2") == 2
    assert "disk full while writing" in capsys.readouterr().err
    monkeypatch.undo()
    assert (out / "config.yaml").read_text() == before


def test_a_corrupt_image_read_by_a_worker_is_one_line(tmp_path, capsys):
    from tests.conftest import make_image_folder

    data = tmp_path / "data"
    make_image_folder(data, per_class=8)
    (data / "cat" / "zz_broken.png").write_bytes(b"garbage")
    assert pretrain(tmp_path / "run", "--data", str(data), "--workers", "1") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert (
        err[-1].startswith("semaim pretrain: error: corrupt or unreadable image:")
        and "Traceback" not in err[-1]
    )
    assert not any("Traceback" in line for line in err)


def test_torchrun_ranks_stop_together_when_the_folder_is_refused(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("not empty")
    env = {
        **os.environ,
        "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src"),
        "OMP_NUM_THREADS": "1",
    }
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        "29519",
        "-m",
        "semaim",
        "pretrain",
        "--out",
        str(out),
        *RUN,
    ]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert (
        result.returncode != 0
    )  # torchrun reports the children's exit 2 with a launcher traceback of its own
    assert result.stderr.count("semaim pretrain: error: --out:") == 2  # both ranks, one line each
    assert "semaim/" not in "".join(
        line for line in result.stderr.splitlines() if line.lstrip().startswith("File")
    )


def test_torchrun_ranks_stop_together_when_rank_0_cannot_start_the_run(tmp_path):
    """Only rank 0 writes the run's files; when it cannot (here: --force would delete the order source, an
    input, in --out), every rank stops with the reason instead of the others waiting in DDP for ever."""
    source = tmp_path / "source"
    assert pretrain(source) == 0
    env = {
        **os.environ,
        "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src"),
        "OMP_NUM_THREADS": "1",
    }
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29520"]
    cmd += ["-m", "semaim", "pretrain", "--out", str(source), "--force", *RUN]
    cmd += ["--set", f"train.order_source={source / 'checkpoint-last.pt'}"]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode != 0
    assert "semaim pretrain: error:" in result.stderr and "rank 0" in result.stderr  # the other rank says so
    assert (source / "checkpoint-last.pt").is_file()
