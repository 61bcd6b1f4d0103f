"""Shared tiny configurations: 32 px, patch 4-8, width 32-64, 2-4 blocks."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
import torch

from semaim import SemAIM

TINY = dict(img_size=32, patch_size=4, embed_dim=32, depth=2, num_heads=2, decoder_depth=2)


def tiny_model(**overrides) -> SemAIM:
    torch.manual_seed(0)
    return SemAIM(**{**TINY, **overrides})


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


def make_image_folder(root, classes=("cat", "dog"), per_class=8, size=(40, 36), nested=True, seed=0):
    """Write smooth random PNG/JPEG images: ImageFolder layout (class sub-folders) or a flat folder."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    paths = []
    for name in classes:
        folder = root / name if nested else root
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            low = rng.integers(0, 255, size=(4, 4, 3), dtype=np.uint8)
            img = Image.fromarray(low).resize(size, Image.BILINEAR)
            ext = ".png" if i % 2 else ".jpg"
            path = folder / f"{name}_{i}{ext}"
            img.save(path)
            paths.append(path)
    return paths


TINY_RUN = [
    "--set", "model.img_size=32", "--set", "model.patch_size=8", "--set", "model.embed_dim=32",
    "--set", "model.depth=2", "--set", "model.num_heads=2", "--set", "model.decoder_depth=2",
    "--workers", "0", "--no-progress",
]  # fmt: skip


def write_idx(path, array):
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def make_fmnist_dir(root, n_train=12, n_test=6):
    rng = np.random.default_rng(0)
    write_idx(root / "train-images-idx3-ubyte.gz", rng.integers(0, 255, (n_train, 28, 28)))
    write_idx(root / "train-labels-idx1-ubyte.gz", np.arange(n_train) % 10)
    write_idx(root / "t10k-images-idx3-ubyte.gz", rng.integers(0, 255, (n_test, 28, 28)))
    write_idx(root / "t10k-labels-idx1-ubyte.gz", np.arange(n_test) % 10)
