"""The pretraining augmentation of Table S1 (RandomResizedCrop + flip), drawn from a given generator.

torchvision's ``RandomResizedCrop`` draws from the global generator; here every draw comes from a
generator seeded per sample, so a batch is the same whatever worker builds it and however often the
run was resumed.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF


def sample_crop(
    height: int, width: int, scale: tuple[float, float], ratio: tuple[float, float], g: torch.Generator
) -> tuple[int, int, int, int]:
    """RandomResizedCrop's box ``(top, left, h, w)``, drawn from ``g`` (10 tries, then a central crop)."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        u = torch.rand(4, generator=g).tolist()
        target_area = area * (scale[0] + (scale[1] - scale[0]) * u[0])
        aspect = math.exp(log_ratio[0] + (log_ratio[1] - log_ratio[0]) * u[1])
        w = round(math.sqrt(target_area * aspect))
        h = round(math.sqrt(target_area / aspect))
        if 0 < w <= width and 0 < h <= height:
            return int(u[2] * (height - h + 1)), int(u[3] * (width - w + 1)), h, w
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, round(width / ratio[0])
    elif in_ratio > ratio[1]:
        h, w = height, round(height * ratio[1])
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def channel_stats(values: tuple[float, ...], in_chans: int) -> list[float]:
    """Per-channel mean or std for ``in_chans`` channels; one greyscale value is replicated."""
    return list(values) * in_chans if len(values) == 1 else list(values)


class PretrainTransform:
    """Table S1: RandomResizedCrop(scale 0.2-1, bicubic) + horizontal flip, then normalise.

    Accepts a PIL image or a ``(C, H, W)`` uint8 tensor; returns ``(in_chans, H, W)`` float32.
    ``train=False`` gives the evaluation transform: resize to the model's size, no randomness.
    ``normalize=False`` stops before the float conversion and returns the cropped image as uint8 with its own
    channels (a quarter of the bytes, a twelfth for greyscale, through the loader's shared memory, pinning and
    the copy to the device); :class:`Normalize` then finishes it on the device, to the same values.
    """

    def __init__(
        self,
        img_size: tuple[int, int],
        mean: tuple[float, ...],
        std: tuple[float, ...],
        in_chans: int = 3,
        scale: tuple[float, float] = (0.2, 1.0),
        hflip: bool = True,
        train: bool = True,
        normalize: bool = True,
    ) -> None:
        self.img_size, self.in_chans, self.scale = img_size, in_chans, scale
        self.hflip, self.train, self.normalize = hflip, train, normalize
        self.mean, self.std = channel_stats(mean, in_chans), channel_stats(std, in_chans)

    def __call__(self, img: Any, g: torch.Generator | None = None) -> torch.Tensor:
        if isinstance(img, Image.Image):
            width, height = img.size
        else:
            height, width = img.shape[-2:]
        if self.train:
            top, left, h, w = sample_crop(height, width, self.scale, (3 / 4, 4 / 3), g)
            img = TF.resized_crop(
                img, top, left, h, w, list(self.img_size), InterpolationMode.BICUBIC, antialias=True
            )
            if self.hflip and torch.rand(1, generator=g).item() < 0.5:
                img = TF.horizontal_flip(img)
        elif (height, width) != tuple(self.img_size):
            img = TF.resize(img, list(self.img_size), InterpolationMode.BICUBIC, antialias=True)
        x = TF.pil_to_tensor(img) if isinstance(img, Image.Image) else img
        return to_model_input(x, self.mean, self.std, self.in_chans) if self.normalize else x


def to_model_input(x: torch.Tensor, mean: list[float], std: list[float], in_chans: int) -> torch.Tensor:
    """uint8 ``(..., C, H, W)`` -> normalised float32 ``(..., in_chans, H, W)``: ``(x / 255 - mean) / std``, a
    greyscale channel repeated for the model's channels."""
    x = x.float().div_(255)
    if x.shape[-3] != in_chans:
        x = x.expand(*x.shape[:-3], in_chans, *x.shape[-2:])  # greyscale -> the model's channels
    return TF.normalize(x, mean, std)


class Normalize:
    """:func:`to_model_input` for a batch already on its device (after ``PretrainTransform(normalize=False)``)."""

    def __init__(self, transform: PretrainTransform) -> None:
        self.mean, self.std, self.in_chans = transform.mean, transform.std, transform.in_chans
        self.stats: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        # mean and std made once per device: building them per batch is a blocking copy to the GPU each step
        if images.device not in self.stats:
            shape = (-1, 1, 1)
            mean = torch.tensor(self.mean, device=images.device).view(shape)
            self.stats[images.device] = mean, torch.tensor(self.std, device=images.device).view(shape)
        mean, std = self.stats[images.device]
        x = images.float().div_(255)
        if x.shape[-3] != self.in_chans:
            x = x.expand(*x.shape[:-3], self.in_chans, *x.shape[-2:])  # greyscale -> the model's channels
        return (x - mean) / std  # what to_model_input computes, in the same order
