"""``semaim segment``: semantic segmentation with the encoder as a ViTDet backbone (the model is
:mod:`semaim.evaluate.dense`).

The same conventions as :mod:`semaim.evaluate.finetune`: a validation split carved from the training split
for every choice (epoch, recipe, ``select: best``), the test split scored once at the end into
``result.json``; AdamW with layer-wise lr decay (BEiT / MAE: the pyramid and head take the full lr),
warmup + cosine; atomic ``checkpoint-last.pt`` that ``--resume`` continues mid-epoch, every random draw
seeded from (seed, epoch, position) or (seed, step), so a resumed run repeats an uninterrupted one;
``metrics.jsonl``, ``eval.jsonl``, TensorBoard, a progress bar, the run folder locked. Single process.

Scores are computed at the model's input size: masks are resized there (nearest) together with the
images, and the logits are upsampled to it. Cluttered Fashion-MNIST is 64 px, so an encoder at 64 px
is scored on the masks exactly as generated.
"""

from __future__ import annotations

import copy
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from ..config import SegmentConfig, SegmentRunConfig
from ..data.sampler import EpochSampler, sample_seed
from ..data.segmentation import IGNORE_INDEX, SegmentDataset, SegmentTransform, open_segmentation
from ..data.splits import default_val_size, train_val_split
from ..data.transforms import channel_stats
from ..engine.checkpoint import load_checkpoint, save_atomic
from ..engine.distributed import resolve_device
from ..engine.optim import layer_decay_groups, lr_at, param_groups
from ..engine.run import (
    LAST,
    RunFolder,
    append_record,
    autocast_context,
    check_finite,
    format_seconds,
    resolve_precision,
    write_text_atomic,
)
from ..engine.runlog import RunLog
from ..export import build_vit
from ..weights import load_strict
from .dense import Segmenter, confusion_matrix, segmentation_scores
from .encoders import starting_weights
from .finetune import image_size

KIND_SEGMENT = "semaim-segment"
EVAL_BATCH = 128


# --------------------------------------------------------------------------- data
@dataclass
class SegmentSplits:
    """The training subset and the validation split carved from the training split; the test split is
    opened for scoring only by :func:`final_test`."""

    train: DataLoader
    val: DataLoader | None
    sampler: EpochSampler
    num_images: int
    num_val: int
    num_classes: int
    classes: tuple[str, ...]
    img_size: tuple[int, int]
    stats: tuple[tuple[float, ...], tuple[float, ...]]


def eval_loader(base: Any, indices: list[int], img_size: tuple[int, int], in_chans: int, workers: int,
                stats: tuple[tuple[float, ...], tuple[float, ...]]) -> DataLoader:  # fmt: skip
    """Resize + normalise, no flip, over ``indices`` of ``base``."""
    transform = SegmentTransform(img_size, *stats, in_chans, train=False)
    return DataLoader(SegmentDataset(base, indices, transform), batch_size=EVAL_BATCH, num_workers=workers)


def open_splits(sg: SegmentConfig, args: dict[str, Any]) -> SegmentSplits:
    """Training subset (flip) and validation split of ``sg.data``'s train split. Every mask of both the
    train and the test split is checked first, so bad data stops the run before it writes anything."""
    in_chans, img_size = args["in_chans"], image_size(args)
    base = open_segmentation(sg.data, "train", in_chans, sg.num_classes)
    num_classes = sg.num_classes or len(base.mask_classes)
    base.check_masks(num_classes)
    open_segmentation(sg.data, "test", in_chans, num_classes).check_masks(num_classes)
    val_size = default_val_size(len(base)) if sg.val_size is None else sg.val_size
    pool, val = train_val_split(base.labels, val_size, sg.split_seed, prefix="segment.")
    subset = pool[: sg.limit] if sg.limit else pool
    sampler = EpochSampler(len(subset), sg.batch_size, 1, sg.seed)
    stats = (tuple(channel_stats(base.mean, in_chans)), tuple(channel_stats(base.std, in_chans)))
    transform = SegmentTransform(img_size, *stats, in_chans, train=True, hflip=sg.hflip)
    train = DataLoader(SegmentDataset(base, subset, transform), batch_size=sg.batch_size, sampler=sampler,
                       num_workers=sg.workers, drop_last=True, persistent_workers=sg.workers > 0)  # fmt: skip
    val_loader = eval_loader(base, val.tolist(), img_size, in_chans, sg.workers, stats) if len(val) else None
    return SegmentSplits(train, val_loader, sampler, len(subset), len(val), num_classes, tuple(base.mask_classes),
                         img_size, stats)  # fmt: skip


