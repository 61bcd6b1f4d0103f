"""Shared by the evaluation tests: a tiny Fashion-MNIST folder and a checkpoint pretrained on it."""

from __future__ import annotations

import pytest

from semaim.cli import main
from tests.conftest import TINY_RUN, make_fmnist_dir


@pytest.fixture(scope="package")
def fmnist(tmp_path_factory):
    root = tmp_path_factory.mktemp("fmnist")
    make_fmnist_dir(root, n_train=40, n_test=20)
    return f"fashion-mnist:{root}"


@pytest.fixture(scope="package")
def pretrained(tmp_path_factory, fmnist):
    out = tmp_path_factory.mktemp("run") / "run"
    args = ["pretrain", "--data", fmnist, "--out", str(out), "--batch-size", "8", "--epochs", "1", *TINY_RUN]
    assert main(args) == 0
    return out / "checkpoint-last.pt"
