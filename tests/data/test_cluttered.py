"""Cluttered Fashion-MNIST: deterministic, off-centre, labels kept."""

from __future__ import annotations

import numpy as np
import pytest

from semaim.data import open_dataset
from semaim.data.cluttered import ClutteredFashionMNIST
from tests.conftest import make_fmnist_dir


@pytest.fixture
def fmnist_root(tmp_path):
    make_fmnist_dir(tmp_path, n_train=40, n_test=10)
    return tmp_path


def test_images_are_a_function_of_seed_split_and_index(fmnist_root):
    a = ClutteredFashionMNIST(fmnist_root, "train")
    b = ClutteredFashionMNIST(fmnist_root, "train")
    img = a.load(3)
    assert img.shape == (1, 64, 64) and str(img.dtype) == "torch.uint8"
    assert (img == b.load(3)).all()
    assert not (img == a.load(4)).all()
    assert not (img == ClutteredFashionMNIST(fmnist_root, "train", seed=1).load(3)).all()
    assert not (ClutteredFashionMNIST(fmnist_root, "test").load(3) == img).all()
    assert (a.labels == a.source.labels).all() and len(a) == 40


def test_the_object_is_rescaled_and_placed_off_centre(fmnist_root):
    # Without clutter and texture only the object is left; the fake items have no black pixels, so
    # the non-zero box is the pasted item.
    data = ClutteredFashionMNIST(fmnist_root, "train", clutter=0, texture=0)
    sizes, centres = [], []
    for i in range(len(data)):
        ys, xs = np.nonzero(data.render(i))
        sizes.append(ys.max() - ys.min() + 1)
        centres.append(((ys.max() + ys.min()) / 2, (xs.max() + xs.min()) / 2))
    assert min(sizes) >= 22 and max(sizes) <= 40 and max(sizes) - min(sizes) >= 8
    centres = np.array(centres)
    assert np.ptp(centres[:, 0]) > 15 and np.ptp(centres[:, 1]) > 15  # far from always the middle


def test_clutter_and_texture_are_fainter_than_the_object(fmnist_root):
    plain = ClutteredFashionMNIST(fmnist_root, "train", clutter=0, texture=0).render(0)
    full = ClutteredFashionMNIST(fmnist_root, "train").render(0)
    outside = plain == 0
    assert full[outside].mean() > 0  # texture / clutter where the object is not
    assert full[outside].max() <= 0.35 * 255 + 48 + 1  # dimmed clutter over the texture


def test_data_spec_and_bad_canvas(fmnist_root):
    data = open_dataset(f"cluttered-fashion-mnist:{fmnist_root}", "test")
    assert isinstance(data, ClutteredFashionMNIST) and len(data) == 10
    with pytest.raises(ValueError, match="canvas"):
        ClutteredFashionMNIST(fmnist_root, canvas=32)
    with pytest.raises(FileNotFoundError, match="Fashion-MNIST"):
        open_dataset(f"cluttered-fashion-mnist:{fmnist_root / 'missing'}")
