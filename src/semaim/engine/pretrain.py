"""The pretraining loop (Algorithm 1 of the paper, recipe of Table S1).

For every batch: compute the order (the model's own no-grad similarity pass, an EMA copy's, or the
teacher's), run both streams, Eq. 12 loss, backward, AdamW with per-iteration warmup + cosine lr,
gradient clipping, optional accumulation, mixed precision and DistributedDataParallel.

Outputs in the run folder: ``config.yaml``, ``metrics.jsonl`` (one JSON object per optimizer step),
TensorBoard events in ``tb/``, ``checkpoint-last.pt`` (atomic, every ``save_every_steps`` steps and at
every epoch end) and ``checkpoint-EPOCH.pt`` every ``save_every_epochs`` epochs. A resumed run continues
from ``checkpoint-last.pt`` exactly where it stopped, mid-epoch included, with the same losses an
uninterrupted run would have had. The folder is locked for the run's life (:class:`.run.RunFolder`).

(docs/design.md §1: Algorithm 1 → :func:`train`, :func:`forward_backward`, :func:`optimizer_step`)
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from ..config import ModelConfig, PretrainConfig, to_2tuple
from ..data import open_dataset
from ..data.sampler import AugmentedDataset, EpochSampler, collate, sample_seed
from ..data.transforms import Normalize, PretrainTransform
from ..encoder import load_encoder, random_encoder
from ..errors import ConfigError, DeviceMemoryError, RunDirError
from ..model.orders import NEEDS_MAP, encoder_map
from ..model.semaim import SemAIM
from .checkpoint import KIND_PRETRAIN, load_checkpoint, model_config_diff, save_atomic
from .distributed import (
    DistInfo,
    all_agree,
    all_reduce_sum,
    barrier,
    cleanup,
    init_distributed,
    resolve_device,
)
from .optim import lr_at, param_groups, scaled_lr
from .run import (
    LAST,
    RunFolder,
    autocast_context,
    check_finite,
    format_seconds,
    resolve_precision,
    rng_states,
    set_rng_states,
    write_text_atomic,
)
from .runlog import Interval, RunLog


@dataclass
class TrainState:
    """What the loop updates and a checkpoint stores: model, EMA copy, optimizer, scaler, step."""

    model: SemAIM
    forward_model: torch.nn.Module  # the model as called: compiled and/or wrapped in DDP
    ema: SemAIM | None
    order_source: torch.nn.Module | None  # a frozen encoder whose map gives the order (train.order_source)
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    base_lr: float
    precision: str  # fp32 | bf16 | fp16: train.precision with "auto" resolved for the device
    step: int = 0
    normalize: Callable[[torch.Tensor], torch.Tensor] = (
        torch.nn.Identity()
    )  # the loader's batches -> model input


# --------------------------------------------------------------------------- entry point
def pretrain(
    cfg: PretrainConfig,
    out_dir: str | Path,
    resume: bool = False,
    force: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Pretrain a SemAIM model; returns a summary (steps, wall time, throughput, losses), also written to the
    run folder's ``result.json`` once the run is finished.

    Everything that can be wrong with the configuration, the data or the output folder is checked
    before anything is written; ``--force`` clears the old run's files only once all checks passed.
    """
    cfg.validate()
    device = resolve_device(cfg.train.device)
    info = init_distributed(device)
    if info.enabled and device.type == "cuda":
        device = resolve_device(cfg.train.device, info.local_rank)
        torch.cuda.set_device(device)
    try:
        with run_folder(Path(out_dir), resume, force, info, device) as folder:
            return _pretrain(cfg, folder, progress, device, info)
    finally:
        cleanup(info)


@contextlib.contextmanager
def run_folder(
    out: Path, resume: bool, force: bool, info: DistInfo, device: torch.device
) -> Iterator[RunFolder]:
    """The run folder on every rank: rank 0 locks it, every rank checks it, and all ranks go on or stop
    together (a rank left alone in DDP set-up would fail with a traceback or hang)."""
    folder, error = RunFolder(out, resume, force, lock=info.is_main), None
    try:
        folder.__enter__()
    except RunDirError as err:
        error = err
    if not all_agree(error is None, info, device):
        if error is None:
            folder.__exit__()
            raise RunDirError(f"--out: another rank cannot use {out}; rank 0 says why")
        raise error
    try:
        yield folder
    finally:
        folder.__exit__()


