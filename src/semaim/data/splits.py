"""Seeded, stratified index splits of a labelled training set: a validation split carved out of it for
every choice (recipe, lr, epoch), and label subsets (K per class, or a fraction) for label efficiency.

Every function is a pure function of ``(labels, sizes, seed)``: the same call gives the same indices on
any machine, so runs that differ only in their encoder see the same images.
"""

from __future__ import annotations

import math

import torch

from ..errors import ConfigError, DataError


def _per_class(labels: torch.Tensor, pool: torch.Tensor, seed: int) -> dict[int, torch.Tensor]:
    """``class -> its indices in pool``, each in a seeded random order."""
    g = torch.Generator().manual_seed(seed)
    shuffled = pool[torch.randperm(len(pool), generator=g)]
    return {int(c): shuffled[labels[shuffled] == c] for c in torch.unique(labels[pool])}


def _quotas(sizes: dict[int, int], total: int) -> dict[int, int]:
    """Split ``total`` over classes in proportion to ``sizes`` (largest remainder, ties by class)."""
    n = sum(sizes.values())
    exact = {c: total * s / n for c, s in sizes.items()}
    quota = {c: math.floor(e) for c, e in exact.items()}
    for c in sorted(exact, key=lambda c: (quota[c] - exact[c], c))[: total - sum(quota.values())]:
        quota[c] += 1
    return quota


def train_val_split(
    labels: torch.Tensor, val_size: int, seed: int, prefix: str = "finetune."
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(train indices, validation indices)``: ``val_size`` images, every class in proportion; sorted."""
    pool = torch.arange(len(labels))
    if not 0 <= val_size < len(labels):
        raise ConfigError(
            f"{prefix}val_size: expected 0 <= val_size < the {len(labels)} training images, got {val_size}"
        )
    classes = _per_class(labels, pool, seed)
    quota = _quotas({c: len(i) for c, i in classes.items()}, val_size)
    val = torch.cat([i[: quota[c]] for c, i in classes.items()])
    keep = torch.ones(len(labels), dtype=torch.bool)
    keep[val] = False
    return pool[keep], val.sort().values


def label_subset(
    labels: torch.Tensor,
    pool: torch.Tensor,
    per_class: int | None = None,
    fraction: float | None = None,
    seed: int = 0,
    prefix: str = "finetune.",
) -> torch.Tensor:
    """The indices of ``pool`` kept for training: ``per_class`` images of every class, or ``fraction`` of
    each class (at least one), drawn with ``seed``; all of ``pool`` when both are ``None``. Sorted."""
    if per_class is None and fraction is None:
        return pool
    classes = _per_class(labels, pool, seed)
    if per_class is not None:
        smallest = min(len(i) for i in classes.values())
        if not 1 <= per_class <= smallest:
            raise ConfigError(
                f"{prefix}labels_per_class: expected 1 to {smallest} (the smallest class of the training "
                f"split has {smallest} images), got {per_class}"
            )
        return torch.cat([i[:per_class] for i in classes.values()]).sort().values
    return torch.cat([i[: max(1, round(fraction * len(i)))] for i in classes.values()]).sort().values


def default_val_size(num_images: int) -> int:
    """10 % of the training split, at most 5000 images."""
    return min(5000, num_images // 10)


def labelled_subset(
    labels: torch.Tensor,
    *,
    val_size: int | None,
    split_seed: int,
    per_class: int | None,
    fraction: float | None,
    seed: int,
    limit: int | None = None,
    prefix: str = "finetune.",
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(training indices, validation indices)`` as fine-tuning and the label-efficiency floors draw them:
    the validation split carved out first (``val_size``, default :func:`default_val_size`), then the first
    ``limit`` of the rest, then the label subset. The same arguments give the same images everywhere.

    Labels of a single class are a :class:`DataError`: a classifier trained on them scores 100 %."""
    classes = torch.unique(labels)
    if len(classes) == 1:
        raise DataError(
            f"data: every one of the {len(labels)} labelled training images is of class {int(classes[0])}; "
            "a classifier needs at least two classes"
        )
    val_size = default_val_size(len(labels)) if val_size is None else val_size
    pool, val = train_val_split(labels, val_size, split_seed, prefix)
    pool = pool[:limit] if limit else pool
    return label_subset(labels, pool, per_class, fraction, seed, prefix), val
