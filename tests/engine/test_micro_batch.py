"""One recipe on any number and size of devices: a micro-batch cap reached by accumulation, a step that does
not fit named by its setting, and checkpoints that resume under another precision."""

from __future__ import annotations

import sys

import pytest
import torch

from semaim.cli import main
from semaim.config import PretrainConfig
from semaim.engine import pretrain as pretrain_module
from semaim.engine.checkpoint import load_checkpoint
from semaim.engine.distributed import DistInfo
from semaim.errors import ConfigError
from semaim.presets import load_preset
from tests.conftest import TINY_RUN

CPU = torch.device("cpu")


@pytest.mark.parametrize(
    ("world", "cap", "micro", "accum"),
    [(1, 256, 256, 8), (8, 256, 256, 1), (4, 256, 256, 2), (1, 300, 256, 8), (3, 256, None, None)],
)
def test_the_global_batch_is_reached_by_accumulation_under_the_cap(world, cap, micro, accum):
    cfg = load_preset("paper-vit-b16")
    cfg.train.micro_batch_size = cap
    if micro is None:  # 2048 does not split over 3 ranks
        with pytest.raises(ConfigError, match="train.micro_batch_size"):
            pretrain_module.micro_batch_size(cfg, CPU, DistInfo(world=world))
        return
    assert pretrain_module.micro_batch_size(cfg, CPU, DistInfo(world=world)) == micro
    assert cfg.train.accum_steps == accum and micro * accum * world == cfg.train.batch_size


def test_the_paper_presets_cap_their_micro_batch():
    for name in ("paper-vit-b16", "paper-vit-l16"):
        t = load_preset(name).train
        assert t.micro_batch_size is not None and t.micro_batch_size < t.batch_size


def test_a_capped_micro_batch_trains_as_explicit_accumulation(tmp_path):
    """Batch 8 with a cap of 4 is batch 8 as 2 × 4 accumulated: the same losses, step for step."""
    runs = {}
    base = [
        "--limit",
        "16",
        "--batch-size",
        "8",
        "--epochs",
        "1",
        "--precision",
        "fp32",
        "--set",
        "model.lam=0",
    ]
    for name, extra in (("accum", ["--accum-steps", "2"]), ("cap", ["--set", "train.micro_batch_size=4"])):
        out = tmp_path / name
        assert main(["pretrain", "--out", str(out), *base, *extra, *TINY_RUN]) == 0
        runs[name] = load_checkpoint(out / "checkpoint-last.pt")
    assert PretrainConfig.from_dict(runs["cap"]["config"]).train.accum_steps == 2  # recorded as it ran
    for a, b in zip(runs["accum"]["model"].values(), runs["cap"]["model"].values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_a_step_that_does_not_fit_names_the_setting_and_keeps_the_checkpoint(tmp_path, monkeypatch, capsys):
    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    out = tmp_path / "run"
    argv = ["pretrain", "--out", str(out), "--limit", "16", "--batch-size", "8", "--epochs", "1", *TINY_RUN]
    monkeypatch.setattr(pretrain_module, "forward_backward", out_of_memory)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "train.micro_batch_size: a micro-batch of 8 images does not fit" in err
    assert "--set train.micro_batch_size=4" in err and "Traceback" not in err


def test_a_checkpoint_without_scaler_state_resumes_with_a_scaler():
    """A bf16 / fp32 / CPU run saved an empty scaler; resuming it in fp16 (scaler on) starts the scaler afresh."""
    cfg = load_preset("cpu-tiny")
    for key, value in (
        ("model.embed_dim", 32),
        ("model.depth", 2),
        ("model.num_heads", 2),
        ("model.decoder_depth", 2),
    ):
        cfg.set(key, value)
    state = pretrain_module.build_state(cfg, CPU, DistInfo())
    saved = {
        "steps_per_epoch": 3,
        "model": state.model.state_dict(),
        "optimizer": state.optimizer.state_dict(),
        "scaler": state.scaler.state_dict(),  # disabled in fp32: {}
        "rng": pretrain_module.rng_states(),
        "step": 2,
    }
    assert saved["scaler"] == {}
    state.scaler = torch.amp.GradScaler("cpu", enabled=True)
    pretrain_module.restore_state(state, saved, 3)
    assert state.step == 2 and state.scaler.is_enabled()


def count_reads(monkeypatch) -> list[str]:
    """Every read of a tensor's value on the host (``.item()``, ``.tolist()``) by the training step's code (the
    engine and the model; the data pipeline's reads are of CPU tensors in the loader's workers): on a GPU each
    waits for the device."""
    reads = []
    for name in ("item", "tolist"):
        real = getattr(torch.Tensor, name)

        def counted(self, *args, _real=real, _name=name, **kwargs):
            caller = sys._getframe(1).f_code.co_filename
            if "semaim/engine" in caller or "semaim/model" in caller:
                reads.append(f"{caller}:{_name}")
            return _real(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    return reads


@pytest.mark.parametrize(("every", "reads_per_8_steps"), [(1, 8), (4, 2)])
def test_the_loop_reads_the_device_once_per_log_interval(tmp_path, monkeypatch, every, reads_per_8_steps):
    """8 steps of 2 accumulated micro-batches: one read per logged step, none per micro-batch or for the
    gradient norm alone; the losses of a run logged every step stay the run's losses."""
    argv = [
        "pretrain",
        "--out",
        str(tmp_path / "run"),
        "--limit",
        "64",
        "--batch-size",
        "8",
        "--accum-steps",
        "2",
    ]
    argv += ["--epochs", "1", "--precision", "fp32", "--set", f"train.log_every_steps={every}", *TINY_RUN]
    reads = count_reads(monkeypatch)
    assert main(argv) == 0
    assert len(reads) == reads_per_8_steps
    records = [line for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 8 // every


def test_a_nan_between_two_reads_is_caught_before_the_next_save(tmp_path, monkeypatch, capsys):
    """Reads every 4 steps, saves every 4: the 6th step's NaN stops the run at the 8th step's read, before its
    save; the step-4 checkpoint stays the last one."""
    from semaim import SemAIM

    calls = {"n": 0}
    real_loss = SemAIM.loss

    def loss_that_explodes(self, pred, target):
        calls["n"] += 1
        value = real_loss(self, pred, target)
        return value * float("nan") if calls["n"] == 6 else value

    monkeypatch.setattr(SemAIM, "loss", loss_that_explodes)
    out = tmp_path / "run"
    argv = ["pretrain", "--out", str(out), "--limit", "64", "--batch-size", "8", "--epochs", "1", *TINY_RUN]
    argv += ["--set", "train.log_every_steps=4", "--set", "train.save_every_steps=4"]
    assert main(argv) == 1
    assert "loss is nan at one of steps 5-8" in capsys.readouterr().err
    assert load_checkpoint(out / "checkpoint-last.pt")["step"] == 4


def test_random_streams_resume_on_fewer_or_more_gpus(monkeypatch):
    """A run saved with two visible GPUs resumes on one (and one saved with one on two): each GPU present
    takes its saved stream, without an IndexError for the GPU that is gone."""
    from semaim.engine import run as run_module

    states = {
        **run_module.rng_states(),
        "cuda": [torch.zeros(4, dtype=torch.uint8), torch.ones(4, dtype=torch.uint8)],
    }
    restored = {}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, index: restored.__setitem__(index, state))
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    run_module.set_rng_states(states)
    assert list(restored) == [0] and torch.equal(restored[0], states["cuda"][0])
    restored.clear()
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    run_module.set_rng_states({**states, "cuda": states["cuda"][:1]})
    assert list(restored) == [0]
