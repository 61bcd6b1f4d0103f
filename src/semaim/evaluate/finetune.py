"""End-to-end fine-tuning of the encoder as a timm ``VisionTransformer`` (Table S2's recipe).

AdamW with layer-wise lr decay, RandAugment, mixup / cutmix, label smoothing, drop path, random
erasing, warmup + cosine, all from timm's own implementations. Checkpoints are atomic and resumable
mid-epoch; every per-sample and per-step random draw is seeded from (seed, epoch, position) or
(seed, step), so a resumed run repeats an uninterrupted one. The run folder holds ``config.yaml`` (a
:class:`~semaim.config.FinetuneRunConfig` that rebuilds the run), ``metrics.jsonl``, ``eval.jsonl``,
TensorBoard events and the checkpoints (the run itself is :mod:`semaim.evaluate.trainer`'s). Single
process.
"""

from __future__ import annotations

import random
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
from ..encoder import KIND_FINETUNE, build_vit
from ..engine.optim import layer_decay_groups, scaled_lr
from ..engine.run import LAST, autocast_context, format_seconds
from ..errors import CheckpointError, ConfigError, DataError
from .linear import top_k_accuracy
from .trainer import (
    Splits,
    SupervisedState,
    SupervisedTask,
    best_val,
    data_identity,
    image_size,
    optimizer_step,
    run,
    set_lr,
)


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
            input_size=(in_chans, *img_size),
            is_training=True,
            auto_augment=ft.randaug or None,
            scale=tuple(ft.crop_scale),
            re_prob=ft.reprob,
            re_mode="pixel",
            interpolation="bicubic",
            mean=mean,
            std=std,
        )
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


def eval_loader(
    base: Dataset,
    indices: list[int] | None,
    img_size: tuple[int, int],
    *,
    in_chans: int,
    workers: int,
    mean: tuple[float, ...],
    std: tuple[float, ...],
) -> DataLoader:
    """Resize + normalise, no augmentation, over ``indices`` of ``base`` (all of it when ``None``)."""
    transform = PretrainTransform(img_size, mean, std, in_chans, train=False)
    return DataLoader(
        AugmentedDataset(base, transform),
        batch_size=256,
        sampler=indices,
        num_workers=workers,
        collate_fn=collate,
        pin_memory=torch.cuda.is_available(),  # pinned pages copy to the GPU without a host wait
    )


def open_splits(ft: FinetuneConfig, args: dict[str, Any]) -> Splits:
    """The training subset (Table S2's augmentation) and the validation split of ``ft.data``'s train split.
    The test split is opened too (and scored only at the end): a folder whose classes do not fit stops the
    run before it trains, and its ``fingerprint()`` is part of the run's identity."""
    in_chans, img_size = args["in_chans"], image_size(args)
    base = open_dataset(ft.data, "train", in_chans, classify=True)
    if (base.labels < 0).any():
        raise DataError(f"data: {ft.data} has unlabeled images; fine-tuning needs class sub-folders")
    subset, val = labelled_subset(
        base.labels,
        val_size=ft.val_size,
        split_seed=ft.split_seed,
        per_class=ft.labels_per_class,
        fraction=ft.label_fraction,
        seed=ft.seed,
        limit=ft.limit,
    )
    sampler = EpochSampler(len(subset), ft.batch_size, 1, ft.seed)
    mean, std = channel_stats(base.mean, in_chans), channel_stats(base.std, in_chans)
    train = DataLoader(
        FinetuneDataset(base, subset, train_transform(ft, in_chans, img_size, mean, std), in_chans),
        batch_size=ft.batch_size,
        sampler=sampler,
        num_workers=ft.workers,
        collate_fn=collate,
        drop_last=True,
        persistent_workers=ft.workers > 0,
        pin_memory=torch.cuda.is_available(),
    )
    val_loader = None
    if len(val):
        val_loader = eval_loader(
            base, val.tolist(), img_size, in_chans=in_chans, workers=ft.workers, mean=base.mean, std=base.std
        )
    test = open_dataset(ft.data, "test", in_chans, classify=True)
    return Splits(
        train=train,
        val=val_loader,
        sampler=sampler,
        num_images=len(subset),
        num_val=len(val),
        num_classes=int(base.labels.max()) + 1,
        img_size=img_size,
        stats=(base.mean, base.std),
        data=data_identity(train=base, test=test, subset=subset, val=val),
    )