def _pretrain(
    cfg: PretrainConfig, folder: RunFolder, progress: bool, device: torch.device, info: DistInfo
) -> dict[str, Any]:
    t = cfg.train
    micro = micro_batch_size(cfg, device, info)
    ckpt = resume_checkpoint(folder.path, cfg) if folder.resume else None
    base = open_dataset(cfg.data.data, "train", cfg.model.in_chans)
    num_images = min(len(base), cfg.data.limit or len(base))
    sampler = EpochSampler(num_images, micro, t.accum_steps, t.seed, info.rank, info.world)
    state = build_state(cfg, device, info)
    if ckpt is not None:
        restore_state(state, ckpt, sampler.steps_per_epoch)
    loader, state.normalize = build_loader(cfg, base, sampler, micro, device, state.model.img_size)
    log, error = None, None
    if info.is_main:
        try:
            log = start_run(
                cfg,
                state,
                folder,
                num_images=num_images,
                sampler=sampler,
                micro=micro,
                info=info,
                device=device,
                progress=progress,
            )
        except Exception as err:  # the other ranks must hear of it, or they wait in DDP forever
            error = err
    if not all_agree(error is None, info, device):
        if error is not None:
            raise error
        raise RunDirError(f"--out: rank 0 could not start the run in {folder.path}; rank 0 says why")
    first_step, start = state.step, time.perf_counter()
    try:
        losses, bad_images = train(
            cfg, state, loader=loader, sampler=sampler, out=folder.path, log=log, device=device, info=info
        )
    finally:
        if log is not None:
            log.close()
    bad_images = all_reduce_sum(bad_images, info, device)
    summary = summarise(
        cfg,
        step=state.step,
        first_step=first_step,
        wall=time.perf_counter() - start,
        losses=losses,
        bad_images=bad_images,
        checkpoint=folder.path / LAST,
        verbose=info.is_main,
    )
    if info.is_main:  # written last: a folder with result.json holds a finished run (a study relies on it)
        write_text_atomic(folder.path / "result.json", json.dumps(summary, indent=2) + "\n")
    return summary


