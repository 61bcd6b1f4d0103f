"""Datasets, the pretraining augmentation (Table S1) and a resumable, distributed sampler.

Data specs (the ``--data`` of every command):

- ``fashion-mnist``: Debian's ``dataset-fashion-mnist`` (IDX files in ``/usr/share/datasets/fashion-mnist``);
  ``fashion-mnist:/some/dir`` reads the same four files from another folder (:mod:`.idx`).
- ``cluttered-fashion-mnist``: the same items off-centre among clutter on a 64 px canvas
  (:mod:`.cluttered`); ``cluttered-fashion-mnist:/some/dir`` likewise.
- any other string: a folder of images (:mod:`.folders`), ImageFolder layout (class sub-folders give
  labels) or a flat or nested folder without labels. A folder with ``train/`` (and ``val/``)
  sub-folders uses them as splits; val/ labels follow train/'s class numbering.

Every dataset has ``fingerprint()``: a hash of its content, part of the feature cache's key.
"""

from __future__ import annotations

from pathlib import Path

from torch.utils.data import Dataset

from ..errors import DataError, MissingFileError
from .cluttered import SPEC as CLUTTERED
from .cluttered import ClutteredFashionMNIST
from .folders import ImageFolder, images_under
from .idx import FASHION_MNIST_DIR, FashionMNIST


def open_dataset(spec: str, split: str = "train", in_chans: int = 3, *, classify: bool = False) -> Dataset:
    """The base dataset behind a data spec (see the module docstring); ``split`` is train or test/val.

    ``classify``: the split is to train or score a classifier, so an image folder must be in ImageFolder
    layout with at least two classes and no class folder without images (pretraining reads any folder).
    The val split of a folder is numbered by train/'s classes, so a val class whose train folder is empty
    is named as that empty folder, not as a class train lacks."""
    name, _, root = spec.partition(":")
    split = "train" if split == "train" else "test"
    if name == CLUTTERED:
        return ClutteredFashionMNIST(root or FASHION_MNIST_DIR, split)
    if name == "fashion-mnist":
        return FashionMNIST(root or FASHION_MNIST_DIR, split)
    mode = "RGB" if in_chans == 3 else "L"
    train = Path(spec) / "train" if (Path(spec) / "train").is_dir() else Path(spec)
    if split == "train":
        return ImageFolder(train, mode, classify=classify)
    val = Path(spec) / "val"
    if not val.is_dir():
        raise MissingFileError(f"data: {spec} has no val/ sub-folder to evaluate on")
    if train == Path(spec):
        return ImageFolder(val, mode, classify=classify)
    # one label <-> class map for both splits: val/ is numbered by train/'s classes
    source = ImageFolder(train, mode, classify=classify)
    for empty in source.empty_class_folders():
        if images_under(val / empty.name):
            raise DataError(
                f"data: class folder {empty} has no images, but {val / empty.name} has: add the training "
                "images of that class, or remove both folders"
            )
    return ImageFolder(val, mode, source.classes, classify=classify)
