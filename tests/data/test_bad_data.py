"""Bad data found by fuzzing: mismatched class folders, corrupt or inconsistent IDX files, stale fingerprints."""

from __future__ import annotations

import gzip
import os

import numpy as np
import pytest

from semaim.cli import main
from semaim.data import open_dataset
from semaim.data.cluttered import ClutteredFashionMNIST
from semaim.errors import DataError
from tests.conftest import make_fmnist_dir, make_image_folder, write_idx

KNN = ["knn", "--pixels", "--workers", "0", "--no-progress", "--device", "cpu", "--ks", "1"]
TRAIN_IMAGES, TRAIN_LABELS = "train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"


# --------------------------------------------------------------------------- one class map for both splits
def test_val_labels_use_the_train_class_numbering(tmp_path):
    make_image_folder(tmp_path / "train", classes=("a", "b", "c"), per_class=2)
    make_image_folder(tmp_path / "val", classes=("b", "c"), per_class=2)
    train, val = open_dataset(str(tmp_path), "train"), open_dataset(str(tmp_path), "test")
    assert val.classes == train.classes == ("a", "b", "c")
    assert val.labels.tolist() == [1, 1, 2, 2]  # b and c keep train's numbers, not 0 and 1


def test_a_val_class_that_train_lacks_is_named(tmp_path, capsys):
    make_image_folder(tmp_path / "train", classes=("a", "b"), per_class=2)
    make_image_folder(tmp_path / "val", classes=("b", "zebra"), per_class=1)
    with pytest.raises(DataError, match=r"zebra.*val"):
        open_dataset(str(tmp_path), "test")
    assert main([*KNN, "--data", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "semaim knn: error:" in err and "zebra" in err and str(tmp_path / "val") in err


# --------------------------------------------------------------------------- IDX files
def truncate(path):
    path.write_bytes(path.read_bytes()[:40])


def garbage(path):
    path.write_bytes(b"this is not gzip at all" * 8)


def wrong_image_rank(path):
    write_idx(path, np.zeros((12, 784)))


def wrong_label_rank(path):
    write_idx(path, np.zeros((12, 1)))


def too_few_labels(path):
    write_idx(path, np.arange(11) % 10)


def label_out_of_range(path):
    write_idx(path, np.array([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 42, 0]))


@pytest.mark.parametrize(
    "damage, name, words",
    [
        (truncate, TRAIN_IMAGES, ["cannot read"]),
        (garbage, TRAIN_LABELS, ["cannot read"]),
        (wrong_image_rank, TRAIN_IMAGES, ["rank 2", "3"]),
        (wrong_label_rank, TRAIN_LABELS, ["rank 2", "1"]),
        (too_few_labels, TRAIN_LABELS, ["11 labels", "12 images", TRAIN_IMAGES]),
        (label_out_of_range, TRAIN_LABELS, ["42", "0..9"]),
    ],
)
def test_bad_idx_files_are_named(tmp_path, capsys, damage, name, words):
    make_fmnist_dir(tmp_path)
    damage(tmp_path / name)
    with pytest.raises(DataError, match=name):
        open_dataset(f"fashion-mnist:{tmp_path}")
    assert main([*KNN, "--data", f"fashion-mnist:{tmp_path}"]) == 2
    err = capsys.readouterr().err
    assert "semaim knn: error:" in err and str(tmp_path / name) in err
    for word in words:
        assert word in err


def test_a_header_longer_than_the_file_is_named(tmp_path):
    make_fmnist_dir(tmp_path)
    with gzip.open(tmp_path / TRAIN_IMAGES, "wb") as f:
        f.write(bytes([0, 0, 8, 3, 0, 0]))
    with pytest.raises(DataError, match=TRAIN_IMAGES):
        open_dataset(f"fashion-mnist:{tmp_path}")


# --------------------------------------------------------------------------- fingerprints
def test_fingerprints_follow_the_content(tmp_path):
    (tmp_path / "idx").mkdir()
    make_fmnist_dir(tmp_path / "idx")
    spec = f"fashion-mnist:{tmp_path / 'idx'}"
    before = open_dataset(spec).fingerprint()
    assert open_dataset(spec).fingerprint() == before
    assert open_dataset(spec, "test").fingerprint() != before
    write_idx(tmp_path / "idx" / TRAIN_LABELS, (np.arange(12) + 1) % 10)
    assert open_dataset(spec).fingerprint() != before
    cluttered = open_dataset(f"cluttered-fashion-mnist:{tmp_path / 'idx'}")
    assert cluttered.fingerprint() != open_dataset(spec).fingerprint()
    assert ClutteredFashionMNIST(tmp_path / "idx", seed=1).fingerprint() != cluttered.fingerprint()

    make_image_folder(tmp_path / "images", per_class=2)
    folder = str(tmp_path / "images")
    before = open_dataset(folder).fingerprint()
    assert open_dataset(folder).fingerprint() == before
    image = next((tmp_path / "images" / "cat").glob("*.png"))
    stat = image.stat()
    os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))
    assert open_dataset(folder).fingerprint() != before
