"""Datasets, the pretraining augmentation (Table S1) and a resumable, distributed sampler.

Data specs:

- ``fashion-mnist``: Debian's ``dataset-fashion-mnist`` (IDX files in ``/usr/share/datasets/fashion-mnist``);
  ``fashion-mnist:/some/dir`` reads the same four files from another folder.
- ``cluttered-fashion-mnist``: the same items off-centre among clutter on a 64 px canvas
  (:mod:`semaim.cluttered`); ``cluttered-fashion-mnist:/some/dir`` likewise.
- any other string: a folder of images, ImageFolder layout (class sub-folders give labels) or a flat or
  nested folder without labels. A folder with ``train/`` (and ``val/``) sub-folders uses them as splits.

Augmentation randomness is drawn from a generator seeded by ``(seed, epoch, position in the epoch)``,
so a batch is the same whatever worker builds it and however often the run was resumed.
"""

from __future__ import annotations

import gzip
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, Sampler
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
FASHION_MNIST_MEAN, FASHION_MNIST_STD = 0.2860, 0.3530
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


class BadImageError(ValueError):
    """A corrupt or unreadable image file."""


# --------------------------------------------------------------------------- datasets
def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (optionally gzipped) into a numpy array."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    array = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if array.size != math.prod(shape):
        raise ValueError(f"{path}: expected {math.prod(shape)} values for shape {shape}, got {array.size}")
    return array.reshape(shape)


class FashionMNIST(Dataset):
    """Fashion-MNIST from IDX files: ``load(i)`` gives a ``(1, 28, 28)`` uint8 tensor."""

    classes = FASHION_MNIST_CLASSES
    mean, std = (FASHION_MNIST_MEAN,), (FASHION_MNIST_STD,)

    def __init__(self, root: str | Path = FASHION_MNIST_DIR, split: str = "train") -> None:
        root = Path(root)
        files = []
        for stem in FASHION_MNIST_FILES[split]:
            found = [root / (stem + s) for s in (".gz", "") if (root / (stem + s)).is_file()]
            if not found:
                raise FileNotFoundError(
                    f"Fashion-MNIST: {root / stem}[.gz] not found. Install Debian's dataset package with "
                    "`sudo apt-get install dataset-fashion-mnist` (it puts the IDX files in "
                    f"{FASHION_MNIST_DIR}), or point to the four IDX files with --data fashion-mnist:/their/dir"
                )
            files.append(found[0])
        self.images = torch.from_numpy(read_idx(files[0]).copy())
        self.labels = torch.from_numpy(read_idx(files[1]).astype(np.int64))
        self.name = f"fashion-mnist/{split}"

    def __len__(self) -> int:
        return len(self.images)

    def load(self, index: int) -> torch.Tensor:
        return self.images[index][None]

    def describe(self, index: int) -> str:
        return f"{self.name}[{index}]"


class ImageFolder(Dataset):
    """Every image file under ``root`` (sorted, recursive; other files ignored).

    ImageFolder layout (every image inside a first-level sub-folder) gives labels from the sorted
    sub-folder names; otherwise labels are -1. ``load(i)`` gives a PIL image (decoding is lazy).
    """

    mean, std = IMAGENET_MEAN, IMAGENET_STD

    def __init__(self, root: str | Path, mode: str = "RGB") -> None:
        root = Path(root)
        if not root.exists():
            raise FileNotFoundError(f"data folder not found: {root}")
        if not root.is_dir():
            raise ValueError(f"data: {root} is not a folder (and not 'fashion-mnist')")
        files = sorted(
            Path(dirpath) / name
            for dirpath, _, names in os.walk(root, followlinks=True)
            for name in names
            if name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith(".")
        )
        if not files:
            raise ValueError(f"data: no images found under {root} (looked for {', '.join(IMAGE_EXTENSIONS)})")
        tops = [f.relative_to(root).parts for f in files]
        if all(len(parts) == 2 for parts in tops):
            self.classes = tuple(sorted({parts[0] for parts in tops}))
            index = {c: i for i, c in enumerate(self.classes)}
            labels = [index[parts[0]] for parts in tops]
        else:
            self.classes = ()
            labels = [-1] * len(files)
        self.root, self.files, self.mode = root, files, mode
        self.labels = torch.tensor(labels, dtype=torch.int64)
        self.name = str(root)
        if mode == "L":
            self.mean, self.std = (0.449,), (0.226,)

    def __len__(self) -> int:
        return len(self.files)

    def load(self, index: int) -> Image.Image:
        path = self.files[index]
        try:
            with Image.open(path) as img:
                return img.convert(self.mode)
        except Exception as err:  # PIL raises many types for a broken file
            raise BadImageError(f"corrupt or unreadable image: {path} ({type(err).__name__}: {err})") from err

    def describe(self, index: int) -> str:
        return str(self.files[index])


def open_dataset(spec: str, split: str = "train", in_chans: int = 3) -> Dataset:
    """The base dataset behind a data spec (see the module docstring); ``split`` is train or test/val."""
    from .cluttered import SPEC as CLUTTERED  # it builds on FashionMNIST
    from .cluttered import ClutteredFashionMNIST

    if spec == CLUTTERED or spec.startswith(CLUTTERED + ":"):
        root = spec.split(":", 1)[1] if ":" in spec else FASHION_MNIST_DIR
        return ClutteredFashionMNIST(root, "train" if split == "train" else "test")
    if spec == "fashion-mnist" or spec.startswith("fashion-mnist:"):
        root = spec.split(":", 1)[1] if ":" in spec else FASHION_MNIST_DIR
        return FashionMNIST(root, "train" if split == "train" else "test")
    root = Path(spec)
    sub = root / ("train" if split == "train" else "val")
    if sub.is_dir():
        root = sub
    elif split != "train":
        raise FileNotFoundError(f"data: {root} has no val/ sub-folder to evaluate on")
    return ImageFolder(root, mode="RGB" if in_chans == 3 else "L")


