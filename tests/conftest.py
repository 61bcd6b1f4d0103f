"""Shared tiny configurations: 32 px, patch 4-8, width 32-64, 2-4 blocks."""

from __future__ import annotations

import contextlib
import gzip
from collections.abc import Iterator

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


def _fp32_switches() -> list[tuple[object, str]]:
    """The switches that decide whether CUDA fp32 matmuls and convolutions may use TF32.

    torch >= 2.9 has the ``fp32_precision`` API; mixing it with the legacy ``allow_tf32`` flags raises, so
    only one of the two is ever read or written.
    """
    if hasattr(torch.backends.cudnn, "conv"):
        return [(torch.backends.cuda.matmul, "fp32_precision"), (torch.backends.cudnn.conv, "fp32_precision")]
    return [(torch.backends.cuda.matmul, "allow_tf32"), (torch.backends.cudnn, "allow_tf32")]


def backend_fp32_settings() -> dict[str, object]:
    """The current value of every fp32 switch, by name: what a test must leave as it found it."""
    return {f"{type(owner).__name__}.{name}": getattr(owner, name) for owner, name in _fp32_switches()}


@contextlib.contextmanager
def exact_fp32_math() -> Iterator[None]:
    """fp32 really in fp32 on CUDA (no TF32 in matmuls or the patch embedding's convolution), then restore.

    Set and restored by plain assignment: the flags live behind ``__getattr__``/``__setattr__``, which
    pytest's ``monkeypatch`` cannot undo (it deletes the attribute it patched in).
    """
    switches = _fp32_switches()
    saved = [getattr(owner, name) for owner, name in switches]
    exact = "ieee" if switches[0][1] == "fp32_precision" else False
    try:
        for owner, name in switches:
            setattr(owner, name, exact)
        yield
    finally:
        for (owner, name), value in zip(switches, saved, strict=True):
            setattr(owner, name, value)


@pytest.fixture(autouse=True)
def _backend_switches_untouched() -> Iterator[None]:
    """Fail the test that leaves a global fp32 switch changed: later tests would run in another precision."""
    before = backend_fp32_settings()
    yield
    after = backend_fp32_settings()
    assert after == before, f"a test left torch's fp32 switches changed: {before} -> {after}"


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
    "--set",
    "model.img_size=32",
    "--set",
    "model.patch_size=8",
    "--set",
    "model.embed_dim=32",
    "--set",
    "model.depth=2",
    "--set",
    "model.num_heads=2",
    "--set",
    "model.decoder_depth=2",
    "--workers",
    "0",
    "--no-progress",
]


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
