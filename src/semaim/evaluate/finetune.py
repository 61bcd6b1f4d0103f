"""End-to-end fine-tuning of the encoder as a timm ``VisionTransformer`` (Table S2's recipe).

AdamW with layer-wise lr decay, RandAugment, mixup / cutmix, label smoothing, drop path, random
erasing, warmup + cosine, all from timm's own implementations. Checkpoints are atomic and resumable
mid-epoch; every per-sample and per-step random draw is seeded from (seed, epoch, position) or
(seed, step), so a resumed run repeats an uninterrupted one. The run folder holds ``config.yaml`` (a
:class:`~semaim.config.FinetuneRunConfig` that rebuilds the run), ``metrics.jsonl``, ``eval.jsonl``,
TensorBoard events and the checkpoints. Single process.
"""

from __future__ import annotations

import copy
import json
import math
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps
from timm.data import Mixup, create_transform
from timm.data.auto_augment import RandAugment
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.models.vision_transformer import VisionTransformer
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..config import FinetuneConfig, FinetuneRunConfig
from ..data import open_dataset
from ..data.sampler import AugmentedDataset, EpochSampler, collate, sample_seed
from ..data.splits import labelled_subset
from ..data.transforms import PretrainTransform, channel_stats
from ..engine.checkpoint import load_checkpoint, save_atomic
from ..engine.distributed import resolve_device
from ..engine.optim import layer_decay_groups, lr_at, scaled_lr
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
from ..errors import ConfigError, DataError
from ..export import KIND_FINETUNE, build_vit
from .encoders import starting_weights
from .linear import top_k_accuracy


# --------------------------------------------------------------------------- data
def _posterize_at_least_one_bit(img: Image.Image, bits_to_keep: int, **_: object) -> Image.Image:
    """timm's ``posterize`` with ``bits`` clamped to ≥ 1: RandAugment's ``inc1`` variant asks for 0 bits
    at magnitude 10, which Pillow ≥ 13 rejects (older Pillow returned a black image)."""
    if bits_to_keep >= 8:
        return img
    return ImageOps.posterize(img, max(1, int(bits_to_keep)))


def train_transform(ft: FinetuneConfig, in_chans: int, img_size: tuple[int, int], mean, std):
    """timm's training transform for Table S2, its posterize ops (only these) clamped to ≥ 1 bit."""
    try:  # timm parses the policy string with asserts
        transform = create_transform(
            input_size=(in_chans, *img_size), is_training=True, auto_augment=ft.randaug or None,
            scale=tuple(ft.crop_scale), re_prob=ft.reprob, re_mode="pixel", interpolation="bicubic",
            mean=mean, std=std,
        )  # fmt: skip
    except (AssertionError, ValueError) as err:
        raise ConfigError(
            f"finetune.randaug: {ft.randaug!r} is not a timm augmentation policy such as "
            f"'rand-m9-mstd0.5-inc1' ({err})"
        ) from err
    for step in transform.transforms:
        if isinstance(step, RandAugment):
            for op in step.ops:
                if op.name.startswith("Posterize"):
                    op.aug_fn = _posterize_at_least_one_bit
    return transform


class FinetuneDataset(Dataset):
    """``dataset[(i, seed)] -> (image, label)`` of ``base[indices[i]]`` with timm's training transform,
    seeded per sample."""

    def __init__(self, base: Dataset, indices: torch.Tensor, transform: Any, in_chans: int) -> None:
        self.base, self.indices, self.transform = base, indices.tolist(), transform
        self.mode = "RGB" if in_chans == 3 else "L"

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, item: tuple[int, int]) -> tuple[torch.Tensor, int]:
        position, seed = item
        index = self.indices[position]
        img = self.base.load(index)
        if isinstance(img, torch.Tensor):
            img = Image.fromarray(img[0].numpy())
        # timm's transforms draw from the global generators (all three of them).
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.manual_seed(seed)
        return self.transform(img.convert(self.mode)), int(self.base.labels[index])


@dataclass
class Splits:
    """What a fine-tuning run learns from (a labelled subset of the training split) and selects on (a
    validation split carved from it). The test split is opened only by :func:`final_test`."""

    train: DataLoader
    val: DataLoader | None
    sampler: EpochSampler
    num_images: int
    num_val: int
    num_classes: int
    img_size: tuple[int, int]
    stats: tuple[tuple[float, ...], tuple[float, ...]]  # the training split's mean and std, for every split