# --------------------------------------------------------------------------- model and objective
def build_classifier(
    args: dict[str, Any], state: dict[str, torch.Tensor], num_classes: int, ft: FinetuneConfig, source: str
) -> VisionTransformer:
    """The encoder with a new head (MAE's init: N(0, 2e-5)) and Table S2's drop path.

    ``pool="avg"`` is the official fine-tuning's head: the mean of the patch tokens through a new
    LayerNorm (``fc_norm``), the encoder's final norm dropped (timm's ``global_pool="avg"``); ``"cls"``
    keeps the final norm and classifies the cls token. A fine-tuning checkpoint's encoder (its head
    dropped) starts one too: with ``avg`` its trained ``fc_norm`` is kept; one fine-tuned with ``avg`` has no
    final norm left for ``cls``, which is refused by name.
    """
    torch.manual_seed(ft.seed)
    global_pool = "avg" if ft.pool == "avg" else "token"
    model = build_vit(args, num_classes=num_classes, drop_path_rate=ft.drop_path, global_pool=global_pool)
    fresh = {"head.weight", "head.bias"}
    if ft.pool == "avg":
        state = {k: v for k, v in state.items() if not k.startswith("norm.")}
        fresh |= {"fc_norm.weight", "fc_norm.bias"} - state.keys()
    elif "fc_norm.weight" in state:
        raise CheckpointError(
            f"{source}: an encoder fine-tuned with the avg-pool head (fc_norm, no final norm) cannot "
            "classify its cls token; fine-tune it with --pool avg, or start --pool cls from its pretraining "
            "checkpoint"
        )
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or set(missing) != fresh:
        raise CheckpointError(f"{source}: encoder does not fit: missing {missing}, unexpected {unexpected}")
    nn.init.trunc_normal_(model.head.weight, std=2e-5)
    return model


def build_objective(ft: FinetuneConfig, num_classes: int) -> tuple[Mixup | None, nn.Module]:
    """Mixup / cutmix with soft-target cross-entropy, or label smoothing, or plain cross-entropy."""
    if ft.mixup > 0 or ft.cutmix > 0:
        mixup = Mixup(
            mixup_alpha=ft.mixup,
            cutmix_alpha=ft.cutmix,
            label_smoothing=ft.smoothing,
            num_classes=num_classes,
        )
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
                logits.append(model(images.to(device, non_blocking=True)).float().cpu())
            labels.append(y)
    finally:
        model.train(was_training)
    logits_t, labels_t = torch.cat(logits), torch.cat(labels)
    return {"top1": top_k_accuracy(logits_t, labels_t, 1), "top5": top_k_accuracy(logits_t, labels_t, 5)}


