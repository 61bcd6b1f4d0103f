"""Class folders that cannot train a classifier are named before anything runs: a single class (every
score would be 100 %), images outside the class-folder layout, a class folder without images."""

from __future__ import annotations

import pytest
import torch

from semaim.cli import main
from semaim.data import open_dataset
from semaim.data.splits import labelled_subset
from semaim.errors import DataError
from tests.conftest import make_image_folder

KNN = ["knn", "--pixels", "--workers", "0", "--no-progress", "--device", "cpu", "--ks", "1"]
TINY_PRESET = (
    "model: {img_size: 32, patch_size: 8, embed_dim: 32, depth: 2, num_heads: 2, decoder_depth: 2}\n"
)


def one_class(root):
    make_image_folder(root / "train", classes=("cat",), per_class=6)
    make_image_folder(root / "val", classes=("cat",), per_class=2, seed=1)
    return str(root)


# --------------------------------------------------------------------------- a single class
def test_a_one_class_folder_is_refused_for_classifying_by_name(tmp_path):
    spec = one_class(tmp_path)
    for split in ("train", "test"):
        with pytest.raises(DataError, match=rf"{tmp_path / 'train'}.* one class folder, 'cat'.*at least two"):
            open_dataset(spec, split, classify=True)


def test_pretraining_still_reads_one_class_and_flat_folders(tmp_path):
    spec = one_class(tmp_path)
    assert len(open_dataset(spec, "train")) == 6  # root/any-name/*.jpg: a common layout for unlabelled images
    make_image_folder(tmp_path / "flat", per_class=2, nested=False)
    assert len(open_dataset(str(tmp_path / "flat"), "train")) == 4


def test_images_outside_class_folders_are_refused_for_classifying(tmp_path):
    make_image_folder(tmp_path, per_class=2, nested=False)
    with pytest.raises(DataError, match=rf"{tmp_path}.*class sub-folder.*cat_0"):
        open_dataset(str(tmp_path), "train", classify=True)


def test_labels_of_a_single_class_are_refused_by_the_label_split():
    with pytest.raises(DataError, match="class 0.*at least two classes"):
        labelled_subset(
            torch.zeros(20, dtype=torch.int64),
            val_size=2,
            split_seed=0,
            per_class=None,
            fraction=None,
            seed=0,
        )


def test_fine_tuning_a_one_class_folder_stops_before_training(tmp_path, capsys):
    spec = one_class(tmp_path / "data")
    preset = tmp_path / "tiny.yaml"
    preset.write_text(TINY_PRESET)
    command = ["finetune", "--random", "--model-config", str(preset), "--data", spec, "--no-progress"]
    settings = ["budget_steps=0", "epochs=1", "batch_size=2", "finetune.workers=0"]
    out = tmp_path / "run"
    code = main([*command, "--out", str(out), *(a for s in settings for a in ("--set", s))])
    assert code == 2 and "at least two classes" in capsys.readouterr().err
    assert not (out / "result.json").exists()


# --------------------------------------------------------------------------- a class folder without images
def test_an_empty_train_class_folder_is_named_not_taken_for_a_val_class_train_lacks(tmp_path, capsys):
    make_image_folder(tmp_path / "train", classes=("a", "c"), per_class=2)
    (tmp_path / "train" / "b").mkdir()
    (tmp_path / "train" / "b" / "notes.txt").write_text("not an image")
    make_image_folder(tmp_path / "val", classes=("a", "b", "c"), per_class=1)
    empty = tmp_path / "train" / "b"
    with pytest.raises(DataError, match=rf"{empty} has no images"):
        open_dataset(str(tmp_path), "test")
    with pytest.raises(DataError, match=rf"{empty} has no images"):
        open_dataset(str(tmp_path), "train", classify=True)
    assert main([*KNN, "--data", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert f"{empty} has no images" in err and "not a class of the train split" not in err


def test_an_empty_class_folder_the_val_split_does_not_use_is_left_to_classifying(tmp_path):
    make_image_folder(tmp_path / "train", classes=("a", "c"), per_class=2)
    (tmp_path / "train" / "b").mkdir()
    make_image_folder(tmp_path / "val", classes=("a", "c"), per_class=1)
    assert open_dataset(str(tmp_path), "test").classes == ("a", "c")
    assert len(open_dataset(str(tmp_path), "train")) == 4  # pretraining: images are all it reads