def image_size(args: dict[str, Any]) -> tuple[int, int]:
    return tuple(args["img_size"]) if isinstance(args["img_size"], list) else (args["img_size"],) * 2


def eval_loader(base: Dataset, indices: list[int] | None, img_size: tuple[int, int], in_chans: int,
                workers: int, mean: tuple[float, ...], std: tuple[float, ...]) -> DataLoader:  # fmt: skip
    """Resize + normalise, no augmentation, over ``indices`` of ``base`` (all of it when ``None``)."""
    transform = PretrainTransform(img_size, mean, std, in_chans, train=False)
    return DataLoader(AugmentedDataset(base, transform), batch_size=256, sampler=indices, num_workers=workers,
                      collate_fn=collate)  # fmt: skip


def open_splits(ft: FinetuneConfig, args: dict[str, Any]) -> Splits:
    """The training subset (Table S2's augmentation) and the validation split of ``ft.data``'s train split."""
    in_chans, img_size = args["in_chans"], image_size(args)
    base = open_dataset(ft.data, "train", in_chans)
    if (base.labels < 0).any():
        raise DataError(f"data: {ft.data} has unlabeled images; fine-tuning needs class sub-folders")
    subset, val = labelled_subset(base.labels, ft.val_size, ft.split_seed, ft.labels_per_class, ft.label_fraction,
                                  ft.seed, ft.limit)  # fmt: skip
    sampler = EpochSampler(len(subset), ft.batch_size, 1, ft.seed)
    mean, std = channel_stats(base.mean, in_chans), channel_stats(base.std, in_chans)
    train = DataLoader(
        FinetuneDataset(base, subset, train_transform(ft, in_chans, img_size, mean, std), in_chans),
        batch_size=ft.batch_size, sampler=sampler, num_workers=ft.workers, collate_fn=collate, drop_last=True,
        persistent_workers=ft.workers > 0,
    )  # fmt: skip
    val_loader = None
    if len(val):
        val_loader = eval_loader(base, val.tolist(), img_size, in_chans, ft.workers, base.mean, base.std)
    return Splits(train, val_loader, sampler, len(subset), len(val), int(base.labels.max()) + 1, img_size,
                  (base.mean, base.std))  # fmt: skip


# --------------------------------------------------------------------------- model and objective
def build_classifier(args: dict[str, Any], state: dict[str, torch.Tensor], num_classes: int,
                     ft: FinetuneConfig, source: str) -> VisionTransformer:  # fmt: skip
    """The encoder with a new head (MAE's init: N(0, 2e-5)) and Table S2's drop path.

    ``pool="avg"`` is the official fine-tuning's head: the mean of the patch tokens through a new
    LayerNorm (``fc_norm``), the encoder's final norm dropped (timm's ``global_pool="avg"``); ``"cls"``
    keeps the final norm and classifies the cls token.
    """
    torch.manual_seed(ft.seed)
    global_pool = "avg" if ft.pool == "avg" else "token"
    model = build_vit(args, num_classes=num_classes, drop_path_rate=ft.drop_path, global_pool=global_pool)
    if ft.pool == "avg":
        state = {k: v for k, v in state.items() if not k.startswith("norm.")}
    missing, unexpected = model.load_state_dict(state, strict=False)
    fresh = {"head.weight", "head.bias"} | ({"fc_norm.weight", "fc_norm.bias"} if ft.pool == "avg" else set())
    if unexpected or set(missing) != fresh:
        raise DataError(f"{source}: encoder does not fit: missing {missing}, unexpected {unexpected}")
    nn.init.trunc_normal_(model.head.weight, std=2e-5)
    return model


def build_objective(ft: FinetuneConfig, num_classes: int) -> tuple[Mixup | None, nn.Module]:
    """Mixup / cutmix with soft-target cross-entropy, or label smoothing, or plain cross-entropy."""
    if ft.mixup > 0 or ft.cutmix > 0:
        mixup = Mixup(mixup_alpha=ft.mixup, cutmix_alpha=ft.cutmix, label_smoothing=ft.smoothing,
                      num_classes=num_classes)  # fmt: skip
        return mixup, SoftTargetCrossEntropy()
    if ft.smoothing > 0:
        return None, LabelSmoothingCrossEntropy(ft.smoothing)
    return None, nn.CrossEntropyLoss()


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, device: torch.device, precision: str) -> dict[str, float]:
    """Top-1 / top-5 in eval mode (drop path off), restoring the previous mode afterwards."""
    was_training = model.training
    model.eval()
    logits, labels = [], []
    try:
        for images, y, _ in loader:
            with autocast_context(device, precision):
                logits.append(model(images.to(device)).float().cpu())
            labels.append(y)
    finally:
        model.train(was_training)
    logits_t, labels_t = torch.cat(logits), torch.cat(labels)
    return {"top1": top_k_accuracy(logits_t, labels_t, 1), "top5": top_k_accuracy(logits_t, labels_t, 5)}