# --------------------------------------------------------------------------- the run
class FinetuneTask(SupervisedTask):
    """Classification on the labelled subset: Table S2's objective, top-1 selects (``best_val_top1``)."""

    name, kind, metric = "finetune", KIND_FINETUNE, "top1"
    recorded, plotted = ("top1", "top5"), ("top1",)

    def prepare(
        self,
        ft: FinetuneConfig,
        args: dict[str, Any],
        weights: dict[str, torch.Tensor],
        source: str,
        device: torch.device,
    ) -> tuple[Splits, nn.Module, torch.optim.Optimizer]:
        """The splits (the schedule stretched to ``budget_steps``), the classifier, AdamW with layer decay, and
        the objective :meth:`train_step` uses."""
        splits = open_splits(ft, args)
        stretch_schedule(ft, splits.sampler.steps_per_epoch)
        model = build_classifier(args, weights, splits.num_classes, ft, source).to(device)
        groups = layer_decay_groups(model, ft.weight_decay, ft.layer_decay, len(model.blocks))
        optimizer = torch.optim.AdamW(groups, lr=self.base_lr(ft), betas=ft.betas, fused=True)
        self.objective = build_objective(ft, splits.num_classes)
        return splits, model, optimizer

    def base_lr(self, ft: FinetuneConfig) -> float:
        return scaled_lr(ft.blr, ft.batch_size)

    def header_notes(self, ft: FinetuneConfig) -> tuple[str, str]:
        return "", f"{ft.pool} pool, "

    def train_step(
        self,
        state: SupervisedState,
        batch: tuple[torch.Tensor, torch.Tensor, Any],
        lr: float,
        device: torch.device,
        out: Path,
    ) -> tuple[float, float]:
        """One AdamW step with layer-wise lr: ``-> (loss, grad norm)``. Drop path and mixup are seeded per step."""
        ft = state.cfg.finetune
        step_seed = sample_seed(ft.seed, state.step, 0)
        torch.manual_seed(step_seed)  # drop path
        np.random.seed(step_seed % 2**32)  # mixup / cutmix
        set_lr(state.optimizer, lr)
        mixup, criterion = self.objective
        images, labels, _ = batch
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        targets = labels
        if mixup is not None:
            images, targets = mixup(images, labels)
        with autocast_context(device, state.precision):
            loss = criterion(state.model(images).float(), targets)
        return optimizer_step(state, loss, state.model.parameters(), ft.clip_grad)

    def score(
        self, state: SupervisedState, model: nn.Module, loader: DataLoader, device: torch.device
    ) -> dict[str, float]:
        return evaluate(model, loader, device, state.precision)

    def test_loader(self, state: SupervisedState, splits: Splits) -> DataLoader:
        ft, in_chans = state.cfg.finetune, state.args["in_chans"]
        test = open_dataset(ft.data, "test", in_chans)
        mean, std = splits.stats
        return eval_loader(
            test, None, splits.img_size, in_chans=in_chans, workers=ft.workers, mean=mean, std=std
        )

    def result(
        self, state: SupervisedState, splits: Splits, scores: dict[str, float], test: DataLoader
    ) -> dict[str, Any]:
        return {
            "test_top1": scores["top1"],
            "test_top5": scores["top5"],
            "selected": state.cfg.finetune.select,
            "best_val_top1": best_val(state, splits),
            "train_images": splits.num_images,
            "val_images": splits.num_val,
        }

    def model_args(self, state: SupervisedState) -> dict[str, Any]:
        return {**state.args, "global_pool": state.model.global_pool}


def finetune(
    cfg: FinetuneRunConfig,
    out_dir: str | Path,
    resume: bool = False,
    force: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Fine-tune ``cfg.encoder`` (a checkpoint, or the random initialisation: the scratch baseline) on a
    labelled subset of ``cfg.finetune.data``'s training split, validate after every epoch on a split
    carved from it, and score the test split once, at the end, with the last or the best-validation
    weights (``finetune.select``). Returns the test scores, the validation history's best and the time."""
    result = run(FinetuneTask(), cfg, out_dir, resume, force, progress)
    print(
        f"semaim finetune done: test top-1 {result['test_top1']:.2f}%, top-5 {result['test_top5']:.2f}% "
        f"({cfg.finetune.select} weights; best validation top-1 {result['best_val_top1']:.2f}%) after "
        f"{result['steps']} steps in {format_seconds(result['wall_s'])}; checkpoint {Path(out_dir) / LAST}"
    )
    return result


def stretch_schedule(ft: FinetuneConfig, steps_per_epoch: int) -> None:
    """About ``budget_steps`` steps (whole epochs, the nearest count): more epochs for a small labelled set,
    the warmup and the validation interval stretched alike (the run's config.yaml records what it ran).

    Stretching ``eval_every`` keeps the validations per step of the unstretched schedule: 100 validations of
    5000 images would cost three times the 1800 training steps of a 600-image run."""
    epochs = max(ft.epochs, round(ft.budget_steps / steps_per_epoch))
    factor = epochs / ft.epochs
    ft.warmup_epochs, ft.eval_every = ft.warmup_epochs * factor, max(1, round(ft.eval_every * factor))
    ft.epochs = epochs
