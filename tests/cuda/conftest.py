"""Device parametrisation shared by the device tests: ``cpu`` always, ``cuda`` when a GPU is present.

A CUDA case carries the ``cuda`` marker (``pytest -m cuda`` selects them all) and is skipped with the
reason "no CUDA device" elsewhere, which ``pytest -rs`` lists in the summary.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from tests.conftest import exact_fp32_math

NO_CUDA = "no CUDA device"
CUDA_MARKS = (pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason=NO_CUDA))
DEVICES = ["cpu", pytest.param("cuda", marks=CUDA_MARKS, id="cuda")]


def on_cuda(*values: object) -> object:
    """A ``pytest.param`` that runs only where CUDA is available."""
    return pytest.param(*values, marks=CUDA_MARKS)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "cuda: needs a CUDA device (skipped without one)")
    config.addinivalue_line(
        "markers", "device_check: runs scripts/device-check.sh (deselect with -m 'not device_check')"
    )


@pytest.fixture
def exact_fp32() -> Iterator[None]:
    """fp32 really in fp32 on CUDA for the duration of one test."""
    with exact_fp32_math():
        yield


@pytest.fixture(scope="package")
def fmnist(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A tiny Fashion-MNIST (40 training, 20 test images) as a data spec."""
    from tests.conftest import make_fmnist_dir

    root = tmp_path_factory.mktemp("fmnist")
    make_fmnist_dir(root, n_train=40, n_test=20)
    return f"fashion-mnist:{root}"
