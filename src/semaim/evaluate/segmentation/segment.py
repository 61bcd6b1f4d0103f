"""``semaim segment``: semantic segmentation with the encoder as a ViTDet backbone (the model is
:mod:`semaim.evaluate.segmentation.heads`).

The same run as :mod:`semaim.evaluate.finetune` (:mod:`semaim.evaluate.trainer`): a validation split carved from the training split
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

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from ...config import SegmentConfig, SegmentRunConfig
from ...data.sampler import EpochSampler, sample_seed
from ...data.splits import default_val_size, train_val_split
from ...data.transforms import channel_stats
from ...encoder import build_vit
from ...engine.checkpoint import load_checkpoint
from ...engine.optim import layer_decay_groups, param_groups
from ...engine.run import LAST, autocast_context, format_seconds
from ...errors import ConfigError
from ...weights import load_strict
from ..trainer import (
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
from .heads import Segmenter, confusion_matrix, segmentation_scores
from .masks import IGNORE_INDEX, SegmentDataset, SegmentTransform, open_segmentation

KIND_SEGMENT = "semaim-segment"
EVAL_BATCH = 128


# --------------------------------------------------------------------------- data
@dataclass
class SegmentSplits(Splits):
    """:class:`~semaim.evaluate.trainer.Splits` with the mask classes' names."""

    classes: tuple[str, ...]


def eval_loader(
    base: Any,
    indices: list[int],
    img_size: tuple[int, int],
    in_chans: int,
    workers: int,
    stats: tuple[tuple[float, ...], tuple[float, ...]],
) -> DataLoader:
    """Resize + normalise, no flip, over ``indices`` of ``base``."""
    transform = SegmentTransform(img_size, *stats, in_chans, train=False)
    return DataLoader(
        SegmentDataset(base, indices, transform),
        batch_size=EVAL_BATCH,
        num_workers=workers,
        pin_memory=torch.cuda.is_available(),  # pinned pages copy to the GPU without a host wait
    )


def open_splits(sg: SegmentConfig, args: dict[str, Any]) -> SegmentSplits:
    """Training subset (flip) and validation split of ``sg.data``'s train split. Every mask of both the
    train and the test split is checked first, so bad data stops the run before it writes anything."""
    in_chans, img_size = args["in_chans"], image_size(args)
    base = open_segmentation(sg.data, "train", in_chans, sg.num_classes)
    num_classes = sg.num_classes or len(base.mask_classes)
    base.check_masks(num_classes)
    test = open_segmentation(sg.data, "test", in_chans, num_classes)
    test.check_masks(num_classes)
    pool, val = train_val_split(base.labels, held_out(sg, len(base)), sg.split_seed, prefix="segment.")
    subset = pool[: sg.limit] if sg.limit else pool
    sampler = EpochSampler(len(subset), sg.batch_size, 1, sg.seed)
    stats = (tuple(channel_stats(base.mean, in_chans)), tuple(channel_stats(base.std, in_chans)))
    transform = SegmentTransform(img_size, *stats, in_chans, train=True, hflip=sg.hflip)
    train = DataLoader(
        SegmentDataset(base, subset, transform),
        batch_size=sg.batch_size,
        sampler=sampler,
        num_workers=sg.workers,
        drop_last=True,
        persistent_workers=sg.workers > 0,
        pin_memory=torch.cuda.is_available(),  # pinned pages copy to the GPU without a host wait
    )
    val_loader = eval_loader(base, val.tolist(), img_size, in_chans, sg.workers, stats) if len(val) else None
    return SegmentSplits(
        train=train,
        val=val_loader,
        sampler=sampler,
        num_images=len(subset),
        num_val=len(val),
        num_classes=num_classes,
        img_size=img_size,
        stats=stats,
        data=data_identity(train=base, test=test, subset=subset, val=val),
        classes=tuple(base.mask_classes),
    )


