"""Batches: per-sample seeded augmentation, bad-image handling, and a resumable, sharded epoch sampler."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Dataset, Sampler

from ..errors import BadImageError, DataError
from .transforms import PretrainTransform


class AugmentedDataset(Dataset):
    """``dataset[(index, sample_seed)] -> (image, label)``; ``None`` for a bad image when skipping."""

    def __init__(self, base: Dataset, transform: PretrainTransform, skip_bad: bool = False) -> None:
        self.base, self.transform, self.skip_bad = base, transform, skip_bad

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, item: tuple[int, int] | int) -> tuple[torch.Tensor, int] | None:
        index, seed = item if isinstance(item, tuple) else (item, item)
        try:
            img = self.base.load(index)
        except BadImageError:
            if self.skip_bad:
                return None
            raise
        g = torch.Generator().manual_seed(seed) if self.transform.train else None
        return self.transform(img, g), int(self.base.labels[index])


def collate(batch: list[tuple[torch.Tensor, int] | None]) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Stack a batch; bad images (``None``) are dropped and counted."""
    good = [b for b in batch if b is not None]
    if not good:
        raise BadImageError(f"every image in a batch of {len(batch)} was unreadable")
    images = torch.stack([b[0] for b in good])
    labels = torch.tensor([b[1] for b in good], dtype=torch.int64)
    return images, labels, len(batch) - len(good)


def sample_seed(seed: int, epoch: int, position: int) -> int:
    """A per-sample augmentation seed from (run seed, epoch, position in the epoch's global order)."""
    return (seed * 0x9E3779B1 + (epoch + 1) * 0x85EBCA77 + position * 0xC2B2AE3D) % (2**63)


class EpochSampler(Sampler):
    """Shuffled, sharded and resumable: yields ``(index, sample_seed)`` for one rank, one epoch.

    The epoch's permutation is drawn from ``seed + epoch``. Micro-step ``s`` of the epoch covers the
    global positions ``[s·G, (s+1)·G)`` with ``G = micro_batch × world``; rank ``r`` takes every
    ``world``-th of them starting at ``r``, so the ranks together see exactly what one process with the
    same global batch would. Incomplete optimizer steps at the end of an epoch are dropped.
    """

    def __init__(
        self, num_samples: int, micro_batch: int, accum_steps: int, seed: int, rank: int = 0, world: int = 1
    ) -> None:
        self.n, self.micro_batch, self.accum = num_samples, micro_batch, accum_steps
        self.seed, self.rank, self.world = seed, rank, world
        self.global_micro = micro_batch * world
        self.steps_per_epoch = num_samples // (self.global_micro * accum_steps)
        if self.steps_per_epoch == 0:
            raise DataError(
                f"data: {num_samples} images are fewer than one optimizer step's batch "
                f"({self.global_micro * accum_steps}); lower --batch-size or use more images"
            )
        self.epoch, self.start_step = 0, 0

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        """Position the sampler at optimizer step ``start_step`` of ``epoch`` (for resuming)."""
        self.epoch, self.start_step = epoch, start_step

    def __len__(self) -> int:
        return (self.steps_per_epoch - self.start_step) * self.accum * self.micro_batch

    def __iter__(self) -> Iterator[tuple[int, int]]:
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        perm = torch.randperm(self.n, generator=g).tolist()
        for micro in range(self.start_step * self.accum, self.steps_per_epoch * self.accum):
            base = micro * self.global_micro
            for j in range(self.rank, self.global_micro, self.world):
                yield perm[base + j], sample_seed(self.seed, self.epoch, base + j)
