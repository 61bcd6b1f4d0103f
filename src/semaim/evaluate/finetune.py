"""End-to-end fine-tuning of the encoder as a timm ``VisionTransformer`` (Table S2's recipe).

AdamW with layer-wise lr decay, RandAugment, mixup / cutmix, label smoothing, drop path, random
erasing, warmup + cosine, all from timm's own implementations. Checkpoints are atomic and resumable
mid-epoch; every per-sample and per-step random draw is seeded from (seed, epoch, position) or
(seed, step), so a resumed run repeats an uninterrupted one. Single process.
"""

from __future__ import annotations

import json
import math
import random
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps
from timm.data import Mixup, auto_augment, create_transform
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..checkpoint import load_checkpoint, save_atomic
from ..data import AugmentedDataset, EpochSampler, PretrainTransform, collate, open_dataset, sample_seed
from ..distributed import resolve_device
from ..export import KIND_FINETUNE, build_vit, encoder_from_checkpoint
from ..optim import layer_decay_groups, lr_at, scaled_lr
from ..runlog import RunLog
from ..train import LAST, autocast_context, check_out_dir, format_seconds
from .linear import top_k_accuracy


def _posterize_at_least_one_bit(img: Image.Image, bits_to_keep: int, **_: object) -> Image.Image:
    """timm's ``posterize`` with ``bits`` clamped to ≥ 1: RandAugment's ``inc1`` variant asks for 0 bits
    at magnitude 10, which Pillow ≥ 13 rejects (older Pillow returned a black image)."""
    if bits_to_keep >= 8:
        return img
    return ImageOps.posterize(img, max(1, int(bits_to_keep)))


for _name in ("Posterize", "PosterizeIncreasing", "PosterizeOriginal"):
    auto_augment.NAME_TO_OP[_name] = _posterize_at_least_one_bit


@dataclass
class FinetuneConfig:
    epochs: int = 100
    batch_size: int = 1024
    blr: float = 5e-4  # lr = blr × batch / 256
    min_lr: float = 1e-6
    warmup_epochs: float = 20
    weight_decay: float = 0.05
    layer_decay: float = 0.65
    betas: tuple[float, float] = (0.9, 0.999)
    drop_path: float = 0.1
    randaug: str = "rand-m9-mstd0.5-inc1"  # RandAugment(9, 0.5) in timm's notation
    reprob: float = 0.25  # random erasing
    mixup: float = 0.8
    cutmix: float = 1.0
    smoothing: float = 0.1
    clip_grad: float | None = None
    precision: str = "bf16"
    workers: int = 2
    seed: int = 0
    save_every_steps: int = 500


FINETUNE_PRESETS = {
    "paper": FinetuneConfig(),
    "cpu": FinetuneConfig(epochs=3, batch_size=128, blr=1e-3, warmup_epochs=0.5, layer_decay=0.75, workers=1),
}


class FinetuneDataset(Dataset):
    """``dataset[(index, seed)] -> (image, label)`` with timm's training transform, seeded per sample."""

    def __init__(self, base, transform, in_chans: int, seeded: bool) -> None:
        self.base, self.transform, self.seeded = base, transform, seeded
        self.mode = "RGB" if in_chans == 3 else "L"

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, item):
        index, seed = item if isinstance(item, tuple) else (item, item)
        img = self.base.load(index)
        if isinstance(img, torch.Tensor):
            img = Image.fromarray(img[0].numpy())
        img = img.convert(self.mode)
        if self.seeded:  # timm's transforms draw from the global generators (all three of them)
            random.seed(seed)
            np.random.seed(seed % 2**32)
            torch.manual_seed(seed)
        return self.transform(img), int(self.base.labels[index])


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