def held_out(sg: SegmentConfig, num_images: int) -> int:
    """The validation images to carve from the ``num_images`` training images: ``sg.val_size``, or 10 % (at
    most 5000) when unset. A size that leaves nothing to train on is a :class:`ConfigError` that says how to
    set it: the value may come from a preset (``cpu`` holds out 1000 images) rather than from the user."""
    if sg.val_size is None:
        return default_val_size(num_images)
    if sg.val_size >= num_images:
        raise ConfigError(
            f"segment.val_size: {sg.val_size} validation images (from --val-size, --set or the --config "
            f"preset) do not fit the {num_images} training images of {sg.data}; pass --val-size N with "
            f"N < {num_images} (10 % is {default_val_size(num_images)}, 0 validates nothing)"
        )
    return sg.val_size


# --------------------------------------------------------------------------- model and optimizer
def build_segmenter(
    args: dict[str, Any], state: dict[str, torch.Tensor], num_classes: int, sg: SegmentConfig, source: str
) -> Segmenter:
    """The encoder (strictly loaded, with the recipe's drop path) under a new pyramid + head or linear head."""
    torch.manual_seed(sg.seed)  # the new layers' initialisation
    vit = build_vit(args, drop_path_rate=sg.drop_path if sg.mode == "finetune" else 0.0)
    load_strict(vit, state, f"encoder {source}")
    return Segmenter(vit, num_classes, sg.mode, sg.pyramid_dim, sg.head_dim, tuple(sg.scales))


def optimizer_groups(model: Segmenter, sg: SegmentConfig) -> list[dict]:
    """Layer-wise lr decay over the encoder (:func:`~semaim.engine.optim.layer_decay_groups`; nothing when
    frozen), the full lr for the decoder; no weight decay on norms, biases, cls and position."""
    groups = (
        []
        if sg.mode == "linear"
        else layer_decay_groups(model.encoder, sg.weight_decay, sg.layer_decay, len(model.encoder.blocks))
    )
    groups += [{**g, "lr_scale": 1.0} for g in param_groups(model.decoder, sg.weight_decay)]
    return [g for g in groups if g["params"]]


@torch.no_grad()
def evaluate(
    model: Segmenter, loader: DataLoader, num_classes: int, device: torch.device, precision: str
) -> dict[str, Any]:
    """mIoU, pixel accuracy and per-class IoU over the whole loader, in eval mode (restored afterwards)."""
    was_training = model.training
    model.eval()
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64)
    try:
        for images, masks in loader:
            with autocast_context(device, precision):
                logits = model(images.to(device, non_blocking=True))
            confusion += confusion_matrix(logits.argmax(1).cpu(), masks, num_classes)
    finally:
        model.train(was_training)
    return segmentation_scores(confusion)