# --------------------------------------------------------------------------- the run
@dataclass
class FinetuneState:
    model: VisionTransformer
    optimizer: torch.optim.Optimizer
    cfg: FinetuneRunConfig
    args: dict[str, Any]
    num_classes: int
    precision: str
    step: int = 0
    best_val_top1: float = -1.0

    def save(self, path: Path) -> None:
        save_atomic({
            "kind": KIND_FINETUNE, "model": self.model.state_dict(),
            "model_args": {**self.args, "global_pool": self.model.global_pool},
            "num_classes": self.num_classes, "config": self.cfg.to_dict(), "optimizer": self.optimizer.state_dict(),
            "step": self.step, "best_val_top1": self.best_val_top1,
        }, path)  # fmt: skip


def finetune(cfg: FinetuneRunConfig, out_dir: str | Path, resume: bool = False, force: bool = False,
             progress: bool = True) -> dict[str, Any]:  # fmt: skip
    """Fine-tune ``cfg.encoder`` (a checkpoint, or the random initialisation: the scratch baseline) on a
    labelled subset of ``cfg.finetune.data``'s training split, validate after every epoch on a split
    carved from it, and score the test split once, at the end, with the last or the best-validation
    weights (``finetune.select``). Returns the test scores, the validation history's best and the time."""
    cfg.validate()
    ft = cfg.finetune
    device = resolve_device(ft.device)
    with RunFolder(Path(out_dir), resume, force) as folder:
        weights, args, source = starting_weights(cfg.encoder)
        ckpt = load_checkpoint(folder.path / LAST, KIND_FINETUNE) if resume else None
        splits = open_splits(ft, args)
        stretch_schedule(ft, splits.sampler.steps_per_epoch)
        model = build_classifier(args, weights, splits.num_classes, ft, source).to(device)
        groups = layer_decay_groups(model, ft.weight_decay, ft.layer_decay, len(model.blocks))
        optimizer = torch.optim.AdamW(groups, lr=scaled_lr(ft.blr, ft.batch_size), betas=ft.betas, fused=True)
        state = FinetuneState(model, optimizer, cfg, args, splits.num_classes, resolve_precision(ft.precision, device))
        if ckpt is not None:
            model.load_state_dict(ckpt["model"])
            optimizer.load_state_dict(ckpt["optimizer"])
            state.step, state.best_val_top1 = ckpt["step"], ckpt["best_val_top1"]
        folder.start(cfg.to_dict(), inputs=[cfg.encoder.checkpoint])
        log = RunLog(folder.path, "finetune", splits.sampler.steps_per_epoch * ft.epochs, state.step, resume, progress)
        print(
            f"semaim finetune: {source}, {splits.num_images} training images ({splits.num_val} held out for "
            f"validation), {splits.num_classes} classes, {splits.sampler.steps_per_epoch} steps/epoch × "
            f"{ft.epochs} epochs, batch {ft.batch_size}, lr {scaled_lr(ft.blr, ft.batch_size):.3g}, "
            f"{ft.pool} pool, {state.precision} on {device}",
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
        f"semaim finetune done: test top-1 {result['test_top1']:.2f}%, top-5 {result['test_top5']:.2f}% "
        f"({ft.select} weights; best validation top-1 {result['best_val_top1']:.2f}%) after {state.step} steps "
        f"in {format_seconds(result['wall_s'])}; checkpoint {folder.path / LAST}"
    )
    return result


def stretch_schedule(ft: FinetuneConfig, steps_per_epoch: int) -> None:
    """About ``budget_steps`` steps (whole epochs, the nearest count): more epochs for a small labelled set,
    the warmup stretched alike (the run's config.yaml records the epochs it ran)."""
    epochs = max(ft.epochs, round(ft.budget_steps / steps_per_epoch))
    ft.warmup_epochs, ft.epochs = ft.warmup_epochs * epochs / ft.epochs, epochs


