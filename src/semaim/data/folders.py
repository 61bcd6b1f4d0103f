"""A folder of images as a dataset: ImageFolder layout (class sub-folders give labels) or any folder."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch.utils.data import Dataset

from ..errors import BadImageError, DataError, MissingFileError

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


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

    def __init__(self, root: str | Path, mode: str = "RGB", classes: tuple[str, ...] = ()) -> None:
        """``classes``: the class list to number labels by (the train split's), else this folder's own."""
        root = Path(root)
        if not root.exists():
            raise MissingFileError(f"data folder not found: {root}")
        if not root.is_dir():
            raise DataError(f"data: {root} is not a folder (and not 'fashion-mnist')")
        files = sorted(
            Path(dirpath) / name
            for dirpath, _, names in os.walk(root, followlinks=True)
            for name in names
            if name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith(".")
        )
        if not files:
            raise DataError(f"data: no images found under {root} (looked for {', '.join(IMAGE_EXTENSIONS)})")
        tops = [f.relative_to(root).parts for f in files]
        if all(len(parts) == 2 for parts in tops):
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
        """A hash of the class list and of every file's relative path, size and mtime: changed files, new hash."""
        return hash_files(hashlib.sha1(json.dumps([self.mode, self.classes]).encode()), self.root, self.files)

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
