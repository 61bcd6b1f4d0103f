"""`semaim pretrain`: outputs, bad input, accumulation, non-finite loss, resume after SIGKILL, DDP."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from semaim import SemAIM
from semaim.cli import main
from semaim.config import PretrainConfig
from semaim.engine.checkpoint import load_checkpoint
from tests.conftest import TINY_RUN, make_image_folder

ROOT = Path(__file__).resolve().parents[2]


def losses(run: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    make_image_folder(root, classes=("a", "b", "c", "d"), per_class=8)
    return root


def test_pretrain_writes_everything_a_run_needs(tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(
        ["pretrain", "--out", str(out), "--limit", "32", "--batch-size", "8", "--epochs", "2", *TINY_RUN]
    )
    assert rc == 0
    assert "semaim pretrain done: 8 steps" in capsys.readouterr().out
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, 9))
    assert {"step", "epoch", "loss", "lr", "grad_norm", "images_per_s"} <= set(records[0])
    assert records[0]["epoch"] == 0 and records[-1]["epoch"] == 1
    assert list((out / "tb").glob("events.out.tfevents.*"))
    cfg = PretrainConfig.from_dict(yaml.safe_load((out / "config.yaml").read_text()))
    assert cfg.data.data == "fashion-mnist" and cfg.model.embed_dim == 32
    ckpt = load_checkpoint(out / "checkpoint-last.pt")
    assert ckpt["step"] == 8 and ckpt["epoch"] == 2
    # The checkpoint alone rebuilds the model.
    model = SemAIM(PretrainConfig.from_dict(ckpt["config"]).model)
    model.load_state_dict(ckpt["model"], strict=True)
    assert not list(out.glob(".*.tmp"))
    summary = json.loads((out / "result.json").read_text())  # written last: the run is finished
    assert summary["steps"] == 8 and summary["final_loss"] == pytest.approx(records[-1]["loss"])


def test_image_folder_with_a_corrupt_file(tmp_path, folder, capsys):
    data = tmp_path / "data"
    make_image_folder(data, per_class=8)
    (data / "cat" / "zz_broken.jpg").write_bytes(b"garbage")
    args = ["pretrain", "--data", str(data), "--batch-size", "8", "--epochs", "1", *TINY_RUN]
    assert main([*args, "--out", str(tmp_path / "a")]) == 2
    assert "zz_broken.jpg" in capsys.readouterr().err
    assert main([*args, "--out", str(tmp_path / "b"), "--skip-bad-images"]) == 0
    assert "skipped 1 unreadable images" in capsys.readouterr().out


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--config", "nope"], "'nope' does not exist"),
        (["--set", "model.widht=3"], "unknown field 'model.widht'"),
        (["--set", "train.epochs=two"], "train.epochs: expected int"),
        (["--batch-size", "9", "--accum-steps", "2"], "not divisible by train.accum_steps"),
        (["--data", "/no/such/folder"], "data folder not found: /no/such/folder"),
        (["--order", "spiral"], "--order: invalid choice: 'spiral'"),
        (["--precision", "fp16", "--device", "cpu"], "fp16 needs a CUDA device"),
    ],
)
def test_bad_input_is_a_clear_error(tmp_path, capsys, extra, message):
    rc = main(
        ["pretrain", "--out", str(tmp_path / "run"), "--limit", "16", "--batch-size", "8", *TINY_RUN, *extra]
    )
    assert rc == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()  # nothing written


def test_run_folder_is_never_clobbered(tmp_path, capsys):
    out = tmp_path / "run"
    base = ["pretrain", "--out", str(out), "--limit", "16", "--batch-size", "8", "--epochs", "1", *TINY_RUN]
    assert main(["pretrain", "--out", str(out), "--resume", *TINY_RUN]) == 2
    assert "no checkpoint to resume" in capsys.readouterr().err
    assert main(base) == 0
    before = (out / "checkpoint-last.pt").read_bytes()
    assert main(base) == 2
    assert "is not empty; pass --resume" in capsys.readouterr().err
    assert main([*base, "--resume", "--set", "model.depth=4", "--set", "model.decoder_depth=2"]) == 2
    assert "another model: depth: checkpoint 2 vs now 4" in capsys.readouterr().err
    assert (out / "checkpoint-last.pt").read_bytes() == before
    assert main([*base, "--force"]) == 0


def test_accumulation_keeps_the_effective_batch(tmp_path):
    """Batch 8 in one step or as 2 x 4 accumulated: the same gradient (Adam's first moment after step 1)."""
    firsts = []
    for accum in (1, 2):
        out = tmp_path / f"accum{accum}"
        args = ["--limit", "8", "--batch-size", "8", "--accum-steps", str(accum), "--epochs", "1"]
        args += [
            "--set",
            "model.lam=0",
        ]  # the λ noise is drawn per micro-batch; without it the order is fixed
        assert main(["pretrain", "--out", str(out), *args, "--precision", "fp32", *TINY_RUN]) == 0
        state = load_checkpoint(out / "checkpoint-last.pt")["optimizer"]["state"]
        firsts.append(torch.cat([s["exp_avg"].flatten() for _, s in sorted(state.items())]))
    torch.testing.assert_close(firsts[0], firsts[1], rtol=1e-4, atol=1e-8)


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch, capsys):
    calls = {"n": 0}
    real_loss = SemAIM.loss

    def loss_that_explodes(self, pred, target):
        calls["n"] += 1
        value = real_loss(self, pred, target)
        return value * float("nan") if calls["n"] > 3 else value

    monkeypatch.setattr(SemAIM, "loss", loss_that_explodes)
    out = tmp_path / "run"
    args = ["--limit", "32", "--batch-size", "8", "--epochs", "2", "--set", "train.save_every_steps=1"]
    assert main(["pretrain", "--out", str(out), *args, *TINY_RUN]) == 1
    err = capsys.readouterr().err
    assert "loss is nan at step 4" in err and "last good checkpoint" in err  # the 4th step went bad
    assert load_checkpoint(out / "checkpoint-last.pt")["step"] == 3
    assert len(losses(out)) == 3


