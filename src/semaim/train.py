"""The pretraining loop (Algorithm 1 of the paper, recipe of Table S1).

For every batch: compute the order (the model's own no-grad similarity pass, an EMA copy's, or the
teacher's), run both streams, Eq. 12 loss, backward, AdamW with per-iteration warmup + cosine lr,
gradient clipping, optional accumulation, mixed precision and DistributedDataParallel.

Outputs in the run folder: ``config.yaml``, ``metrics.jsonl`` (one JSON object per optimiser step),
TensorBoard events in ``tb/``, ``checkpoint-last.pt`` (atomic, every ``save_every_steps`` steps and at
every epoch end) and ``checkpoint-EPOCH.pt`` every ``save_every_epochs`` epochs. A resumed run continues
from ``checkpoint-last.pt`` exactly where it stopped, mid-epoch included, with the same losses an
uninterrupted run would have had.
"""

from __future__ import annotations

import contextlib
import copy
import math
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from .checkpoint import KIND_PRETRAIN, load_checkpoint, model_config_diff, save_atomic
from .config import PretrainConfig
from .data import AugmentedDataset, EpochSampler, PretrainTransform, collate, open_dataset, sample_seed
from .distributed import (
    DistInfo,
    all_reduce_mean,
    all_reduce_sum,
    barrier,
    cleanup,
    init_distributed,
    resolve_device,
)
from .model import SemAIM
from .optim import lr_at, param_groups, scaled_lr
from .runlog import RunLog

LAST = "checkpoint-last.pt"


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the run stopped without saving the bad state."""


class RunDirError(ValueError):
    """The output folder cannot be used as asked (non-empty without --resume/--force, nothing to resume)."""


# --------------------------------------------------------------------------- set-up helpers
def check_out_dir(out: Path, resume: bool, force: bool) -> None:
    """Refuse to overwrite a run by accident; refuse to resume a run that is not there."""
    if resume:
        if not (out / LAST).is_file():
            raise RunDirError(f"--resume: no checkpoint to resume in {out} (expected {out / LAST})")
        return
    if out.exists() and not out.is_dir():
        raise RunDirError(f"--out: {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise RunDirError(
            f"--out: {out} is not empty; pass --resume to continue the run there, "
            "--force to start a new run over it, or choose another folder"
        )


def autocast_context(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


def rng_states() -> dict[str, Any]:
    states = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    np.random.set_state(states["numpy"])
    random.setstate(states["python"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


@torch.no_grad()
def update_ema(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    for e, p in zip(ema.parameters(), model.parameters(), strict=True):
        e.lerp_(p, 1.0 - decay)


def format_seconds(seconds: float) -> str:
    seconds = int(seconds)
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


# --------------------------------------------------------------------------- the loop
def pretrain(
    cfg: PretrainConfig,
    out_dir: str | Path,
    resume: bool = False,
    force: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Pretrain a SemAIM model; returns a summary (steps, wall time, throughput, losses).

    Everything that can be wrong with the configuration, the data or the output folder is checked
    before anything is written.
    """
    cfg.validate()
    t = cfg.train
    out = Path(out_dir)
    device = resolve_device(t.device)
    info = init_distributed(device)
    if info.enabled and device.type == "cuda":
        device = resolve_device(t.device, info.local_rank)
        torch.cuda.set_device(device)
    try:
        return _pretrain(cfg, out, resume, force, progress, device, info)
    finally:
        cleanup(info)