# --------------------------------------------------------------------------- the run
class SegmentTask(SupervisedTask):
    """Per-pixel cross-entropy (ignoring ``IGNORE_INDEX``); validation mIoU selects (``best_val_miou``)."""

    name, kind, metric = "segment", KIND_SEGMENT, "miou"
    recorded = plotted = ("miou", "pixel_acc")

    def prepare(
        self,
        sg: SegmentConfig,
        args: dict[str, Any],
        weights: dict[str, torch.Tensor],
        source: str,
        device: torch.device,
    ) -> tuple[SegmentSplits, Segmenter, torch.optim.Optimizer]:
        """The splits, the segmenter and AdamW (layer decay over the encoder, the full lr for the decoder)."""
        splits = open_splits(sg, args)
        model = build_segmenter(args, weights, splits.num_classes, sg, source).to(device)
        return (
            splits,
            model,
            torch.optim.AdamW(optimizer_groups(model, sg), lr=self.base_lr(sg), betas=sg.betas),
        )

    def base_lr(self, sg: SegmentConfig) -> float:
        return sg.run_lr

    def header_notes(self, sg: SegmentConfig) -> tuple[str, str]:
        return f"{sg.mode}, ", ""

    def train_step(
        self,
        state: SupervisedState,
        batch: tuple[torch.Tensor, torch.Tensor],
        lr: float,
        device: torch.device,
        out: Path,
    ) -> tuple[float, float]:
        """One AdamW step with layer-wise lr: ``-> (loss, grad norm)``. Drop path and dropout seeded per step."""
        sg = state.cfg.segment
        torch.manual_seed(sample_seed(sg.seed, state.step, 0))
        set_lr(state.optimizer, lr)
        images, masks = (t.to(device, non_blocking=True) for t in batch)
        with autocast_context(device, state.precision):
            logits = state.model(images)
        loss = F.cross_entropy(logits.float(), masks, ignore_index=IGNORE_INDEX)
        params = [p for g in state.optimizer.param_groups for p in g["params"]]  # not a frozen encoder's
        return optimizer_step(state, loss, params, sg.clip_grad)

    def score(
        self, state: SupervisedState, model: nn.Module, loader: DataLoader, device: torch.device
    ) -> dict[str, Any]:
        return evaluate(model, loader, state.num_classes, device, state.precision)

    def test_loader(self, state: SupervisedState, splits: SegmentSplits) -> DataLoader:
        sg, in_chans = state.cfg.segment, state.args["in_chans"]
        test = open_segmentation(sg.data, "test", in_chans, splits.num_classes)
        return eval_loader(test, list(range(len(test))), splits.img_size, in_chans, sg.workers, splits.stats)

    def result(
        self, state: SupervisedState, splits: SegmentSplits, scores: dict[str, Any], test: DataLoader
    ) -> dict[str, Any]:
        sg = state.cfg.segment
        return {
            "test_miou": scores["miou"],
            "test_pixel_acc": scores["pixel_acc"],
            "test_iou": dict(zip(splits.classes, scores["iou"], strict=True)),
            "selected": sg.select,
            "mode": sg.mode,
            "best_val_miou": best_val(state, splits),
            "train_images": splits.num_images,
            "val_images": splits.num_val,
            "test_images": len(test.dataset),
        }


def segment(
    cfg: SegmentRunConfig,
    out_dir: str | Path,
    resume: bool = False,
    force: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Train ``cfg.encoder`` with a segmentation head on ``cfg.segment.data``'s training split, validate on
    a split carved from it, score the test split once at the end (``segment.select``: the last or the
    best-validation weights). Returns the test scores, the best validation mIoU and the wall time."""
    result = run(SegmentTask(), cfg, out_dir, resume, force, progress)
    print(
        f"semaim segment done: test mIoU {result['test_miou']:.2f}%, pixel accuracy {result['test_pixel_acc']:.2f}% "
        f"({cfg.segment.select} weights; best validation mIoU {result['best_val_miou']:.2f}%) after "
        f"{result['steps']} steps in {format_seconds(result['wall_s'])}; checkpoint {Path(out_dir) / LAST}"
    )
    return result


@torch.no_grad()
def predict_masks(run_dir: str | Path, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A finished run's predictions on test images ``indices`` (its ``checkpoint-last.pt``, as scored when
    ``select: last``): ``(images (N, C, H, W) in [0, 1], true masks (N, H, W), predicted masks (N, H, W))``."""
    ckpt = load_checkpoint(Path(run_dir) / LAST, KIND_SEGMENT)
    sg, args = SegmentRunConfig.from_dict(ckpt["config"]).segment, ckpt["model_args"]
    model = Segmenter(
        build_vit(args), ckpt["num_classes"], sg.mode, sg.pyramid_dim, sg.head_dim, tuple(sg.scales)
    )
    model.load_state_dict(ckpt["model"])
    model.eval()
    in_chans, num_classes = args["in_chans"], ckpt["num_classes"]
    base = open_segmentation(sg.data, "train", in_chans, num_classes)  # the normalisation the run used
    mean, std = channel_stats(base.mean, in_chans), channel_stats(base.std, in_chans)
    test = open_segmentation(sg.data, "test", in_chans, num_classes)
    loader = eval_loader(test, indices, image_size(args), in_chans, 0, (tuple(mean), tuple(std)))
    images, masks = next(iter(loader))
    predicted = model(images).argmax(1)
    shown = images * torch.tensor(std).view(1, -1, 1, 1) + torch.tensor(mean).view(1, -1, 1, 1)
    return shown.clamp(0, 1), masks, predicted