# --------------------------------------------------------------------------- augmentation
def sample_crop(
    height: int, width: int, scale: tuple[float, float], ratio: tuple[float, float], g: torch.Generator
) -> tuple[int, int, int, int]:
    """RandomResizedCrop's box ``(top, left, h, w)``, drawn from ``g`` (10 tries, then a central crop)."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        u = torch.rand(4, generator=g).tolist()
        target_area = area * (scale[0] + (scale[1] - scale[0]) * u[0])
        aspect = math.exp(log_ratio[0] + (log_ratio[1] - log_ratio[0]) * u[1])
        w = round(math.sqrt(target_area * aspect))
        h = round(math.sqrt(target_area / aspect))
        if 0 < w <= width and 0 < h <= height:
            return int(u[2] * (height - h + 1)), int(u[3] * (width - w + 1)), h, w
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, round(width / ratio[0])
    elif in_ratio > ratio[1]:
        h, w = height, round(height * ratio[1])
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


class PretrainTransform:
    """Table S1: RandomResizedCrop(scale 0.2-1, bicubic) + horizontal flip, then normalise.

    Accepts a PIL image or a ``(C, H, W)`` uint8 tensor; returns ``(in_chans, H, W)`` float32.
    ``train=False`` gives the evaluation transform: resize to the model's size, no randomness.
    """

    def __init__(
        self,
        img_size: tuple[int, int],
        mean: tuple[float, ...],
        std: tuple[float, ...],
        in_chans: int = 3,
        scale: tuple[float, float] = (0.2, 1.0),
        hflip: bool = True,
        train: bool = True,
    ) -> None:
        self.img_size, self.in_chans, self.scale, self.hflip, self.train = (
            img_size,
            in_chans,
            scale,
            hflip,
            train,
        )
        self.mean = list(mean) * (in_chans // len(mean)) if len(mean) == 1 else list(mean)
        self.std = list(std) * (in_chans // len(std)) if len(std) == 1 else list(std)

    def __call__(self, img: Any, g: torch.Generator | None = None) -> torch.Tensor:
        if isinstance(img, Image.Image):
            width, height = img.size
        else:
            height, width = img.shape[-2:]
        if self.train:
            top, left, h, w = sample_crop(height, width, self.scale, (3 / 4, 4 / 3), g)
            img = TF.resized_crop(
                img, top, left, h, w, list(self.img_size), InterpolationMode.BICUBIC, antialias=True
            )
            if self.hflip and torch.rand(1, generator=g).item() < 0.5:
                img = TF.horizontal_flip(img)
        elif (height, width) != tuple(self.img_size):
            img = TF.resize(img, list(self.img_size), InterpolationMode.BICUBIC, antialias=True)
        x = TF.pil_to_tensor(img) if isinstance(img, Image.Image) else img
        x = x.float().div_(255)
        if x.shape[0] != self.in_chans:
            x = x.expand(self.in_chans, -1, -1)  # greyscale -> the model's channels
        return TF.normalize(x, self.mean, self.std)


class AugmentedDataset(Dataset):
    """``dataset[(index, sample_seed)] -> (image, label)``; ``None`` for a bad image when skipping."""

    def __init__(
        self, base: FashionMNIST | ImageFolder, transform: PretrainTransform, skip_bad: bool = False
    ):
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


# --------------------------------------------------------------------------- sampling
def sample_seed(seed: int, epoch: int, position: int) -> int:
    """A per-sample augmentation seed from (run seed, epoch, position in the epoch's global order)."""
    return (seed * 0x9E3779B1 + (epoch + 1) * 0x85EBCA77 + position * 0xC2B2AE3D) % (2**63)


class EpochSampler(Sampler):
    """Shuffled, sharded and resumable: yields ``(index, sample_seed)`` for one rank, one epoch.

    The epoch's permutation is drawn from ``seed + epoch``. Micro-step ``s`` of the epoch covers the
    global positions ``[s·G, (s+1)·G)`` with ``G = micro_batch × world``; rank ``r`` takes every
    ``world``-th of them starting at ``r``, so the ranks together see exactly what one process with the
    same global batch would. Incomplete optimiser steps at the end of an epoch are dropped.
    """

    def __init__(
        self, num_samples: int, micro_batch: int, accum_steps: int, seed: int, rank: int = 0, world: int = 1
    ) -> None:
        self.n, self.micro_batch, self.accum = num_samples, micro_batch, accum_steps
        self.seed, self.rank, self.world = seed, rank, world
        self.global_micro = micro_batch * world
        self.steps_per_epoch = num_samples // (self.global_micro * accum_steps)
        if self.steps_per_epoch == 0:
            raise ValueError(
                f"data: {num_samples} images are fewer than one optimiser step's batch "
                f"({self.global_micro * accum_steps}); lower --batch-size or use more images"
            )
        self.epoch, self.start_step = 0, 0

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        """Position the sampler at optimiser step ``start_step`` of ``epoch`` (for resuming)."""
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