def _pretrain(
    cfg: PretrainConfig,
    out: Path,
    resume: bool,
    force: bool,
    progress: bool,
    device: torch.device,
    info: DistInfo,
) -> dict[str, Any]:
    t, m = cfg.train, cfg.model
    if t.precision == "fp16" and device.type != "cuda":
        raise ValueError("train.precision: fp16 needs a CUDA device; use bf16 (or fp32) on the CPU")
    per_step = info.world * t.accum_steps
    if t.batch_size % per_step:
        raise ValueError(
            f"train.batch_size: {t.batch_size} is not divisible by world size {info.world} × "
            f"accum steps {t.accum_steps}"
        )
    micro = t.batch_size // per_step

    # ---- checks before anything is written
    check_out_dir(out, resume, force)
    ckpt = None
    if resume:
        ckpt = load_checkpoint(out / LAST, KIND_PRETRAIN)
        diff = model_config_diff(cfg.model, PretrainConfig.from_dict(ckpt["config"]).model)
        if diff:
            raise RunDirError(
                f"--resume: the checkpoint in {out} is of another model: "
                + ", ".join(f"{k}: checkpoint {b!r} vs now {a!r}" for k, (a, b) in diff.items())
            )
    base = open_dataset(cfg.data.data, "train", m.in_chans)
    num_images = min(len(base), cfg.data.limit or len(base))
    sampler = EpochSampler(num_images, micro, t.accum_steps, t.seed, info.rank, info.world)
    steps_per_epoch = sampler.steps_per_epoch
    total_steps = steps_per_epoch * t.epochs

    # ---- model, optimiser, state
    torch.manual_seed(t.seed)
    model = SemAIM(m).to(device)
    ema = None
    if t.ema_decay is not None and m.target == "pixels":
        ema = copy.deepcopy(model).requires_grad_(False).eval()
    base_lr = t.lr if t.lr is not None else scaled_lr(t.blr, t.batch_size)
    optimizer = torch.optim.AdamW(param_groups(model, t.weight_decay), lr=base_lr, betas=t.betas, fused=True)
    scaler = torch.amp.GradScaler(device.type, enabled=t.precision == "fp16")
    step = 0
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scaler.load_state_dict(ckpt["scaler"])
        if ema is not None and ckpt.get("ema") is not None:
            ema.load_state_dict(ckpt["ema"])
        set_rng_states(ckpt["rng"])
        step = int(ckpt["step"])
        if ckpt["steps_per_epoch"] != steps_per_epoch:
            raise RunDirError(
                f"--resume: the run had {ckpt['steps_per_epoch']} steps per epoch, now {steps_per_epoch} "
                "(data, --limit, --batch-size or world size changed); resume with the same settings"
            )
    warmup_steps = round(t.warmup_epochs * steps_per_epoch)
    forward_model = torch.compile(model) if t.compile else model
    if info.enabled:
        forward_model = DistributedDataParallel(
            forward_model,
            device_ids=[device.index] if device.type == "cuda" else None,
            broadcast_buffers=False,
        )

    transform = PretrainTransform(
        model.img_size,
        cfg.data.mean or base.mean,
        cfg.data.std or base.std,
        m.in_chans,
        cfg.data.crop_scale,
        cfg.data.hflip,
    )
    loader = DataLoader(
        AugmentedDataset(base, transform, cfg.data.skip_bad_images),
        batch_size=micro,
        sampler=sampler,
        num_workers=cfg.data.workers,
        collate_fn=collate,
        pin_memory=device.type == "cuda",
        drop_last=True,
        persistent_workers=cfg.data.workers > 0,
        prefetch_factor=4 if cfg.data.workers > 0 else None,
    )

    # ---- outputs (rank 0)
    log = None
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
        for stale in out.glob(".checkpoint-*.tmp"):  # a save that a kill interrupted
            stale.unlink()
        (out / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        log = RunLog(out, "pretrain", total_steps, step, resume, progress)

    def save(path: Path) -> None:
        state = {
            "kind": KIND_PRETRAIN,
            "config": cfg.to_dict(),
            "model": model.state_dict(),
            "ema": ema.state_dict() if ema is not None else None,
            "optimizer": optimizer.state_dict(),
            "scaler": scaler.state_dict(),
            "step": step,
            "epoch": step // steps_per_epoch,
            "steps_per_epoch": steps_per_epoch,
            "rng": rng_states(),
        }
        save_atomic(state, path)

    if info.is_main:
        print(
            f"semaim pretrain: {num_images} images from {cfg.data.data}, {steps_per_epoch} steps/epoch × "
            f"{t.epochs} epochs, batch {t.batch_size} (micro {micro} × {info.world} ranks × "
            f"{t.accum_steps} accum), lr {base_lr:.3g}, {t.precision} on {device}"
            + (f", resuming at step {step}" if resume else ""),
            file=sys.stderr,
        )

    # ---- Algorithm 1
    generator = torch.Generator(device=device)
    params = [p for p in model.parameters() if p.requires_grad]
    run_start, losses, images_seen, bad_images = time.perf_counter(), [], 0, 0
    first_step = step
    model.train()
    try:
        while step < total_steps:
            epoch, step_in_epoch = divmod(step, steps_per_epoch)
            sampler.set_epoch(epoch, step_in_epoch)
            micro_index, step_loss, step_start = 0, 0.0, time.perf_counter()
            for images, _, n_bad in loader:
                bad_images += n_bad
                if micro_index == 0:
                    lr = lr_at(step, total_steps, warmup_steps, base_lr, t.min_lr)
                    for group in optimizer.param_groups:
                        group["lr"] = lr
                images = images.to(device, non_blocking=True)
                generator.manual_seed(sample_seed(t.seed, step, micro_index * info.world + info.rank))
                last_micro = micro_index == t.accum_steps - 1
                sync = contextlib.nullcontext()
                if info.enabled and not last_micro:
                    sync = forward_model.no_sync()
                with sync:
                    with autocast_context(device, t.precision):
                        c = ema.compute_centerness(images, generator) if ema is not None else None
                        out_ = forward_model(images, centerness=c, generator=generator)
                    loss_value = all_reduce_mean(out_.loss.detach().float(), info).item()
                    if not math.isfinite(loss_value):
                        raise NonFiniteLossError(
                            f"loss is {loss_value} at step {step} (epoch {epoch}); stopped without saving. "
                            f"The last good checkpoint is {out / LAST} (if any). Try --precision bf16 or "
                            "fp32, a lower learning rate, or gradient clipping (train.clip_grad)."
                        )
                    scaler.scale(out_.loss / t.accum_steps).backward()
                step_loss += loss_value / t.accum_steps
                micro_index += 1
                if not last_micro:
                    continue

                # ---- optimiser step
                scaler.unscale_(optimizer)
                grad_norm = torch.nn.utils.clip_grad_norm_(params, t.clip_grad or math.inf).item()
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
                if ema is not None:
                    update_ema(ema, model, t.ema_decay)
                step += 1
                elapsed = time.perf_counter() - step_start
                images_per_s = t.batch_size / elapsed
                images_seen += t.batch_size
                losses.append(step_loss)
                if log is not None:
                    record = {
                        "step": step,
                        "epoch": epoch,
                        "loss": step_loss,
                        "lr": lr,
                        "grad_norm": grad_norm,
                        "images_per_s": images_per_s,
                        "time": time.time(),
                    }
                    log.log(
                        record,
                        f"epoch {epoch + 1}/{t.epochs}",
                        loss=f"{step_loss:.4f}",
                        lr=f"{lr:.2e}",
                        img_s=f"{images_per_s:.0f}",
                    )
                end_of_epoch = step % steps_per_epoch == 0
                if info.is_main and (end_of_epoch or step % t.save_every_steps == 0):
                    save(out / LAST)
                    done_epochs = step // steps_per_epoch
                    if end_of_epoch and t.save_every_epochs and done_epochs % t.save_every_epochs == 0:
                        save(out / f"checkpoint-{done_epochs:04d}.pt")
                barrier(info)
                micro_index, step_loss, step_start = 0, 0.0, time.perf_counter()
    finally:
        if log is not None:
            log.close()

    wall = time.perf_counter() - run_start
    bad_images = all_reduce_sum(bad_images, info, device)
    summary = {
        "steps": step,
        "steps_this_run": step - first_step,
        "epochs": t.epochs,
        "wall_s": wall,
        "images_per_s": images_seen / wall if wall > 0 else 0.0,
        "first_loss": losses[0] if losses else None,
        "final_loss": losses[-1] if losses else None,
        "skipped_images": bad_images,
        "checkpoint": str(out / LAST),
    }
    if info.is_main:
        loss_text = (
            f"loss {summary['first_loss']:.4f} -> {summary['final_loss']:.4f}" if losses else "no new steps"
        )
        skipped = f", skipped {bad_images} unreadable images" if bad_images else ""
        print(
            f"semaim pretrain done: {step - first_step} steps in {format_seconds(wall)} "
            f"({summary['images_per_s']:.0f} images/s), {loss_text}{skipped}; checkpoint {out / LAST}"
        )
    return summary
