"""Images with per-pixel class masks, for ``semaim segment``: the generated ``cluttered-fashion-mnist``
masks, or a folder of the user's own images and PNG masks.

Folder layout (the usual one: mmsegmentation's ``img_dir`` / ``ann_dir``, with one folder per split)::

    root/train/images/NAME.jpg   root/train/masks/NAME.png     # training (a validation split is carved out)
    root/val/images/NAME.jpg     root/val/masks/NAME.png       # the test split, scored once at the end

A mask is a single-channel PNG (mode ``L``, ``P`` or ``I``) of the image's size whose pixel values are
class ids ``0 .. num_classes-1``; :data:`IGNORE_INDEX` (255) marks pixels that count for nothing (no loss,
no score). Images and masks pair up by file stem. :meth:`MaskFolder.check_masks` reads every mask once
before a run starts, so a bad file stops it before anything is written.

Every dataset here has ``load_pair(i) -> (image, mask)``, ``labels`` (one per image, to stratify the
validation split: the item class for the cluttered data, 0 for a folder), ``mask_classes``, ``mean`` /
``std``, ``check_masks(num_classes)``, ``describe(i)`` and ``fingerprint()``.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from ...data.cluttered import SPEC as CLUTTERED
from ...data.cluttered import ClutteredFashionMNIST
from ...data.folders import IMAGE_EXTENSIONS, IMAGENET_MEAN, IMAGENET_STD, hash_files, open_image
from ...data.idx import FASHION_MNIST_DIR
from ...data.transforms import channel_stats
from ...errors import BadImageError, ConfigError, DataError, MissingFileError

IGNORE_INDEX = 255
"""A mask value that takes part in neither the loss nor the scores (VOC's and mmsegmentation's convention)."""
MASK_MODES = ("L", "P", "I", "I;16")


class MaskFolder(Dataset):
    """``root/images/*`` paired by stem with ``root/masks/*.png`` (one split of the folder layout above)."""

    mean, std = IMAGENET_MEAN, IMAGENET_STD

    def __init__(self, root: str | Path, num_classes: int, mode: str = "RGB") -> None:
        root = Path(root)
        images_dir, masks_dir = root / "images", root / "masks"
        if not images_dir.is_dir():
            raise MissingFileError(f"data: {images_dir} not found (expected {root}/images and {root}/masks)")
        images = sorted(
            p
            for p in images_dir.iterdir()
            if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")
        )
        if not images:
            raise DataError(f"data: no images in {images_dir} (looked for {', '.join(IMAGE_EXTENSIONS)})")
        if not masks_dir.is_dir():
            raise DataError(
                f"data: {images_dir} has images but there is no {masks_dir} folder with their masks"
            )
        self.files = [(image, self._mask_of(image, masks_dir)) for image in images]
        self.root, self.mode, self.num_classes = root, mode, num_classes
        self.labels = torch.zeros(len(images), dtype=torch.int64)  # no image-level classes to stratify by
        self.mask_classes = tuple(str(i) for i in range(num_classes))
        self.name = str(root)
        if mode == "L":
            self.mean, self.std = (0.449,), (0.226,)

    @staticmethod
    def _mask_of(image: Path, masks_dir: Path) -> Path:
        mask = masks_dir / f"{image.stem}.png"
        if not mask.is_file():
            raise DataError(f"data: image {image} has no mask (expected {mask})")
        return mask

    def fingerprint(self) -> str:
        """A hash of every pair's relative paths, sizes and mtimes."""
        digest = hashlib.sha1(f"{self.mode}:{self.num_classes}".encode())
        return hash_files(digest, self.root, (path for pair in self.files for path in pair))

    def __len__(self) -> int:
        return len(self.files)

    def _read_mask(self, index: int, image_size: tuple[int, int]) -> np.ndarray:
        """The mask as an int64 array, or a :class:`DataError` naming the file that does not fit."""
        image, path = self.files[index]
        try:
            with Image.open(path) as mask:
                if mask.mode not in MASK_MODES:
                    raise DataError(
                        f"mask {path}: expected a single-channel PNG of class ids (mode L, P or I), "
                        f"got mode {mask.mode}"
                    )
                values = np.asarray(mask).astype(np.int64)
        except DataError:
            raise
        except Exception as err:  # PIL raises many types for a broken file
            raise BadImageError(f"corrupt or unreadable mask: {path} ({type(err).__name__}: {err})") from err
        if values.shape != image_size:
            raise DataError(
                f"mask {path}: size {values.shape[1]}x{values.shape[0]} differs from its image {image} "
                f"({image_size[1]}x{image_size[0]}, width x height)"
            )
        bad = (values >= self.num_classes) & (values != IGNORE_INDEX)
        if bad.any():
            raise DataError(
                f"mask {path}: class id {int(values[bad].max())} >= num_classes {self.num_classes} "
                f"(ids are 0..{self.num_classes - 1}, {IGNORE_INDEX} = ignore)"
            )
        return values

    def _image(self, index: int) -> Image.Image:
        return open_image(self.files[index][0], self.mode)  # 16-bit images scaled, corrupt files named

    def load_pair(self, index: int) -> tuple[Image.Image, torch.Tensor]:
        img = self._image(index)
        return img, torch.from_numpy(self._read_mask(index, (img.height, img.width)))

    def check_masks(self, num_classes: int) -> None:
        """Read every mask (and every image's header) once: sizes and class ids, before a run writes anything."""
        if num_classes != self.num_classes:
            raise ConfigError(
                f"segment.num_classes: {self.root} was opened for {self.num_classes}, got {num_classes}"
            )
        for index, (image, _) in enumerate(self.files):
            try:
                with Image.open(image) as img:
                    size = (img.height, img.width)
            except Exception as err:
                raise BadImageError(
                    f"corrupt or unreadable image: {image} ({type(err).__name__}: {err})"
                ) from err
            self._read_mask(index, size)

    def describe(self, index: int) -> str:
        return str(self.files[index][0])


def open_segmentation(spec: str, split: str, in_chans: int = 3, num_classes: int | None = None) -> Any:
    """The dataset with masks behind a data spec: ``cluttered-fashion-mnist[:dir]`` or a folder with
    ``train/`` and ``val/`` (the layout in the module docstring). ``split``: train, or test (the folder's
    ``val/``). ``num_classes`` is required for a folder."""
    name, _, root = spec.partition(":")
    if name == CLUTTERED:
        data = ClutteredFashionMNIST(root or FASHION_MNIST_DIR, "train" if split == "train" else "test")
        data.check_masks(num_classes or len(data.mask_classes))
        return data
    if name == "fashion-mnist":
        raise ConfigError(
            f"segment.data: {spec} has no masks; use {CLUTTERED} or a folder of images and masks"
        )
    if num_classes is None:
        raise ConfigError(
            f"segment.num_classes: the mask folder {spec} needs the number of classes (ids 0..K-1)"
        )
    folder = Path(spec) / ("train" if split == "train" else "val")
    if not Path(spec).is_dir():
        raise MissingFileError(f"data folder not found: {spec}")
    return MaskFolder(folder, num_classes, "RGB" if in_chans == 3 else "L")


class SegmentTransform:
    """Image and mask together: resize to the model's input (image bicubic, mask nearest), a horizontal
    flip drawn from the sample's generator (training only), normalise the image.

    Only the flip is random, on purpose: the comparison is between encoders, and one cheap augmentation
    applied identically to image and mask is enough to keep a small run from memorising positions.
    Returns ``(image (in_chans, H, W) float32, mask (H, W) int64)``.
    """

    def __init__(
        self,
        img_size: tuple[int, int],
        mean: tuple[float, ...],
        std: tuple[float, ...],
        in_chans: int = 3,
        train: bool = True,
        hflip: bool = True,
    ) -> None:
        self.img_size, self.in_chans, self.train, self.hflip = tuple(img_size), in_chans, train, hflip
        self.mean, self.std = channel_stats(mean, in_chans), channel_stats(std, in_chans)

    def __call__(self, img: Any, mask: torch.Tensor, g: torch.Generator | None = None):
        x = TF.pil_to_tensor(img) if isinstance(img, Image.Image) else img
        y = mask[None]
        if tuple(x.shape[-2:]) != self.img_size:
            x = TF.resize(x, list(self.img_size), InterpolationMode.BICUBIC, antialias=True)
            y = TF.resize(y, list(self.img_size), InterpolationMode.NEAREST_EXACT)
        if self.train and self.hflip and torch.rand(1, generator=g).item() < 0.5:
            x, y = TF.horizontal_flip(x), TF.horizontal_flip(y)
        x = x.float().div_(255)
        if x.shape[0] != self.in_chans:
            x = x.expand(self.in_chans, -1, -1)  # greyscale -> the model's channels
        return TF.normalize(x, self.mean, self.std), y[0].long()


class SegmentDataset(Dataset):
    """``dataset[(position, seed)]`` (training, from :class:`~semaim.data.sampler.EpochSampler`) or
    ``dataset[position]`` (evaluation) ``-> (image, mask)`` of ``base[indices[position]]``."""

    def __init__(self, base: Any, indices: torch.Tensor | list[int], transform: SegmentTransform) -> None:
        self.base, self.transform = base, transform
        self.indices = indices.tolist() if isinstance(indices, torch.Tensor) else list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, item: tuple[int, int] | int) -> tuple[torch.Tensor, torch.Tensor]:
        position, seed = item if isinstance(item, tuple) else (item, item)
        img, mask = self.base.load_pair(self.indices[position])
        g = torch.Generator().manual_seed(seed) if self.transform.train else None
        return self.transform(img, mask, g)