def run_cli(args: list[str], **kwargs) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "semaim", *args], env=env, cwd=ROOT, **kwargs)


def test_resume_after_sigkill_mid_epoch_gives_the_same_losses(tmp_path):
    args = [
        "pretrain",
        "--data",
        "fashion-mnist",
        "--limit",
        "64",
        "--batch-size",
        "8",
        "--epochs",
        "6",
        "--set",
        "train.save_every_steps=1",
        *TINY_RUN,
        "--workers",
        "1",
    ]
    whole = tmp_path / "whole"
    assert run_cli([*args, "--out", str(whole)]).wait(timeout=300) == 0
    expected = losses(whole)
    assert len(expected) == 48

    killed = tmp_path / "killed"
    proc = run_cli([*args, "--out", str(killed)], stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while True:  # stop it once a mid-epoch checkpoint exists, then SIGKILL it
        assert time.time() < deadline and proc.poll() is None, "the run ended before it could be killed"
        metrics = killed / "metrics.jsonl"
        if metrics.is_file() and len(metrics.read_text().splitlines()) >= 12:
            proc.send_signal(signal.SIGSTOP)
            step = load_checkpoint(killed / "checkpoint-last.pt")["step"]
            if step % 8:
                break
            proc.send_signal(signal.SIGCONT)
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (whole / "result.json").is_file() and not (
        killed / "result.json"
    ).is_file()  # a cut run is unfinished
    assert run_cli([*args, "--out", str(killed), "--resume"]).wait(timeout=300) == 0
    resumed = losses(killed)
    assert len(resumed) == 48
    assert resumed == pytest.approx(expected, rel=1e-6, abs=1e-7)


def test_torchrun_two_processes_equal_one_process_on_the_same_global_batch(tmp_path):
    """DDP (gloo, 2 CPU ranks): the first step's averaged gradient equals the single-process one."""
    common = [
        "pretrain",
        "--limit",
        "8",
        "--batch-size",
        "8",
        "--epochs",
        "1",
        "--precision",
        "fp32",
        "--set",
        "model.lam=0",
        *TINY_RUN,
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    one = tmp_path / "one"
    assert run_cli([*common, "--out", str(one)]).wait(timeout=300) == 0
    two = tmp_path / "two"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517"]
    result = subprocess.run(
        [*cmd, "-m", "semaim", *common, "--out", str(two)], env=env, cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "micro 4 × 2 ranks (DDP)" in result.stderr
    grads = []
    for run in (one, two):
        state = load_checkpoint(run / "checkpoint-last.pt")["optimizer"]["state"]
        grads.append(torch.cat([s["exp_avg"].flatten() for _, s in sorted(state.items())]))
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-8)
    assert losses(one) == pytest.approx(losses(two), rel=1e-5)


def test_torchrun_with_one_process_runs_the_distributed_path(tmp_path):
    """Launched by torchrun, even one process joins a process group and trains through DDP (so a one-GPU
    machine tests the multi-GPU code path), with the losses of a plain run."""
    common = [
        "pretrain",
        "--limit",
        "16",
        "--batch-size",
        "8",
        "--epochs",
        "1",
        "--precision",
        "fp32",
        *TINY_RUN,
    ]
    plain = tmp_path / "plain"
    assert run_cli([*common, "--out", str(plain)]).wait(timeout=300) == 0
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "1", "--master_port", "29518"]
    launched = tmp_path / "launched"
    result = subprocess.run(
        [*cmd, "-m", "semaim", *common, "--out", str(launched)],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "micro 8 × 1 ranks (DDP)" in result.stderr
    assert losses(launched) == pytest.approx(losses(plain), rel=1e-6)


def test_resume_refuses_other_settings_and_accepts_a_longer_schedule(tmp_path, capsys):
    """A resumed pretraining is the same run: another lr, seed or data is refused by name (nothing written);
    more epochs, another device or precision continue it."""
    out = tmp_path / "run"
    base = ["pretrain", "--out", str(out), "--limit", "16", "--batch-size", "8", "--epochs", "1", *TINY_RUN]
    assert main(base) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    for extra, named in (
        (["--lr", "0.01"], "train.lr: None in the run, now 0.01"),
        (["--seed", "3"], "train.seed: 0 in the run, now 3"),
        (["--data", "cluttered-fashion-mnist"], "data.data: 'fashion-mnist' in the run, now"),
    ):
        assert main([*base, "--resume", *extra]) == 2
        assert named in capsys.readouterr().err
        assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    assert main([*base[: -len(TINY_RUN) - 2], "--epochs", "2", *TINY_RUN, "--resume"]) == 0
    assert len(losses(out)) == 4
