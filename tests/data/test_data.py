"""Data: Fashion-MNIST IDX files, image folders, bad images, augmentation, the resumable sampler."""

from __future__ import annotations

import pytest
import torch

from semaim.data import open_dataset
from semaim.data.folders import ImageFolder
from semaim.data.idx import FashionMNIST, read_idx
from semaim.data.sampler import AugmentedDataset, EpochSampler, collate
from semaim.data.transforms import PretrainTransform, sample_crop
from semaim.errors import BadImageError
from tests.conftest import make_fmnist_dir, make_image_folder


def test_fashion_mnist_from_a_folder_of_idx_files(tmp_path):
    make_fmnist_dir(tmp_path)
    train = open_dataset(f"fashion-mnist:{tmp_path}", "train")
    test = open_dataset(f"fashion-mnist:{tmp_path}", "test")
    assert len(train) == 12 and len(test) == 6
    assert train.load(3).shape == (1, 28, 28) and train.labels[3] == 3
    assert read_idx(tmp_path / "train-images-idx3-ubyte.gz").shape == (12, 28, 28)


def test_the_installed_debian_package():
    train = FashionMNIST()
    assert len(train) == 60000 and len(FashionMNIST(split="test")) == 10000
    assert train.labels.unique().tolist() == list(range(10))


def test_missing_fashion_mnist_says_how_to_install(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        open_dataset(f"fashion-mnist:{tmp_path}")


def test_image_folder_layouts(tmp_path):
    make_image_folder(tmp_path / "labelled", classes=("b", "a"), per_class=3)
    (tmp_path / "labelled" / "a" / "notes.txt").write_text("not an image")
    ds = ImageFolder(tmp_path / "labelled")
    assert ds.classes == ("a", "b") and len(ds) == 6
    assert ds.labels.tolist() == [0, 0, 0, 1, 1, 1]
    make_image_folder(tmp_path / "flat", classes=("x",), per_class=4, nested=False)
    make_image_folder(tmp_path / "flat" / "deeper" / "still", classes=("y",), per_class=2)
    flat = ImageFolder(tmp_path / "flat")
    assert len(flat) == 6 and (flat.labels == -1).all()
    assert flat.load(0).mode == "RGB"


def test_train_and_val_subfolders_are_splits(tmp_path):
    make_image_folder(tmp_path / "train", per_class=3)
    make_image_folder(tmp_path / "val", per_class=1)
    assert len(open_dataset(str(tmp_path), "train")) == 6
    assert len(open_dataset(str(tmp_path), "val")) == 2


def test_missing_or_empty_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="data folder not found"):
        open_dataset(str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.md").write_text("x")
    with pytest.raises(ValueError, match="no images found under"):
        open_dataset(str(tmp_path / "empty"))


def test_corrupt_image_is_named_or_skipped(tmp_path):
    make_image_folder(tmp_path, per_class=2)
    bad = tmp_path / "cat" / "broken.png"
    bad.write_bytes(b"\x89PNG not really")
    ds = ImageFolder(tmp_path)
    index = ds.files.index(bad)
    transform = PretrainTransform((32, 32), ds.mean, ds.std)
    with pytest.raises(BadImageError, match="broken.png"):
        AugmentedDataset(ds, transform)[(index, 0)]
    skipping = AugmentedDataset(ds, transform, skip_bad=True)
    batch = [skipping[(i, i)] for i in range(len(ds))]
    images, labels, n_bad = collate(batch)
    assert n_bad == 1 and images.shape == (len(ds) - 1, 3, 32, 32)


def test_augmentation_is_deterministic_per_seed_and_normalised():
    img = torch.randint(0, 256, (1, 28, 28), dtype=torch.uint8)
    t = PretrainTransform((32, 32), (0.5,), (0.5,), in_chans=3)
    a = t(img, torch.Generator().manual_seed(1))
    b = t(img, torch.Generator().manual_seed(1))
    c = t(img, torch.Generator().manual_seed(2))
    assert a.shape == (3, 32, 32) and torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(a[0], a[1])  # greyscale replicated to 3 channels
    assert a.min() >= -1.0 - 1e-5 and a.max() <= 1.0 + 1e-5
    g = torch.Generator().manual_seed(0)
    for _ in range(200):
        top, left, h, w = sample_crop(28, 40, (0.2, 1.0), (3 / 4, 4 / 3), g)
        assert top >= 0 and top + h <= 28 and left >= 0 and left + w <= 40
        assert 0.2 * 28 * 40 * 0.9 <= h * w <= 28 * 40


def test_sampler_ranks_cover_the_single_process_batches():
    n, micro, seed = 37, 4, 3
    single = list(EpochSampler(n, 2 * micro, 1, seed))
    ranks = [list(EpochSampler(n, micro, 1, seed, rank=r, world=2)) for r in range(2)]
    steps = EpochSampler(n, 2 * micro, 1, seed).steps_per_epoch
    for s in range(steps):
        one = set(single[s * 2 * micro : (s + 1) * 2 * micro])
        two = set(ranks[0][s * micro : (s + 1) * micro]) | set(ranks[1][s * micro : (s + 1) * micro])
        assert one == two  # same images and same augmentation seeds, step by step
    assert len(single) == steps * 2 * micro


def test_sampler_resumes_mid_epoch_and_reshuffles_each_epoch():
    s = EpochSampler(50, 5, 2, seed=0)
    assert s.steps_per_epoch == 5
    s.set_epoch(1)
    full = list(s)
    s.set_epoch(1, start_step=2)
    assert list(s) == full[2 * 2 * 5 :] and len(s) == len(full) - 20
    s.set_epoch(2)
    assert [i for i, _ in list(s)] != [i for i, _ in full]
    with pytest.raises(ValueError, match="fewer than one optimizer step"):
        EpochSampler(7, 4, 2, seed=0)


def test_device_normalisation_gives_the_workers_values():
    """uint8 batches normalised where they land equal the transform's own float output, greyscale or RGB."""
    from semaim.data.transforms import Normalize, PretrainTransform

    for channels, mean, std in ((1, (0.3,), (0.2,)), (3, (0.4, 0.5, 0.6), (0.2, 0.25, 0.3))):
        images = torch.randint(0, 256, (4, channels, 8, 8), dtype=torch.uint8)
        as_uint8 = PretrainTransform((8, 8), mean, std, in_chans=3, train=False, normalize=False)
        as_float = PretrainTransform((8, 8), mean, std, in_chans=3, train=False)
        expected = torch.stack([as_float(image) for image in images])
        assert torch.equal(Normalize(as_uint8)(torch.stack([as_uint8(image) for image in images])), expected)
