"""Cluttered Fashion-MNIST: the object off-centre, among low-contrast clutter, on a noise texture.

On plain Fashion-MNIST every object sits in the middle of the frame, so "start from the image centre"
and "start from the semantic centre" (Eq. 3-5) are nearly the same order. Here they are not: each
item is pasted at a random scale and position on a larger canvas, over a smooth noise texture and a
few faint, shrunken copies of other items. Labels are the pasted item's. Every image is a pure
function of ``(seed, split, index)``, generated on the fly, so no cache is needed and any worker
builds the same image.

Dense labels come from the same draws (:meth:`ClutteredFashionMNIST.render_dense`): a per-pixel mask
(the item's class + 1 where the pasted item is, 0 = background elsewhere; the faint clutter copies are
background) and the item's box, so ``semaim segment`` needs no annotation files either.

Data spec: ``cluttered-fashion-mnist`` (64 px canvas, seed 0), reading Debian's Fashion-MNIST;
``cluttered-fashion-mnist:/dir`` reads the four IDX files from another folder.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from ..errors import ConfigError
from .idx import FASHION_MNIST_DIR, FashionMNIST

SPEC = "cluttered-fashion-mnist"
MASK_THRESHOLD = 16
"""Grey level (of 255) from which a pixel of the rescaled item counts as the item in the mask. The
originals' background is exactly 0; this drops the faint halo that bilinear resizing spreads around the
silhouette while keeping the interior of dark garments (of the non-zero pixels of Fashion-MNIST, 7 % are
below 16, nearly all on the edge)."""


class ClutteredFashionMNIST(Dataset):
    """``load(i)`` gives a ``(1, canvas, canvas)`` uint8 tensor; ``labels[i]`` the pasted item's class.

    Per image, drawn from ``numpy.random.default_rng((seed, split, i))``:
    - background: 8×8 uniform noise upsampled bilinearly to the canvas, in ``[0, texture]`` grey levels;
    - clutter: ``clutter`` other items of the split, each shrunk to 8-18 px, dimmed to 15-35 % contrast,
      pasted anywhere (max-composited, so they never cover the object's bright pixels);
    - the object: item ``i`` rescaled to 22-40 px (the original is 28) at a uniform random position
      that keeps it fully inside the canvas.
    """

    mean, std = (0.153,), (0.184,)  # measured over 2000 training images

    def __init__(
        self,
        root: str | Path = FASHION_MNIST_DIR,
        split: str = "train",
        canvas: int = 64,
        seed: int = 0,
        clutter: int = 3,
        texture: int = 48,
    ) -> None:
        if canvas < 40:
            raise ConfigError(f"canvas: expected at least 40 px (objects are up to 40 px), got {canvas}")
        self.source = FashionMNIST(root, split)
        self.labels, self.classes = self.source.labels, self.source.classes
        self.split_code = 0 if split == "train" else 1
        self.canvas, self.seed, self.clutter, self.texture = canvas, seed, clutter, texture
        self.name = f"{SPEC}/{split}"

    def fingerprint(self) -> str:
        """A hash of the source arrays and of every generator setting."""
        settings = [self.split_code, self.canvas, self.seed, self.clutter, self.texture]
        return hashlib.sha1(json.dumps([self.source.fingerprint(), settings]).encode()).hexdigest()

    def __len__(self) -> int:
        return len(self.source)

    def _item(self, index: int, size: int) -> np.ndarray:
        img = Image.fromarray(self.source.images[index].numpy())
        return np.asarray(img.resize((size, size), Image.BILINEAR), dtype=np.float32)

    @staticmethod
    def _paste(canvas: np.ndarray, item: np.ndarray, top: int, left: int) -> None:
        """Max-composite ``item`` at ``(top, left)``, clipped to the canvas."""
        h, w = item.shape
        t0, l0 = max(top, 0), max(left, 0)
        t1, l1 = min(top + h, canvas.shape[0]), min(left + w, canvas.shape[1])
        if t1 > t0 and l1 > l0:
            region = canvas[t0:t1, l0:l1]
            np.maximum(region, item[t0 - top : t1 - top, l0 - left : l1 - left], out=region)

    def render(self, index: int) -> np.ndarray:
        """The ``(canvas, canvas)`` uint8 image of item ``index``."""
        return self._compose(index)[0]

    def render_dense(self, index: int) -> tuple[np.ndarray, np.ndarray, tuple[int, int, int, int]]:
        """``(image, mask, box)`` of item ``index``, from the same draws as :meth:`render` (same image).

        ``mask``: ``(canvas, canvas)`` uint8, ``label + 1`` where the pasted item's own grey level
        reaches :data:`MASK_THRESHOLD`, 0 (background) elsewhere; the clutter is background even where
        it is brighter than the item (the item is still there, behind a max-composite). ``box``: the
        mask's tight box ``(x0, y0, x1, y1)`` in pixel-edge coordinates (``x1``, ``y1`` exclusive, as
        torchvision's ``xyxy``); the pasted square when no pixel reaches the threshold.
        """
        image, item, top, left = self._compose(index)
        size = item.shape[0]
        mask = np.zeros_like(image)
        item_class = int(self.labels[index]) + 1
        mask[top : top + size, left : left + size] = np.where(item >= MASK_THRESHOLD, item_class, 0)
        ys, xs = np.nonzero(mask)
        if len(ys) == 0:
            return image, mask, (left, top, left + size, top + size)
        return image, mask, (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)

    def load_pair(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(image (1, H, W) uint8, mask (H, W) int64)``: what ``semaim segment`` reads."""
        image, mask, _ = self.render_dense(index)
        return torch.from_numpy(image)[None], torch.from_numpy(mask.astype(np.int64))

    @property
    def mask_classes(self) -> tuple[str, ...]:
        """The mask's class names, by id: background, then the item classes."""
        return ("background", *self.classes)

    def check_masks(self, num_classes: int) -> None:
        """Generated masks always fit: ids are 0 to ``len(classes)``; only the count is checked."""
        if num_classes != len(self.mask_classes):
            raise ConfigError(
                f"segment.num_classes: {SPEC} has {len(self.mask_classes)} mask classes (background + "
                f"{len(self.classes)} items), got {num_classes}"
            )

    def _compose(self, index: int) -> tuple[np.ndarray, np.ndarray, int, int]:
        """``(image, the rescaled item as float, top, left)``: every draw of item ``index``, in order."""
        rng = np.random.default_rng((self.seed, self.split_code, index))
        c = self.canvas
        # the object first, so its size and place do not depend on the clutter settings
        size = int(rng.integers(22, 41))
        top, left = int(rng.integers(0, c - size + 1)), int(rng.integers(0, c - size + 1))
        coarse = Image.fromarray(rng.uniform(0, self.texture, (8, 8)).astype(np.float32), mode="F")
        image = np.asarray(coarse.resize((c, c), Image.BILINEAR), dtype=np.float32).copy()
        for other in rng.integers(0, len(self.source), self.clutter):
            s = int(rng.integers(8, 19))
            item = self._item(int(other), s) * rng.uniform(0.15, 0.35)
            self._paste(
                image, item, int(rng.integers(-s // 2, c - s // 2)), int(rng.integers(-s // 2, c - s // 2))
            )
        item = self._item(index, size)
        self._paste(image, item, top, left)
        return np.clip(image, 0, 255).astype(np.uint8), item, top, left

    def load(self, index: int) -> torch.Tensor:
        return torch.from_numpy(self.render(index))[None]

    def describe(self, index: int) -> str:
        return f"{self.name}[{index}]"
