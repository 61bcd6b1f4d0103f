"""Fashion-MNIST from its IDX files (Debian's ``dataset-fashion-mnist`` puts them in ``FASHION_MNIST_DIR``)."""

from __future__ import annotations

import gzip
import hashlib
import math
import zlib
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import DataError, MissingFileError

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
FASHION_MNIST_MEAN, FASHION_MNIST_STD = 0.2860, 0.3530


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (optionally gzipped) into a numpy array."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (EOFError, zlib.error, gzip.BadGzipFile) as err:  # truncated or not gzip at all
        raise DataError(f"{path}: cannot read, truncated or corrupt ({err})") from err
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise DataError(f"{path}: not an unsigned-byte IDX file")
    ndim = data[3]
    if len(data) < 4 + 4 * ndim:
        raise DataError(f"{path}: truncated IDX header ({len(data)} bytes for {ndim} dimensions)")
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    array = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if array.size != math.prod(shape):
        raise DataError(f"{path}: expected {math.prod(shape)} values for shape {shape}, got {array.size}")
    return array.reshape(shape)


def read_idx_of_rank(path: Path, rank: int) -> np.ndarray:
    """:func:`read_idx`, or a :class:`DataError` naming ``path`` when the array is not ``rank``-dimensional."""
    array = read_idx(path)
    if array.ndim != rank:
        raise DataError(f"{path}: expected an IDX array of rank {rank}, got rank {array.ndim} {array.shape}")
    return array


def find_idx_files(root: Path, split: str) -> list[Path]:
    """The images and labels files of ``split`` in ``root`` (gzipped or not), or a clear error."""
    files = []
    for stem in FASHION_MNIST_FILES[split]:
        found = [root / (stem + s) for s in (".gz", "") if (root / (stem + s)).is_file()]
        if not found:
            raise MissingFileError(
                f"Fashion-MNIST: {root / stem}[.gz] not found. Install Debian's dataset package with "
                "`sudo apt-get install dataset-fashion-mnist` (it puts the IDX files in "
                f"{FASHION_MNIST_DIR}), or point to the four IDX files with --data fashion-mnist:/their/dir"
            )
        files.append(found[0])
    return files


class FashionMNIST(Dataset):
    """Fashion-MNIST from IDX files: ``load(i)`` gives a ``(1, 28, 28)`` uint8 tensor."""

    classes = FASHION_MNIST_CLASSES
    mean, std = (FASHION_MNIST_MEAN,), (FASHION_MNIST_STD,)

    def __init__(self, root: str | Path = FASHION_MNIST_DIR, split: str = "train") -> None:
        images, labels = find_idx_files(Path(root), split)
        self.images = torch.from_numpy(read_idx_of_rank(images, 3).copy())
        self.labels = torch.from_numpy(read_idx_of_rank(labels, 1).astype(np.int64))
        if len(self.labels) != len(self.images):
            raise DataError(
                f"{labels}: {len(self.labels)} labels for the {len(self.images)} images of {images}"
            )
        bad = self.labels[(self.labels < 0) | (self.labels >= len(self.classes))]
        if len(bad):
            raise DataError(f"{labels}: label {int(bad[0])} out of range 0..{len(self.classes) - 1}")
        self.name = f"fashion-mnist/{split}"

    def fingerprint(self) -> str:
        """A hash of the image and label arrays: equal content, equal fingerprint."""
        digest = hashlib.sha1()
        for array in (self.images, self.labels):
            digest.update(f"{tuple(array.shape)}:{array.dtype}".encode())
            digest.update(array.numpy().tobytes())
        return digest.hexdigest()

    def __len__(self) -> int:
        return len(self.images)

    def load(self, index: int) -> torch.Tensor:
        return self.images[index][None]

    def describe(self, index: int) -> str:
        return f"{self.name}[{index}]"
