"""A folder of images as a dataset: ImageFolder layout (class sub-folders give labels) or any folder."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from ..errors import BadImageError, DataError, MissingFileError

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


WIDE_GREY_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
"""Pillow's modes for greyscale wider than 8 bits (16-bit PNG and TIFF, 16-bit PGM as ``I``), whose
``convert`` to ``L`` or ``RGB`` clips every value above 255 to white instead of scaling it."""


DECODING = "wide grey / 257"
"""Part of every folder's fingerprint: features cached when wider greyscale was clipped to white are not
reused."""


def open_image(path: Path, mode: str) -> Image.Image:
    """The image at ``path`` in ``mode`` (``RGB`` or ``L``); a :class:`BadImageError` naming the file when it
    cannot be read.

    Greyscale wider than 8 bits is scaled to 8 bits by 65535 -> 255 (x / 257, rounded): PNG stores a
    lower precision scaled up to its full 16-bit range and Pillow reads a PGM of any maxval on that
    scale, so 65535 is white whatever the sensor's depth. A 32-bit integer image outside 0..65535 is an
    error rather than a guess."""
    try:
        with Image.open(path) as img:
            if img.mode not in WIDE_GREY_MODES:
                return img.convert(mode)
            values = np.asarray(img)
    except Exception as err:  # PIL raises many types for a broken file
        raise BadImageError(f"corrupt or unreadable image: {path} ({type(err).__name__}: {err})") from err
    low, high = int(values.min()), int(values.max())
    if low < 0 or high > 65535:
        raise BadImageError(
            f"image {path}: integer values {low}..{high} do not fit 16 bits; semaim reads 8- and 16-bit "
            "images (save it as a 16-bit PNG or TIFF)"
        )
    eight = (values.astype(np.uint32) + 128) // 257
    return Image.fromarray(eight.astype(np.uint8)).convert(mode)


def images_under(folder: Path) -> list[Path]:
    """Every image file under ``folder`` (recursive, links followed, hidden files skipped), sorted."""
    return sorted(
        Path(dirpath) / name
        for dirpath, _, names in os.walk(folder, followlinks=True)
        for name in names
        if name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith(".")
    )


def hash_files(digest: Any, root: Path, paths: Iterable[Path]) -> str:
    """``digest`` (a :mod:`hashlib` object) over every file's path relative to ``root``, size and mtime, in
    order: a folder's fingerprint, which changes when a file does."""
    for path in paths:
        stat = path.stat()
        digest.update(f"{path.relative_to(root)}\t{stat.st_size}\t{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


class ImageFolder(Dataset):
    """Every image file under ``root`` (sorted, recursive; other files ignored).

    ImageFolder layout (every image inside a first-level sub-folder) gives labels from the sorted
    sub-folder names; otherwise labels are -1. ``load(i)`` gives a PIL image (decoding is lazy).
    """

    mean, std = IMAGENET_MEAN, IMAGENET_STD

    def __init__(
        self, root: str | Path, mode: str = "RGB", classes: tuple[str, ...] = (), *, classify: bool = False
    ) -> None:
        """``classes``: the class list to number labels by (the train split's), else this folder's own.
        ``classify``: the folder is to train or score a classifier, so it must be in ImageFolder layout with
        at least two classes and no empty class folder (:meth:`check_classes`)."""
        root = Path(root)
        if not root.exists():
            raise MissingFileError(f"data folder not found: {root}")
        if not root.is_dir():
            raise DataError(f"data: {root} is not a folder (and not 'fashion-mnist')")
        files = images_under(root)
        if not files:
            raise DataError(f"data: no images found under {root} (looked for {', '.join(IMAGE_EXTENSIONS)})")
        tops = [f.relative_to(root).parts for f in files]
        self.labelled = all(len(parts) == 2 for parts in tops)
        if self.labelled:
            self.classes = classes or tuple(sorted({parts[0] for parts in tops}))
            labels = self._number(root, [parts[0] for parts in tops])
        else:
            self.classes = ()
            labels = [-1] * len(files)
        self.root, self.files, self.mode = root, files, mode
        self.labels = torch.tensor(labels, dtype=torch.int64)
        self.name = str(root)
        if mode == "L":
            self.mean, self.std = (0.449,), (0.226,)
        if classify:
            self.check_classes(own=not classes)

    def empty_class_folders(self) -> list[Path]:
        """The first-level sub-folders without an image (hidden ones aside): in ImageFolder layout, each
        is a class that the class list silently lacks."""
        if not self.labelled:
            return []
        names = {parts[0] for parts in (f.relative_to(self.root).parts for f in self.files)}
        return sorted(
            p
            for p in self.root.iterdir()
            if p.is_dir() and not p.name.startswith(".") and p.name not in names
        )

    def check_classes(self, own: bool = True) -> None:
        """Refuse what cannot train or score a classifier, with a :class:`DataError` naming the folder: images
        outside the class-folder layout, and (``own``: the class list is this folder's, not the train
        split's) an empty class folder or fewer than two classes, on which every score is 100 %."""
        if not self.labelled:
            stray = next(f for f in self.files if len(f.relative_to(self.root).parts) != 2)
            raise DataError(
                f"data: {self.root} is not one class sub-folder per class ({stray} is not directly in a class "
                "sub-folder); classifying needs every image in the sub-folder named after its class"
            )
        if not own:
            return
        empty = self.empty_class_folders()
        if empty:
            raise DataError(
                f"data: class folder {empty[0]} has no images (looked for {', '.join(IMAGE_EXTENSIONS)}); "
                "add its images or remove the folder"
            )
        if len(self.classes) < 2:
            raise DataError(
                f"data: {self.root} has one class folder, {self.classes[0]!r}; a classifier needs at least two "
                "classes (every prediction would be right)"
            )

    def _number(self, root: Path, names: list[str]) -> list[int]:
        """The label of each class name in ``self.classes``; a class it lacks is a :class:`DataError`."""
        index = {c: i for i, c in enumerate(self.classes)}
        unknown = sorted(set(names) - index.keys())
        if unknown:
            raise DataError(
                f"data: class folder {unknown[0]!r} in {root} is not a class of the train split "
                f"(train has {list(self.classes)}); every evaluation class must also be a train class"
            )
        return [index[name] for name in names]

    def fingerprint(self) -> str:
        """A hash of how images are decoded, the class list and every file's relative path, size and mtime:
        changed files, new hash."""
        key = json.dumps([self.mode, self.classes, DECODING]).encode()
        return hash_files(hashlib.sha1(key), self.root, self.files)

    def __len__(self) -> int:
        return len(self.files)

    def load(self, index: int) -> Image.Image:
        return open_image(self.files[index], self.mode)

    def describe(self, index: int) -> str:
        return str(self.files[index])