def finetune(
    checkpoint: str | Path,
    data: str,
    out_dir: str | Path,
    cfg: FinetuneConfig,
    device: str = "auto",
    limit: int | None = None,
    resume: bool = False,
    force: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Fine-tune the encoder of ``checkpoint`` on ``data``'s train split, evaluate on its test split."""
    out = Path(out_dir)
    dev = resolve_device(device)
    if cfg.precision == "fp16":
        raise ValueError("precision: use bf16 or fp32 for fine-tuning")
    check_out_dir(out, resume, force)
    state, args = encoder_from_checkpoint(checkpoint)
    ckpt = load_checkpoint(out / LAST, KIND_FINETUNE) if resume else None
    train_base = open_dataset(data, "train", args["in_chans"])
    test_base = open_dataset(data, "test", args["in_chans"])
    if (train_base.labels < 0).any():
        raise ValueError(f"data: {data} has unlabeled images; fine-tuning needs class sub-folders")
    num_classes = int(train_base.labels.max()) + 1
    img_size = args["img_size"] if isinstance(args["img_size"], list) else [args["img_size"]] * 2
    n = min(len(train_base), limit or len(train_base))
    sampler = EpochSampler(n, cfg.batch_size, 1, cfg.seed)
    steps_per_epoch, total = sampler.steps_per_epoch, sampler.steps_per_epoch * cfg.epochs

    torch.manual_seed(cfg.seed)
    model = build_vit(args, num_classes=num_classes, drop_path_rate=cfg.drop_path)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or set(missing) != {"head.weight", "head.bias"}:
        raise ValueError(
            f"checkpoint {checkpoint}: encoder does not fit: missing {missing}, unexpected {unexpected}"
        )
    nn.init.trunc_normal_(model.head.weight, std=2e-5)
    model.to(dev)
    base_lr = scaled_lr(cfg.blr, cfg.batch_size)
    groups = layer_decay_groups(model, cfg.weight_decay, cfg.layer_decay, len(model.blocks))
    optimizer = torch.optim.AdamW(groups, lr=base_lr, betas=cfg.betas, fused=True)
    step, best = 0, 0.0
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        step, best = ckpt["step"], ckpt["best_top1"]

    mean, std = train_base.mean, train_base.std
    if len(mean) == 1 and args["in_chans"] == 3:
        mean, std = mean * 3, std * 3
    train_tf = create_transform(
        input_size=(args["in_chans"], *img_size), is_training=True, auto_augment=cfg.randaug or None,
        re_prob=cfg.reprob, re_mode="pixel", interpolation="bicubic", mean=mean, std=std,
    )  # fmt: skip
    train_loader = DataLoader(
        FinetuneDataset(train_base, train_tf, args["in_chans"], seeded=True),
        batch_size=cfg.batch_size, sampler=sampler, num_workers=cfg.workers, collate_fn=collate,
        drop_last=True, persistent_workers=cfg.workers > 0,
    )  # fmt: skip
    test_tf = PretrainTransform(
        tuple(img_size), train_base.mean, train_base.std, args["in_chans"], train=False
    )
    test_loader = DataLoader(
        AugmentedDataset(test_base, test_tf), batch_size=256, num_workers=cfg.workers, collate_fn=collate
    )
    mixup = None
    if cfg.mixup > 0 or cfg.cutmix > 0:
        mixup = Mixup(
            mixup_alpha=cfg.mixup,
            cutmix_alpha=cfg.cutmix,
            label_smoothing=cfg.smoothing,
            num_classes=num_classes,
        )
        criterion: nn.Module = SoftTargetCrossEntropy()
    elif cfg.smoothing > 0:
        criterion = LabelSmoothingCrossEntropy(cfg.smoothing)
    else:
        criterion = nn.CrossEntropyLoss()

    out.mkdir(parents=True, exist_ok=True)
    (out / "finetune.json").write_text(
        json.dumps(
            {"checkpoint": str(checkpoint), "data": data, "limit": limit, "config": asdict(cfg)}, indent=2
        )
    )
    log = RunLog(out, "finetune", total, step, resume, progress)
    evals_path = out / "eval.jsonl"

    def save(path: Path) -> None:
        save_atomic(
            {
                "kind": KIND_FINETUNE, "model": model.state_dict(), "model_args": args, "num_classes": num_classes,
                "config": asdict(cfg), "optimizer": optimizer.state_dict(), "step": step, "best_top1": best,
            },
            path,
        )  # fmt: skip

    print(
        f"semaim finetune: {n} images, {num_classes} classes, {steps_per_epoch} steps/epoch × {cfg.epochs} "
        f"epochs, batch {cfg.batch_size}, lr {base_lr:.3g}, {cfg.precision} on {dev}",
        file=sys.stderr,
    )
    start, result = time.perf_counter(), {}
    model.train()
    try:
        while step < total:
            epoch, in_epoch = divmod(step, steps_per_epoch)
            sampler.set_epoch(epoch, in_epoch)
            for images, labels, _ in train_loader:
                t0 = time.perf_counter()
                step_seed = sample_seed(cfg.seed, step, 0)
                torch.manual_seed(step_seed)  # drop path
                np.random.seed(step_seed % 2**32)  # mixup / cutmix
                lr = lr_at(step, total, round(cfg.warmup_epochs * steps_per_epoch), base_lr, cfg.min_lr)
                for group in optimizer.param_groups:
                    group["lr"] = lr * group["lr_scale"]
                images, labels = images.to(dev), labels.to(dev)
                if mixup is not None:
                    images, targets = mixup(images, labels)
                else:
                    targets = labels
                with autocast_context(dev, cfg.precision):
                    loss = criterion(model(images).float(), targets)
                if not math.isfinite(loss.item()):
                    raise RuntimeError(f"fine-tuning loss is {loss.item()} at step {step}; stopped")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                grad_norm = torch.nn.utils.clip_grad_norm_(
                    model.parameters(), cfg.clip_grad or math.inf
                ).item()
                optimizer.step()
                step += 1
                record = {
                    "step": step, "epoch": epoch, "loss": loss.item(), "lr": lr, "grad_norm": grad_norm,
                    "images_per_s": cfg.batch_size / (time.perf_counter() - t0), "time": time.time(),
                }  # fmt: skip
                log.log(record, f"epoch {epoch + 1}/{cfg.epochs}", loss=f"{loss.item():.4f}", lr=f"{lr:.2e}")
                if step % steps_per_epoch == 0:
                    result = evaluate(model, test_loader, dev, cfg.precision)
                    best = max(best, result["top1"])
                    log.scalar("test_top1", result["top1"], step)
                    with open(evals_path, "a") as f:
                        f.write(json.dumps({"step": step, "epoch": epoch + 1, **result}) + "\n")
                    save(out / LAST)
                    if result["top1"] >= best:
                        save(out / "checkpoint-best.pt")
                elif step % cfg.save_every_steps == 0:
                    save(out / LAST)
    finally:
        log.close()
    if not result:
        result = evaluate(model, test_loader, dev, cfg.precision)
    summary = {
        **result,
        "best_top1": max(best, result["top1"]),
        "steps": step,
        "wall_s": time.perf_counter() - start,
    }
    print(
        f"semaim finetune done: top-1 {result['top1']:.2f}% (best {summary['best_top1']:.2f}%), "
        f"top-5 {result['top5']:.2f}% after {step} steps in {format_seconds(summary['wall_s'])}; "
        f"checkpoint {out / LAST}"
    )
    return summary