# --------------------------------------------------------------------------- building
def micro_batch_size(cfg: PretrainConfig, device: torch.device, info: DistInfo) -> int:
    """Images per rank per forward. The global batch is ranks × accumulation steps × micro-batch; with
    ``train.micro_batch_size`` set, the accumulation steps grow (``cfg.train.accum_steps`` is set to them) until
    a micro-batch fits under it, so one recipe reaches its global batch on any number of devices."""
    t = cfg.train
    if t.precision == "fp16" and device.type != "cuda":
        raise ConfigError("train.precision: fp16 needs a CUDA device; use bf16 (or fp32) on the CPU")
    accum = t.accum_steps
    if t.micro_batch_size is not None:  # it decides the accumulation steps, whatever accum_steps says
        fits = [
            a
            for a in range(1, t.batch_size // info.world + 1)
            if t.batch_size % (info.world * a) == 0 and t.batch_size // (info.world * a) <= t.micro_batch_size
        ]
        if not fits:
            raise ConfigError(
                f"train.micro_batch_size: no whole number of accumulation steps splits batch {t.batch_size} over "
                f"{info.world} ranks into micro-batches of at most {t.micro_batch_size}"
            )
        accum = t.accum_steps = fits[0]
    per_step = info.world * accum
    if t.batch_size % per_step:
        raise ConfigError(
            f"train.batch_size: {t.batch_size} is not divisible by world size {info.world} × "
            f"accum steps {accum}"
        )
    return t.batch_size // per_step


RESUMABLE = frozenset(
    {"train.epochs", "train.device", "train.precision", "train.accum_steps", "train.micro_batch_size"}
    | {"train.save_every_steps", "train.save_every_epochs", "train.keep_steps", "train.log_every_steps"}
    | {"train.compile", "data.workers"}
)
"""What a resumed pretraining may change: where and how fast the same steps run, how often it saves and logs,
and how many epochs it runs for (a longer schedule continues the same run). Anything else would make the
saved steps and the next ones two different runs."""


def start_run(
    cfg: PretrainConfig,
    state: TrainState,
    folder: RunFolder,
    *,
    num_images: int,
    sampler: EpochSampler,
    micro: int,
    info: DistInfo,
    device: torch.device,
    progress: bool,
) -> RunLog:
    """Rank 0: write the run's config into its folder, print the header, open the run log."""
    t = cfg.train
    folder.start(cfg.to_dict(), inputs=[cfg.model.teacher_path, t.order_source])
    print(
        f"semaim pretrain: {num_images} images from {cfg.data.data}, {sampler.steps_per_epoch} steps/epoch "
        f"× {t.epochs} epochs, batch {t.batch_size} (micro {micro} × {info.world} ranks{' (DDP)' * info.enabled} × "
        f"{t.accum_steps} accum), lr {state.base_lr:.3g}, {state.precision} on {device}"
        + (f", resuming at step {state.step}" if folder.resume else ""),
        file=sys.stderr,
    )
    total = sampler.steps_per_epoch * t.epochs
    return RunLog(
        folder.path, "pretrain", total=total, step=state.step, resume=folder.resume, progress=progress
    )


def resume_checkpoint(out: Path, cfg: PretrainConfig) -> dict[str, Any]:
    """The run's last checkpoint, refused when the run it continues had other settings than these (the model,
    the data, the optimization), each named with its value in the run and now."""
    ckpt = load_checkpoint(out / LAST, KIND_PRETRAIN)
    diff = model_config_diff(cfg.model, PretrainConfig.from_dict(ckpt["config"]).model)
    if diff:
        raise RunDirError(
            f"--resume: the checkpoint in {out} is of another model: "
            + ", ".join(f"{k}: checkpoint {b!r} vs now {a!r}" for k, (a, b) in diff.items())
        )
    saved, now = PretrainConfig.from_dict(ckpt["config"]).to_dict(), cfg.to_dict()
    changed = [
        f"{section}.{key}: {saved[section][key]!r} in the run, now {value!r}"
        for section in ("data", "train")
        for key, value in now[section].items()
        if f"{section}.{key}" not in RESUMABLE and key in saved[section] and saved[section][key] != value
    ]
    if changed:
        raise RunDirError(
            f"--resume: {out} is another run's continuation with these settings: "
            + "; ".join(changed)
            + ". Resume with the run's own settings, or start afresh into a new --out (or --force)"
        )
    return ckpt


def build_state(cfg: PretrainConfig, device: torch.device, info: DistInfo) -> TrainState:
    """The model (seeded init), its EMA copy, AdamW without decay on norms/biases/cls/pos, the scaler."""
    t = cfg.train
    torch.manual_seed(t.seed)
    model = SemAIM(cfg.model).to(device)
    if t.encoder_init_depth not in (None, cfg.model.decoder_depth):  # pair a decoder-depth ablation's init
        like = ModelConfig.from_dict({**cfg.model.to_dict(), "decoder_depth": t.encoder_init_depth})
        encoder = random_encoder(like, t.seed).state_dict()
        if set(encoder) != set(model.encoder_state_dict()):  # a bug, not a user's input: name it
            raise RuntimeError(
                f"train.encoder_init_depth: encoder keys differ: {set(encoder) ^ set(model.encoder_state_dict())}"
            )
        model.load_state_dict(encoder, strict=False)  # the decoder keeps this model's own initialisation
    ema = None
    if t.ema_decay is not None and cfg.model.target == "pixels":  # with a teacher, the teacher orders
        ema = copy.deepcopy(model).requires_grad_(False).eval()
    base_lr = t.lr if t.lr is not None else scaled_lr(t.blr, t.batch_size)
    groups = param_groups(model, t.weight_decay)
    optimizer = torch.optim.AdamW(groups, lr=base_lr, betas=t.betas, fused=True)
    precision = resolve_precision(t.precision, device)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    forward_model = torch.compile(model) if t.compile else model
    if info.enabled:
        forward_model = DistributedDataParallel(
            forward_model,
            device_ids=[device.index] if device.type == "cuda" else None,
            broadcast_buffers=False,
        )
    order_source = load_order_source(t.order_source, cfg.model, device) if t.order_source else None
    return TrainState(model, forward_model, ema, order_source, optimizer, scaler, base_lr, precision)


def load_order_source(path: str, model: ModelConfig, device: torch.device) -> torch.nn.Module:
    """``train.order_source``: a frozen encoder that reads the model's input (size, channels, patch grid);
    it gives the order only."""
    vit = load_encoder(path)
    source = (
        tuple(vit.patch_embed.img_size),
        vit.patch_embed.proj.in_channels,
        tuple(vit.patch_embed.grid_size),
    )
    wanted = (to_2tuple(model.img_size, "img_size"), model.in_chans, tuple(model.grid))
    if source != wanted or not vit.has_class_token:
        raise ConfigError(
            f"train.order_source: {path} is an encoder of {source[0][0]}x{source[0][1]} px, {source[1]} channels, "
            f"a {source[2][0]}x{source[2][1]} patch grid{'' if vit.has_class_token else ', no cls token'}; the "
            f"model reads {wanted[0][0]}x{wanted[0][1]} px, {wanted[1]} channels, a {wanted[2][0]}x{wanted[2][1]} grid"
        )
    return vit.requires_grad_(False).eval().to(device)


def restore_state(state: TrainState, ckpt: dict[str, Any], steps_per_epoch: int) -> None:
    """Load a checkpoint into a freshly built state, RNG streams included (exact resume)."""
    if ckpt["steps_per_epoch"] != steps_per_epoch:
        raise RunDirError(
            f"--resume: the run had {ckpt['steps_per_epoch']} steps per epoch, now {steps_per_epoch} "
            "(data, --limit, --batch-size or world size changed); resume with the same settings"
        )
    state.model.load_state_dict(ckpt["model"])
    state.optimizer.load_state_dict(ckpt["optimizer"])
    if state.scaler.is_enabled() and ckpt["scaler"]:  # a bf16/fp32 run's scaler state is empty: start afresh
        state.scaler.load_state_dict(ckpt["scaler"])
    if state.ema is not None and ckpt.get("ema") is not None:
        state.ema.load_state_dict(ckpt["ema"])
    set_rng_states(ckpt["rng"])
    state.step = int(ckpt["step"])


def build_loader(
    cfg: PretrainConfig,
    base: Any,
    sampler: EpochSampler,
    micro: int,
    device: torch.device,
    img_size: tuple[int, int],
) -> tuple[DataLoader, Normalize]:
    """Table S1's augmentation over the sampler's shard, seeded per sample; the batches leave the workers as
    uint8 and the returned :class:`Normalize` finishes them on the device."""
    d = cfg.data
    transform = PretrainTransform(
        img_size,
        d.mean or base.mean,
        d.std or base.std,
        cfg.model.in_chans,
        d.crop_scale,
        d.hflip,
        normalize=False,
    )
    loader = DataLoader(
        AugmentedDataset(base, transform, d.skip_bad_images),
        batch_size=micro,
        sampler=sampler,
        num_workers=d.workers,
        collate_fn=collate,
        pin_memory=device.type == "cuda",
        drop_last=True,
        persistent_workers=d.workers > 0,
        prefetch_factor=2 if d.workers > 0 else None,  # batches in flight per worker: shared memory is finite
    )
    return loader, Normalize(transform)


def save_checkpoint(path: Path, cfg: PretrainConfig, state: TrainState, steps_per_epoch: int) -> None:
    """One dict that is enough to resume the run or to rebuild the model (nanoGPT's rule)."""
    checkpoint = {
        "kind": KIND_PRETRAIN,
        "config": cfg.to_dict(),
        "model": state.model.state_dict(),
        "ema": state.ema.state_dict() if state.ema is not None else None,
        "optimizer": state.optimizer.state_dict(),
        "scaler": state.scaler.state_dict(),
        "step": state.step,
        "epoch": state.step // steps_per_epoch,
        "steps_per_epoch": steps_per_epoch,
        "rng": rng_states(),
    }
    save_atomic(checkpoint, path)


# --------------------------------------------------------------------------- Algorithm 1
def optimizer_steps(loader: Iterable, accum_steps: int) -> Iterator[list]:
    """The loader's micro-batches, ``accum_steps`` at a time (one optimizer step each)."""
    group = []
    for batch in loader:
        group.append(batch)
        if len(group) == accum_steps:
            yield group
            group = []


def forward_backward(
    cfg: PretrainConfig,
    state: TrainState,
    *,
    micro_batches: list,
    generator: torch.Generator,
    device: torch.device,
    info: DistInfo,
    out: Path,
) -> float:
    """Order (Eq. 2-6), both streams (Eq. 7-11), Eq. 12 loss and backward for one step's micro-batches.

    Gradients of the micro-batches add up (each loss divided by their number); DDP synchronises only on
    the last one. Returns this rank's step loss as a 0-d tensor on the device: reading it waits for the GPU,
    so the loop reads it only every ``train.log_every_steps`` steps (:func:`train`).
    """
    t = cfg.train
    step_loss = torch.zeros((), device=device)
    for i, (images, _, _) in enumerate(micro_batches):
        images = state.normalize(images.to(device, non_blocking=True))
        # The order's noise depends on (seed, step, micro-batch, rank) only: resumes repeat it.
        generator.manual_seed(sample_seed(t.seed, state.step, i * info.world + info.rank))
        last = i == len(micro_batches) - 1
        sync = state.forward_model.no_sync() if info.enabled and not last else contextlib.nullcontext()
        with sync:
            with autocast_context(device, state.precision):
                centerness = order_from_source(cfg, state, images, generator)
                output = state.forward_model(images, centerness=centerness, generator=generator)
            state.scaler.scale(output.loss / t.accum_steps).backward()
        step_loss += output.loss.detach().float() / t.accum_steps
    return step_loss


def order_from_source(
    cfg: PretrainConfig, state: TrainState, images: torch.Tensor, generator: torch.Generator
) -> torch.Tensor | None:
    """Centerness from the EMA copy's or the order source's map; ``None``: the model orders itself."""
    source = state.ema if state.ema is not None else state.order_source
    if source is None or cfg.model.order not in NEEDS_MAP:
        return None
    return state.model.compute_centerness(
        images, generator, encoder_map(source, images, cfg.model.center_map)
    )


def optimizer_step(cfg: PretrainConfig, state: TrainState) -> torch.Tensor:
    """Unscale, clip, AdamW step, EMA update. Returns the gradient norm before clipping (a device tensor)."""
    t = cfg.train
    state.scaler.unscale_(state.optimizer)
    params = [p for p in state.model.parameters() if p.requires_grad]
    grad_norm = torch.nn.utils.clip_grad_norm_(params, t.clip_grad or math.inf)
    state.scaler.step(state.optimizer)
    state.scaler.update()
    state.optimizer.zero_grad(set_to_none=True)
    if state.ema is not None:
        with torch.no_grad():  # one fused update for every tensor, not a kernel launch per parameter
            torch._foreach_lerp_(
                list(state.ema.parameters()), list(state.model.parameters()), 1.0 - t.ema_decay
            )
    state.step += 1
    return grad_norm


def train(
    cfg: PretrainConfig,
    state: TrainState,
    *,
    loader: DataLoader,
    sampler: EpochSampler,
    out: Path,
    log: RunLog | None,
    device: torch.device,
    info: DistInfo,
) -> tuple[list[float], int]:
    """Algorithm 1 from ``state.step`` to the last step; saves as configured. ``-> (losses, bad images)``.

    The loss and gradient norm stay on the device between two reads, every ``train.log_every_steps`` steps and
    before every save: the host waits for the device that often, not every step. A non-finite loss is caught
    at the next read, before anything is saved, so the last checkpoint on disk is a good one.
    """
    t = cfg.train
    steps_per_epoch = sampler.steps_per_epoch
    total, warmup = steps_per_epoch * t.epochs, round(t.warmup_epochs * steps_per_epoch)
    generator = torch.Generator(device=device)
    losses, bad_images = [], 0
    interval = Interval(device)
    state.model.train()
    while state.step < total:
        epoch, step_in_epoch = divmod(state.step, steps_per_epoch)
        sampler.set_epoch(epoch, step_in_epoch)
        for micro_batches in optimizer_steps(loader, t.accum_steps):
            lr = lr_at(state.step, total, warmup, state.base_lr, t.min_lr)
            for group in state.optimizer.param_groups:
                group["lr"] = lr
            bad_images += sum(n_bad for _, _, n_bad in micro_batches)
            try:
                loss = forward_backward(
                    cfg,
                    state,
                    micro_batches=micro_batches,
                    generator=generator,
                    device=device,
                    info=info,
                    out=out,
                )
            # torch.cuda.OutOfMemoryError: torch.OutOfMemoryError since 2.5, under the name torch 2.4 has too
            except torch.cuda.OutOfMemoryError as err:
                micro = len(micro_batches[0][0])
                raise DeviceMemoryError(
                    f"train.micro_batch_size: a micro-batch of {micro} images does not fit in {device}'s memory; "
                    f"set --set train.micro_batch_size={max(1, micro // 2)} (the global batch stays, reached by "
                    "more accumulation steps); the last checkpoint is intact"
                ) from err
            interval.add(loss, optimizer_step(cfg, state))
            save = save_due(cfg, state.step, steps_per_epoch)
            if save or state.step % t.log_every_steps == 0 or state.step == total:
                mean_loss, grad_norm = interval.read(info)  # the one wait for the device
                check_finite(mean_loss, state.step, out / LAST, first=state.step - interval.steps + 1)
                losses.append(mean_loss)
                if log is not None:
                    log_interval(
                        log,
                        cfg,
                        interval,
                        epoch=epoch,
                        step=state.step,
                        loss=mean_loss,
                        lr=lr,
                        grad_norm=grad_norm,
                    )
                interval.reset()
            if save and info.is_main:
                save_checkpoint_files(cfg, state, steps_per_epoch, out, save)
            if save:
                barrier(info)  # every rank saw the same schedule: the others wait for rank 0's files here
    return losses, bad_images


def log_interval(
    log: RunLog,
    cfg: PretrainConfig,
    interval: Interval,
    *,
    epoch: int,
    step: int,
    loss: float,
    lr: float,
    grad_norm: float,
) -> None:
    """One ``metrics.jsonl`` record (and TensorBoard scalars, and progress) for the steps since the last."""
    t = cfg.train
    images_per_s = t.batch_size * interval.steps / (time.perf_counter() - interval.start)
    record = {"step": step, "epoch": epoch, "loss": loss, "lr": lr, "grad_norm": grad_norm}
    record |= {"images_per_s": images_per_s, "time": time.time()}
    description = f"epoch {epoch + 1}/{t.epochs}"
    log.log(
        record,
        description,
        steps=interval.steps,
        loss=f"{loss:.4f}",
        lr=f"{lr:.2e}",
        img_s=f"{images_per_s:.0f}",
    )


def save_due(cfg: PretrainConfig, step: int, steps_per_epoch: int) -> list[str]:
    """The checkpoint files due after ``step``: ``checkpoint-last.pt`` every ``save_every_steps`` and at each
    epoch end; epoch and step copies as asked. The same on every rank."""
    t = cfg.train
    end_of_epoch = step % steps_per_epoch == 0
    names = [LAST] if end_of_epoch or step % t.save_every_steps == 0 else []
    done_epochs = step // steps_per_epoch
    if end_of_epoch and t.save_every_epochs and done_epochs % t.save_every_epochs == 0:
        names.append(f"checkpoint-{done_epochs:04d}.pt")
    if step in t.keep_steps:
        names.append(f"checkpoint-step{step}.pt")
    return names


def save_checkpoint_files(
    cfg: PretrainConfig, state: TrainState, steps_per_epoch: int, out: Path, names: list[str]
) -> None:
    for name in names:
        save_checkpoint(out / name, cfg, state, steps_per_epoch)


def summarise(
    cfg: PretrainConfig,
    *,
    step: int,
    first_step: int,
    wall: float,
    losses: list[float],
    bad_images: int,
    checkpoint: Path,
    verbose: bool,
) -> dict[str, Any]:
    """The run's summary (returned by :func:`pretrain`), printed on rank 0."""
    summary = {
        "steps": step,
        "steps_this_run": step - first_step,
        "epochs": cfg.train.epochs,
        "wall_s": wall,
        "images_per_s": (step - first_step) * cfg.train.batch_size / wall if wall > 0 else 0.0,
        "first_loss": losses[0] if losses else None,
        "final_loss": losses[-1] if losses else None,
        "skipped_images": bad_images,
        "checkpoint": str(checkpoint),
    }
    if verbose:
        loss_text = f"loss {losses[0]:.4f} -> {losses[-1]:.4f}" if losses else "no new steps"
        skipped = f", skipped {bad_images} unreadable images" if bad_images else ""
        print(
            f"semaim pretrain done: {step - first_step} steps in {format_seconds(wall)} "
            f"({summary['images_per_s']:.0f} images/s), {loss_text}{skipped}; checkpoint {checkpoint}"
        )
        print(f"evaluate it: semaim knn --checkpoint {checkpoint} --data {cfg.data.data}")
    return summary