def train_step(state: FinetuneState, images: torch.Tensor, labels: torch.Tensor, lr: float,
               objective: tuple[Mixup | None, nn.Module], device: torch.device, out: Path) -> tuple[float, float]:  # fmt: skip
    """One AdamW step with layer-wise lr: ``-> (loss, grad norm)``. Drop path and mixup are seeded per step."""
    ft = state.cfg.finetune
    step_seed = sample_seed(ft.seed, state.step, 0)
    torch.manual_seed(step_seed)  # drop path
    np.random.seed(step_seed % 2**32)  # mixup / cutmix
    for group in state.optimizer.param_groups:
        group["lr"] = lr * group["lr_scale"]
    mixup, criterion = objective
    images, labels = images.to(device), labels.to(device)
    targets = labels
    if mixup is not None:
        images, targets = mixup(images, labels)
    with autocast_context(device, state.precision):
        loss = criterion(state.model(images).float(), targets)
    check_finite(loss.item(), state.step, out / LAST)
    state.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(state.model.parameters(), ft.clip_grad or math.inf).item()
    state.optimizer.step()
    state.step += 1
    return loss.item(), grad_norm


def train(state: FinetuneState, splits: Splits, out: Path, log: RunLog, device: torch.device) -> None:
    """Epochs from ``state.step`` on: validate and save after each, ``checkpoint-last.pt`` as configured."""
    ft = state.cfg.finetune
    steps_per_epoch = splits.sampler.steps_per_epoch
    total, warmup = steps_per_epoch * ft.epochs, round(ft.warmup_epochs * steps_per_epoch)
    base_lr, objective = scaled_lr(ft.blr, ft.batch_size), build_objective(ft, splits.num_classes)
    state.model.train()
    while state.step < total:
        epoch, in_epoch = divmod(state.step, steps_per_epoch)
        splits.sampler.set_epoch(epoch, in_epoch)
        for images, labels, _ in splits.train:
            t0, lr = time.perf_counter(), lr_at(state.step, total, warmup, base_lr, ft.min_lr)
            loss, grad_norm = train_step(state, images, labels, lr, objective, device, out)
            record = {"step": state.step, "epoch": epoch, "loss": loss, "lr": lr, "grad_norm": grad_norm,
                      "images_per_s": ft.batch_size / (time.perf_counter() - t0), "time": time.time()}  # fmt: skip
            log.log(record, f"epoch {epoch + 1}/{ft.epochs}", loss=f"{loss:.4f}", lr=f"{lr:.2e}")
            if state.step % steps_per_epoch == 0:
                end_of_epoch(state, splits, out, log, device, epoch)
            elif state.step % ft.save_every_steps == 0:
                state.save(out / LAST)


def end_of_epoch(state: FinetuneState, splits: Splits, out: Path, log: RunLog, device: torch.device,
                 epoch: int) -> None:  # fmt: skip
    """Validate every ``eval_every`` epochs and after the last (append to ``eval.jsonl``; a new best is
    saved as ``checkpoint-best.pt``), then save ``checkpoint-last.pt``."""
    ft = state.cfg.finetune
    due = (epoch + 1) % ft.eval_every == 0 or epoch + 1 == ft.epochs
    if splits.val is not None and due:
        result = evaluate(state.model, splits.val, device, state.precision)
        log.scalar("val_top1", result["top1"], state.step)
        append_record(out / "eval.jsonl", {"step": state.step, "epoch": epoch + 1, "val_top1": result["top1"],
                                           "val_top5": result["top5"]})  # fmt: skip
        if result["top1"] > state.best_val_top1:
            state.best_val_top1 = result["top1"]
            state.save(out / "checkpoint-best.pt")
    state.save(out / LAST)


def final_test(state: FinetuneState, splits: Splits, out: Path, device: torch.device) -> dict[str, Any]:
    """Score the test split once, with the last weights or the best-validation ones; write ``result.json``."""
    ft = state.cfg.finetune
    model = state.model
    if ft.select == "best":
        model = copy.deepcopy(state.model)
        model.load_state_dict(load_checkpoint(out / "checkpoint-best.pt", KIND_FINETUNE)["model"])
    in_chans = state.args["in_chans"]
    test = open_dataset(ft.data, "test", in_chans)
    loader = eval_loader(test, None, splits.img_size, in_chans, ft.workers, *splits.stats)
    scores = evaluate(model, loader, device, state.precision)
    result = {"test_top1": scores["top1"], "test_top5": scores["top5"], "selected": ft.select,
              "best_val_top1": state.best_val_top1 if splits.val is not None else float("nan"),
              "train_images": splits.num_images, "val_images": splits.num_val}  # fmt: skip
    write_text_atomic(out / "result.json", json.dumps(result, indent=2) + "\n")
    return result
