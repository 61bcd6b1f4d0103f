"""The short training runs: a tiny pretraining run on generated data that is SIGKILLed mid-run and resumed,
whose losses must repeat an uninterrupted run's; and the same pretraining under torchrun, followed by a DDP
step and an all-reduce on the backend torchrun's process group uses (NCCL on CUDA, gloo on the CPU).

The data is written here (Fashion-MNIST's IDX format, random pixels), so no dataset has to be on the machine.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from . import StepError

SEMAIM = (
    "import sys, torch; torch.use_deterministic_algorithms(True, warn_only=sys.argv[1] == 'warn'); "
    "from semaim.cli import main; sys.exit(main(sys.argv[2:]))"
)
"""``semaim`` in a process of its own, in the deterministic mode of the runs in this process (``strict`` or
``warn``, the first argument)."""
TOLERANCE = {"strict": 1e-6, "warn": 1e-4}
"""Relative tolerance of the loss comparison. With deterministic kernels a resumed run repeats the losses bit
for bit. Where some op has none, atomic reductions add noise of about 1e-6 that a few dozen steps grow, while
a resume that restores the wrong data order, RNG stream or optimizer state is off by 1e-3 or more."""


def tiny_data(root: Path, n_train: int, n_test: int = 32) -> str:
    """Fashion-MNIST's four IDX files with random 28×28 images (labels cycle through the 10 classes); returns
    the data spec that reads them."""
    import numpy as np

    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        for kind, array in (
            ("images-idx3", rng.integers(0, 255, (n, 28, 28))),
            ("labels-idx1", np.arange(n) % 10),
        ):
            header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
                int(d).to_bytes(4, "big") for d in array.shape
            )
            with gzip.open(root / f"{prefix}-{kind}-ubyte.gz", "wb") as f:
                f.write(header + array.astype(np.uint8).tobytes())
    return f"fashion-mnist:{root}"


def pretrain_args(p: dict[str, Any], data: str, out: Path) -> list[str]:
    """``semaim pretrain`` arguments of a tiny run: the cpu-tiny preset, ``p``'s model, sizes and device, a
    loss read (and logged) every step and a checkpoint every ``p["save_every"]`` steps."""
    args = ["pretrain", "--config", "cpu-tiny", "--data", data, "--out", str(out), "--no-progress"]
    for flag in ("limit", "batch_size", "epochs", "device", "precision", "workers"):
        args += [f"--{flag.replace('_', '-')}", str(p[flag])]
    settings = {f"model.{k}": v for k, v in p.get("model", {}).items()}
    settings |= {"train.save_every_steps": p["save_every"], "train.log_every_steps": 1}
    for key, value in settings.items():
        args += ["--set", f"{key}={value}"]
    return args


def losses(run: Path) -> list[float]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["loss"] for line in lines if line.strip()]


def _lines(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except OSError:
        return 0


@contextlib.contextmanager
def deterministic(mode: str) -> Iterator[None]:
    """Deterministic kernels for the duration (``strict``: an op without one raises; ``warn``: it warns and
    runs), then as before."""
    import torch

    saved = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
    )
    torch.use_deterministic_algorithms(True, warn_only=mode == "warn")
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])


def run_until_killed(mode: str, args: list[str], metrics: Path, after_steps: int) -> None:
    """Run ``semaim ARGS`` in a process group of its own and SIGKILL the group (its loader workers too) once
    ``metrics`` holds ``after_steps`` steps: no handler runs, whatever the run was doing at that moment."""
    proc = subprocess.Popen([sys.executable, "-c", SEMAIM, mode, *args], start_new_session=True)
    try:
        while proc.poll() is None:
            if _lines(metrics) >= after_steps:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                return
            time.sleep(0.005)
        raise StepError(
            f"the run to be killed ended first (exit {proc.returncode}), before step {after_steps}"
        )
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def compare_losses(expected: list[float], got: list[float], rel: float, eps: float = 1e-7) -> dict:
    """How the resumed run's losses compare with the uninterrupted run's, step by step."""
    diffs = [abs(a - b) for a, b in zip(expected, got, strict=False)]
    bad = [i + 1 for i, (d, e) in enumerate(zip(diffs, expected, strict=False)) if d > max(rel * abs(e), eps)]
    return {
        "steps": len(expected),
        "steps_resumed_run": len(got),
        "bitwise_equal": expected == got,
        "max_abs_diff": max(diffs, default=None),
        "tolerance": rel,
        "first_differing_step": bad[0] if bad else None,
        "equal": len(expected) == len(got) and not bad,
    }


def whole_and_resumed(p: dict[str, Any], root: Path, mode: str) -> dict[str, Any]:
    """The uninterrupted run and the killed-then-resumed one (in ``root/mode``), in deterministic ``mode``."""
    from semaim.cli import main
    from semaim.engine.checkpoint import load_checkpoint

    data = tiny_data(root / "data", p["limit"])
    whole, killed = root / mode / "whole", root / mode / "killed"
    with deterministic(mode):
        if main(pretrain_args(p, data, whole)) != 0:
            raise StepError("the uninterrupted run failed (its messages are in the log above)")
        run_until_killed(mode, pretrain_args(p, data, killed), killed / "metrics.jsonl", p["kill_after"])
        cut = {"killed_after_step": _lines(killed / "metrics.jsonl")}
        cut["resumed_from_step"] = load_checkpoint(killed / "checkpoint-last.pt")["step"]
        if main([*pretrain_args(p, data, killed), "--resume"]) != 0:
            raise StepError("the resumed run failed (its messages are in the log above)", cut)
    result = json.loads((whole / "result.json").read_text())
    return {
        **compare_losses(losses(whole), losses(killed), TOLERANCE[mode]),
        **cut,
        "deterministic": mode,
        "images_per_s": result["images_per_s"],
        "first_loss": result["first_loss"],
        "final_loss": result["final_loss"],
    }


def pretrain_resume(p: dict[str, Any], ctx: Any) -> dict[str, Any]:
    """An uninterrupted tiny run, then the same run SIGKILLed after ``p["kill_after"]`` steps and resumed with
    ``--resume``: every step's loss must equal the uninterrupted run's. Both run with deterministic kernels;
    should an op have none, the pair is run again with the nondeterministic ones and a tolerance."""
    try:
        results = whole_and_resumed(p, ctx.work / "pretrain", "strict")
    except RuntimeError as err:
        if "deterministic" not in str(err):
            raise
        print(f"no deterministic kernel for an op ({err}); again, with a tolerance", flush=True)
        results = {
            **whole_and_resumed(p, ctx.work / "pretrain", "warn"),
            "nondeterministic_op": str(err)[:300],
        }
    results.update(device=p["device"], precision=p["precision"])
    summary = (
        f"{results['steps']} steps ({p['precision']} on {p['device']}, {results['images_per_s']:.0f} images/s), "
        f"SIGKILLed after step {results['killed_after_step']}, resumed from step {results['resumed_from_step']}"
    )
    if not results["equal"]:
        raise StepError(
            f"{summary}: the losses differ from step {results['first_differing_step']} "
            f"(max |Δ| {results['max_abs_diff']:.3g}, {results['steps_resumed_run']} steps logged)",
            results,
        )
    exact = "bitwise equal" if results["bitwise_equal"] else f"equal within {results['tolerance']:g} relative"
    return {
        **results,
        "detail": f"{summary}: losses {exact} (deterministic mode: {results['deterministic']})",
    }


def ddp_probe(spec: str) -> dict[str, Any]:
    """One DDP training step of a tiny SemAIM and an all-reduce on this rank's process group (NCCL on CUDA,
    gloo on the CPU), joining one first when semaim has left none: torchrun, the backend and DDP work here."""
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from semaim import SemAIM

    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", local) if spec.startswith("cuda") else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    own = not dist.is_initialized()
    if own:
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    try:
        torch.manual_seed(0)
        model = SemAIM(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, decoder_depth=2).to(
            device
        )
        ddp = DistributedDataParallel(model, device_ids=[local] if device.type == "cuda" else None)
        loss = ddp(torch.randn(4, 3, 32, 32, device=device)).loss
        loss.backward()
        finite = all(bool(torch.isfinite(q.grad).all()) for q in model.parameters() if q.grad is not None)
        total = torch.tensor([float(dist.get_rank() + 1)], device=device)
        dist.all_reduce(total)
        world = dist.get_world_size()
        return {
            "probe_backend": dist.get_backend(),
            "probe_world_size": world,
            "probe_all_reduce_ok": total.item() == world * (world + 1) / 2,
            "probe_grads_finite": finite,
            "probe_loss": loss.item(),
        }
    finally:
        if own:
            dist.destroy_process_group()


@contextlib.contextmanager
def watch_distributed(seen: dict[str, Any]) -> Iterator[None]:
    """Note the backend of any process group that is joined, and every model wrapped in DDP, meanwhile."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    init, wrap = dist.init_process_group, DistributedDataParallel.__init__

    def noted_init(*args: Any, **kwargs: Any) -> None:
        init(*args, **kwargs)
        seen["backend"] = dist.get_backend()

    def noted_wrap(self: Any, *args: Any, **kwargs: Any) -> None:
        seen["ddp_wraps"] = seen.get("ddp_wraps", 0) + 1
        wrap(self, *args, **kwargs)

    dist.init_process_group, DistributedDataParallel.__init__ = noted_init, noted_wrap
    try:
        yield
    finally:
        dist.init_process_group, DistributedDataParallel.__init__ = init, wrap