# --------------------------------------------------------------------------- model and optimiser
def build_segmenter(args: dict[str, Any], state: dict[str, torch.Tensor], num_classes: int, sg: SegmentConfig,
                    source: str) -> Segmenter:  # fmt: skip
    """The encoder (strictly loaded, with the recipe's drop path) under a new pyramid + head or linear head."""
    torch.manual_seed(sg.seed)  # the new layers' initialisation
    vit = build_vit(args, drop_path_rate=sg.drop_path if sg.mode == "finetune" else 0.0)
    load_strict(vit, state, f"encoder {source}")
    return Segmenter(vit, num_classes, sg.mode, sg.pyramid_dim, sg.head_dim, tuple(sg.scales))


def optimizer_groups(model: Segmenter, sg: SegmentConfig) -> list[dict]:
    """Layer-wise lr decay over the encoder (:func:`~semaim.engine.optim.layer_decay_groups`; nothing when
    frozen), the full lr for the decoder; no weight decay on norms, biases, cls and position."""
    groups = [] if sg.mode == "linear" else layer_decay_groups(
        model.encoder, sg.weight_decay, sg.layer_decay, len(model.encoder.blocks))  # fmt: skip
    groups += [{**g, "lr_scale": 1.0} for g in param_groups(model.decoder, sg.weight_decay)]
    return [g for g in groups if g["params"]]


@torch.no_grad()
def evaluate(model: Segmenter, loader: DataLoader, num_classes: int, device: torch.device,
             precision: str) -> dict[str, Any]:  # fmt: skip
    """mIoU, pixel accuracy and per-class IoU over the whole loader, in eval mode (restored afterwards)."""
    was_training = model.training
    model.eval()
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64)
    try:
        for images, masks in loader:
            with autocast_context(device, precision):
                logits = model(images.to(device))
            confusion += confusion_matrix(logits.argmax(1).cpu(), masks, num_classes)
    finally:
        model.train(was_training)
    return segmentation_scores(confusion)


# --------------------------------------------------------------------------- the run
@dataclass
class SegmentState:
    model: Segmenter
    optimizer: torch.optim.Optimizer
    cfg: SegmentRunConfig
    args: dict[str, Any]
    num_classes: int
    precision: str
    step: int = 0
    best_val_miou: float = -1.0

    def save(self, path: Path) -> None:
        save_atomic({
            "kind": KIND_SEGMENT, "model": self.model.state_dict(), "model_args": self.args,
            "num_classes": self.num_classes, "config": self.cfg.to_dict(), "optimizer": self.optimizer.state_dict(),
            "step": self.step, "best_val_miou": self.best_val_miou,
        }, path)  # fmt: skip


def segment(cfg: SegmentRunConfig, out_dir: str | Path, resume: bool = False, force: bool = False,
            progress: bool = True) -> dict[str, Any]:  # fmt: skip
    """Train ``cfg.encoder`` with a segmentation head on ``cfg.segment.data``'s training split, validate on
    a split carved from it, score the test split once at the end (``segment.select``: the last or the
    best-validation weights). Returns the test scores, the best validation mIoU and the wall time."""
    cfg.validate()
    sg = cfg.segment
    device = resolve_device(sg.device)
    with RunFolder(Path(out_dir), resume, force) as folder:
        weights, args, source = starting_weights(cfg.encoder)
        ckpt = load_checkpoint(folder.path / LAST, KIND_SEGMENT) if resume else None
        splits = open_splits(sg, args)
        model = build_segmenter(args, weights, splits.num_classes, sg, source).to(device)
        optimizer = torch.optim.AdamW(optimizer_groups(model, sg), lr=sg.lr, betas=sg.betas)
        state = SegmentState(
            model, optimizer, cfg, args, splits.num_classes, resolve_precision(sg.precision, device)
        )
        if ckpt is not None:
            model.load_state_dict(ckpt["model"])
            optimizer.load_state_dict(ckpt["optimizer"])
            state.step, state.best_val_miou = ckpt["step"], ckpt["best_val_miou"]
        folder.start(cfg.to_dict(), inputs=[cfg.encoder.checkpoint])
        log = RunLog(
            folder.path, "segment", splits.sampler.steps_per_epoch * sg.epochs, state.step, resume, progress
        )
        print(
            f"semaim segment: {source}, {sg.mode}, {splits.num_images} training images ({splits.num_val} held "
            f"out for validation), {splits.num_classes} classes, {splits.sampler.steps_per_epoch} steps/epoch × "
            f"{sg.epochs} epochs, batch {sg.batch_size}, lr {sg.lr:.3g}, {state.precision} on {device}",
            file=sys.stderr,
        )
        start = time.perf_counter()
        try:
            train(state, splits, folder.path, log, device)
        finally:
            log.close()
        result = {**final_test(state, splits, folder.path, device), "steps": state.step,
                  "wall_s": time.perf_counter() - start}  # fmt: skip
    print(
        f"semaim segment done: test mIoU {result['test_miou']:.2f}%, pixel accuracy {result['test_pixel_acc']:.2f}% "
        f"({sg.select} weights; best validation mIoU {result['best_val_miou']:.2f}%) after {state.step} steps in "
        f"{format_seconds(result['wall_s'])}; checkpoint {folder.path / LAST}"
    )
    return result


