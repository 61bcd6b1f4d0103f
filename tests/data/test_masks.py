"""Dense labels of cluttered Fashion-MNIST (the pasted item's mask and box) and the mask-folder form."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
from PIL import Image

from semaim.data.cluttered import MASK_THRESHOLD, ClutteredFashionMNIST
from semaim.errors import ConfigError, DataError, MissingFileError
from semaim.evaluate.segmentation.masks import IGNORE_INDEX, MaskFolder, SegmentTransform, open_segmentation
from tests.conftest import make_fmnist_dir, write_idx


@pytest.fixture(scope="module")
def shapes_root(tmp_path_factory):
    """Items shaped like Fashion-MNIST's: a bright ellipse on an exact-zero background, with a few dark
    (below-threshold) pixels inside, so the mask is a real silhouette and not the pasted square."""
    root = tmp_path_factory.mktemp("shapes")
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[:28, :28]

    def items(n):
        out = np.zeros((n, 28, 28), dtype=np.uint8)
        for i in range(n):
            ry, rx = rng.uniform(6, 13, 2)
            inside = ((yy - 13.5) / ry) ** 2 + ((xx - 13.5) / rx) ** 2 <= 1
            out[i][inside] = rng.integers(60, 256, inside.sum())
            out[i][12:15, 12:15] = 4  # a dark print in the middle: not the item by the threshold
        return out

    write_idx(root / "train-images-idx3-ubyte.gz", items(30))
    write_idx(root / "train-labels-idx1-ubyte.gz", np.arange(30) % 10)
    write_idx(root / "t10k-images-idx3-ubyte.gz", items(10))
    write_idx(root / "t10k-labels-idx1-ubyte.gz", np.arange(10) % 10)
    return root


def test_images_are_unchanged_by_the_dense_labels(tmp_path):
    make_fmnist_dir(tmp_path, n_train=40, n_test=10)
    data = ClutteredFashionMNIST(tmp_path, "train")
    # recorded before render_dense existed: the same draws give the same images
    digest = hashlib.sha1(b"".join(data.render(i).tobytes() for i in range(8))).hexdigest()
    assert digest == "c288ca8a86c95f6ffa1baa7007b471566acbd75a"
    assert data.fingerprint() == "712f6c6da3a0764f0ae26cba9d2c9fdddb9c41e3"
    for i in range(4):
        image, mask, _ = data.render_dense(i)
        assert np.array_equal(image, data.render(i)) and mask.shape == image.shape


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_mask_is_the_pasted_item_pixel_for_pixel(shapes_root, seed):
    full = ClutteredFashionMNIST(shapes_root, "train", seed=seed)
    # Without clutter and texture the image is the pasted item alone, at the same place (the object's
    # draws come first), so its thresholded pixels are the mask the cluttered image must have.
    alone = ClutteredFashionMNIST(shapes_root, "train", seed=seed, clutter=0, texture=0)
    for i in range(6):
        label = int(full.labels[i]) + 1
        expected = np.where(alone.render(i) >= MASK_THRESHOLD, label, 0)
        image, mask, _ = full.render_dense(i)
        assert np.array_equal(mask, expected), f"seed {seed}, item {i}"
        assert set(np.unique(mask)) == {0, label}
        assert ((image > 0) & (mask == 0)).any()  # texture and clutter are there, and background
        ys, xs = np.nonzero(alone.render(i))
        square = np.zeros_like(mask, dtype=bool)
        square[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1] = True
        assert (mask[~square] == 0).all() and (
            mask[square] == 0
        ).any()  # a silhouette inside the pasted square


def test_box_is_the_masks_tight_box(shapes_root):
    data = ClutteredFashionMNIST(shapes_root, "test", seed=3)
    for i in range(len(data)):
        _, mask, (x0, y0, x1, y1) = data.render_dense(i)
        ys, xs = np.nonzero(mask)
        assert 0 <= x0 < x1 <= 64 and 0 <= y0 < y1 <= 64
        assert (x0, y0, x1, y1) == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
        inside = np.zeros_like(mask, dtype=bool)
        inside[y0:y1, x0:x1] = True
        assert (mask[~inside] == 0).all()  # the box contains the mask


def test_load_pair_and_the_class_names(shapes_root):
    data = open_segmentation(f"cluttered-fashion-mnist:{shapes_root}", "train")
    image, mask = data.load_pair(5)
    assert image.shape == (1, 64, 64) and image.dtype == torch.uint8
    assert mask.shape == (64, 64) and mask.dtype == torch.int64 and int(mask.max()) == int(data.labels[5]) + 1
    assert data.mask_classes[0] == "background" and len(data.mask_classes) == 11
    with pytest.raises(ConfigError, match="segment.num_classes"):
        open_segmentation(f"cluttered-fashion-mnist:{shapes_root}", "train", num_classes=5)
    with pytest.raises(ConfigError, match="no masks"):
        open_segmentation(f"fashion-mnist:{shapes_root}", "train")


def test_flip_moves_image_and_mask_together(shapes_root):
    data = ClutteredFashionMNIST(shapes_root, "train")
    image, mask = data.load_pair(0)
    transform = SegmentTransform((64, 64), (0.0,), (1 / 255,), in_chans=1, train=True)
    flipped = [transform(image, mask, torch.Generator().manual_seed(s)) for s in range(8)]
    assert any(torch.equal(y, mask.flip(-1)) for _, y in flipped) and any(
        torch.equal(y, mask) for _, y in flipped
    )
    for x, y in flipped:  # wherever the mask went, the image went too
        assert torch.equal(
            x[0].round().long(),
            image[0].long().flip(-1) if torch.equal(y, mask.flip(-1)) else image[0].long(),
        )
    small = SegmentTransform((32, 32), (0.0,), (1.0,), in_chans=3, train=False)
    x, y = small(image, mask)
    assert (
        x.shape == (3, 32, 32)
        and y.shape == (32, 32)
        and set(y.unique().tolist()) <= set(mask.unique().tolist())
    )


# --------------------------------------------------------------------------- the folder form
def write_pair(root, stem, size=(20, 16), mask_size=None, values=(0, 1, 2), mode="L"):
    """One image and its mask (``values`` in horizontal bands) under ``root/images`` and ``root/masks``."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((*size[::-1], 3), 120, dtype=np.uint8)).save(root / "images" / f"{stem}.jpg")
    w, h = mask_size or size
    bands = np.array(values, dtype=np.uint8)[np.arange(h) * len(values) // h]
    Image.fromarray(np.repeat(bands[:, None], w, axis=1), mode).save(root / "masks" / f"{stem}.png")


def test_mask_folder_pairs_by_stem(tmp_path):
    write_pair(tmp_path / "train", "a", values=(0, 2, IGNORE_INDEX))
    write_pair(tmp_path / "train", "b")
    data = MaskFolder(tmp_path / "train", num_classes=3)
    assert len(data) == 2 and data.describe(0).endswith("a.jpg") and data.labels.tolist() == [0, 0]
    image, mask = data.load_pair(0)
    assert image.size == (20, 16) and mask.shape == (16, 20)
    assert set(mask.unique().tolist()) == {0, 2, IGNORE_INDEX}
    data.check_masks(3)


@pytest.mark.parametrize(
    "problem, error, names",
    [
        (lambda r: write_pair(r, "c", mask_size=(10, 16)), DataError, "c.png"),  # size differs
        (lambda r: write_pair(r, "c", values=(0, 3)), DataError, "c.png"),  # class id 3 >= 3
        (lambda r: (r / "masks" / "b.png").unlink(), DataError, "b.jpg"),  # an image without its mask
    ],
)
def test_bad_mask_folder_names_the_file(tmp_path, problem, error, names):
    write_pair(tmp_path, "a")
    write_pair(tmp_path, "b")
    problem(tmp_path)
    with pytest.raises(error, match=names):
        MaskFolder(tmp_path, num_classes=3).check_masks(3)


def test_images_without_a_masks_folder(tmp_path):
    write_pair(tmp_path, "a")
    for mask in (tmp_path / "masks").iterdir():
        mask.unlink()
    (tmp_path / "masks").rmdir()
    with pytest.raises(DataError, match="no .*masks folder"):
        MaskFolder(tmp_path, num_classes=3)
    with pytest.raises(MissingFileError, match="images"):
        MaskFolder(tmp_path / "nowhere", num_classes=3)
    with pytest.raises(ConfigError, match="segment.num_classes"):
        open_segmentation(str(tmp_path), "train")
