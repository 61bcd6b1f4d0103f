"""Shared tiny configurations: 32 px, patch 4-8, width 32-64, 2-4 blocks."""

from __future__ import annotations

import contextlib
import gzip
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

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


@dataclass
class QuickOrderStudy:
    """A finished quick ``semaim study orders`` run (see :func:`quick_order_study`)."""

    argv: list[str]
    out: Path
    reports: Path
    rows: list[dict]
    frozen_calls: int


@pytest.fixture(scope="session")
def quick_order_study(tmp_path_factory: pytest.TempPathFactory) -> QuickOrderStudy:
    """One quick order study on tiny cluttered data, shared by the tests that read it (it takes a while):
    two orders of the payoff study, one more order, and a named variant that reads its order source."""
    from semaim.cli import main
    from semaim.study import payoff

    root = tmp_path_factory.mktemp("order-study")
    make_fmnist_dir(root, n_train=200, n_test=20)
    variants = '["semantic-source: semantic train.order_source={pretrained:semantic-twin}", "semantic-twin: semantic"]'
    argv = [
        "study",
        "orders",
        "--quick",
        "--seeds",
        "1",
        "--data",
        f"cluttered-fashion-mnist:{root}",
        "--no-progress",
    ]
    for assignment in (
        "study.orders=[semantic,raster,semantic-source,stochastic]",
        f"study.variants={variants}",
        "study.labels_per_class=[2,0]",
        "study.epochs=[1,1]",
        "study.val_size=30",
        "study.curve_steps=[2]",
        "study.curve_labels=2",
        "study.finetune=[batch_size=10,limit=60,budget_steps=0]",
    ):
        argv += ["--set", assignment]
    out, reports = root / "study", root / "reports"
    calls = []
    scores = payoff.frozen_scores
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(payoff, "frozen_scores", lambda *a: calls.append(a) or scores(*a))
        assert main([*argv, "--out", str(out), "--report-dir", str(reports)]) == 0
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    return QuickOrderStudy(argv, out, reports, rows, len(calls))