def train_step(state: SegmentState, images: torch.Tensor, masks: torch.Tensor, lr: float, device: torch.device,
               out: Path) -> tuple[float, float]:  # fmt: skip
    """One AdamW step with layer-wise lr: ``-> (loss, grad norm)``. Drop path and dropout seeded per step."""
    sg = state.cfg.segment
    torch.manual_seed(sample_seed(sg.seed, state.step, 0))
    for group in state.optimizer.param_groups:
        group["lr"] = lr * group["lr_scale"]
    images, masks = images.to(device), masks.to(device)
    with autocast_context(device, state.precision):
        logits = state.model(images)
    loss = F.cross_entropy(logits.float(), masks, ignore_index=IGNORE_INDEX)
    check_finite(loss.item(), state.step, out / LAST)
    state.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    params = [p for g in state.optimizer.param_groups for p in g["params"]]
    grad_norm = torch.nn.utils.clip_grad_norm_(params, sg.clip_grad or math.inf).item()
    state.optimizer.step()
    state.step += 1
    return loss.item(), grad_norm


def train(state: SegmentState, splits: SegmentSplits, out: Path, log: RunLog, device: torch.device) -> None:
    """Epochs from ``state.step`` on: validate and save after each, ``checkpoint-last.pt`` as configured."""
    sg = state.cfg.segment
    steps_per_epoch = splits.sampler.steps_per_epoch
    total, warmup = steps_per_epoch * sg.epochs, round(sg.warmup_epochs * steps_per_epoch)
    state.model.train()
    while state.step < total:
        epoch, in_epoch = divmod(state.step, steps_per_epoch)
        splits.sampler.set_epoch(epoch, in_epoch)
        for images, masks in splits.train:
            t0, lr = time.perf_counter(), lr_at(state.step, total, warmup, sg.lr, sg.min_lr)
            loss, grad_norm = train_step(state, images, masks, lr, device, out)
            record = {"step": state.step, "epoch": epoch, "loss": loss, "lr": lr, "grad_norm": grad_norm,
                      "images_per_s": sg.batch_size / (time.perf_counter() - t0), "time": time.time()}  # fmt: skip
            log.log(record, f"epoch {epoch + 1}/{sg.epochs}", loss=f"{loss:.4f}", lr=f"{lr:.2e}")
            if state.step % steps_per_epoch == 0:
                end_of_epoch(state, splits, out, log, device, epoch)
            elif state.step % sg.save_every_steps == 0:
                state.save(out / LAST)


def end_of_epoch(state: SegmentState, splits: SegmentSplits, out: Path, log: RunLog, device: torch.device,
                 epoch: int) -> None:  # fmt: skip
    """Validate every ``eval_every`` epochs and after the last (``eval.jsonl``; a new best validation mIoU
    is saved as ``checkpoint-best.pt``), then save ``checkpoint-last.pt``."""
    sg = state.cfg.segment
    due = (epoch + 1) % sg.eval_every == 0 or epoch + 1 == sg.epochs
    if splits.val is not None and due:
        scores = evaluate(state.model, splits.val, splits.num_classes, device, state.precision)
        log.scalar("val_miou", scores["miou"], state.step)
        log.scalar("val_pixel_acc", scores["pixel_acc"], state.step)
        append_record(out / "eval.jsonl", {"step": state.step, "epoch": epoch + 1, "val_miou": scores["miou"],
                                           "val_pixel_acc": scores["pixel_acc"]})  # fmt: skip
        if scores["miou"] > state.best_val_miou:
            state.best_val_miou = scores["miou"]
            state.save(out / "checkpoint-best.pt")
    state.save(out / LAST)


def final_test(state: SegmentState, splits: SegmentSplits, out: Path, device: torch.device) -> dict[str, Any]:
    """Score the test split once, with the last or the best-validation weights; write ``result.json``."""
    sg = state.cfg.segment
    model = state.model
    if sg.select == "best":
        model = copy.deepcopy(state.model)
        model.load_state_dict(load_checkpoint(out / "checkpoint-best.pt", KIND_SEGMENT)["model"])
    in_chans = state.args["in_chans"]
    test = open_segmentation(sg.data, "test", in_chans, splits.num_classes)
    loader = eval_loader(test, list(range(len(test))), splits.img_size, in_chans, sg.workers, splits.stats)
    scores = evaluate(model, loader, splits.num_classes, device, state.precision)
    result = {
        "test_miou": scores["miou"], "test_pixel_acc": scores["pixel_acc"],
        "test_iou": dict(zip(splits.classes, scores["iou"], strict=True)), "selected": sg.select, "mode": sg.mode,
        "best_val_miou": state.best_val_miou if splits.val is not None else float("nan"),
        "train_images": splits.num_images, "val_images": splits.num_val, "test_images": len(test),
    }  # fmt: skip
    write_text_atomic(out / "result.json", json.dumps(result, indent=2) + "\n")
    return result