def torchrun_worker(p: dict[str, Any], ctx: Any) -> dict[str, Any]:
    """Under ``torchrun --nproc_per_node 1``: a tiny ``semaim pretrain`` (noting whether it joined a process
    group and wrapped its model in DDP), then :func:`ddp_probe`."""
    from semaim.cli import main

    root = ctx.work / "torchrun"
    seen: dict[str, Any] = {"backend": None}
    with watch_distributed(seen):
        code = main(pretrain_args(p, tiny_data(root / "data", p["limit"]), root / "run"))
    results = {
        "world_size": int(os.environ.get("WORLD_SIZE", "1")),
        "pretrain_exit": code,
        "semaim_backend": seen["backend"],
        "semaim_ddp": seen.get("ddp_wraps", 0) > 0,
        **ddp_probe(p["device"]),
    }
    semaim = (
        f"semaim pretrain ran DDP on {results['semaim_backend']}"
        if results["semaim_ddp"]
        else f"semaim pretrain ran without DDP at world size {results['world_size']}"
    )
    results["detail"] = (
        f"{semaim} (exit {code}); DDP step and all-reduce on {results['probe_backend']}: "
        f"{'ok' if results['probe_all_reduce_ok'] and results['probe_grads_finite'] else 'FAILED'}"
    )
    if code != 0 or not (results["probe_all_reduce_ok"] and results["probe_grads_finite"]):
        raise StepError(results["detail"], results)
    return results
