"""Prediction targets and the loss (Eq. 12).

- Pixels: the patchified image, optionally Gaussian-blurred first (the released recipe: 9×9, σ = 1) and
  normalised per patch ("norm-pix", as in MAE); squared error averaged over patches and values.
- Teacher features: patch tokens of a frozen timm ViT loaded from a local file (DINO or CLIP in the
  paper); prediction and target L2-normalised per token; squared L2 distance summed over the feature
  dimension, averaged over tokens. The teacher's cls similarity also gives the order in this mode
  (see :mod:`semaim.model.teacher`).

(docs/design.md §1)
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def patchify(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """``(B, C, H, W) -> (B, N, P·P·C)``, patches in raster order, values ordered (row, col, channel)."""
    b, c, height, width = images.shape
    p = patch_size
    h, w = height // p, width // p
    x = images.reshape(b, c, h, p, w, p)
    return torch.einsum("bchpwq->bhwpqc", x).reshape(b, h * w, p * p * c)


def unpatchify(patches: torch.Tensor, patch_size: int, grid: tuple[int, int], in_chans: int) -> torch.Tensor:
    """Inverse of :func:`patchify`: ``(B, N, P·P·C) -> (B, C, H, W)``."""
    b = patches.shape[0]
    p = patch_size
    h, w = grid
    x = patches.reshape(b, h, w, p, p, in_chans)
    return torch.einsum("bhwpqc->bchpwq", x).reshape(b, in_chans, h * p, w * p)


def gaussian_kernel(size: int, sigma: float) -> torch.Tensor:
    """``(size, size)`` normalised Gaussian kernel centred on the middle cell."""
    r = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(r**2) / (2 * sigma**2))
    k = g[:, None] * g[None, :]
    return (k / k.sum()).float()


def gaussian_blur(images: torch.Tensor, sigma: float, size: int = 9) -> torch.Tensor:
    """Depthwise Gaussian blur with zero padding, as the released recipe blurs its pixel targets.

    The images are already normalised, so zero padding pads with the dataset mean colour.
    """
    c = images.shape[1]
    kernel = gaussian_kernel(size, sigma).to(images.device, images.dtype).expand(c, 1, size, size)
    return F.conv2d(images, kernel, padding=size // 2, groups=c)


def pixel_targets(
    images: torch.Tensor,
    patch_size: int,
    norm_pix: bool = True,
    blur_sigma: float | None = None,
    blur_kernel: int = 9,
) -> torch.Tensor:
    """Pixel targets of Eq. 12: ``(B, N, P·P·C)`` in raster patch order, float32."""
    images = images.float()
    if blur_sigma is not None:
        images = gaussian_blur(images, blur_sigma, blur_kernel)
    target = patchify(images, patch_size)
    if norm_pix:
        var, mean = torch.var_mean(target, dim=-1, keepdim=True)
        target = (target - mean) * torch.rsqrt(var + 1e-6)
    return target


def pixel_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Eq. 12 for pixels: mean squared error over patches and values (computed in float32)."""
    return F.mse_loss(pred.float(), target.float())


def feature_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Eq. 12 for features: ``‖norm(pred) − norm(target)‖²`` summed over features, averaged over tokens."""
    p = F.normalize(pred.float(), dim=-1)
    t = F.normalize(target.float(), dim=-1)
    return (p - t).pow(2).sum(-1).mean()


def pixel_target_dim(patch_size: int, in_chans: int) -> int:
    return patch_size * patch_size * in_chans


def resample_token_grid(tokens: torch.Tensor, src: tuple[int, int], dst: tuple[int, int]) -> torch.Tensor:
    """Resample ``(B, h·w, D)`` patch tokens from grid ``src`` to grid ``dst`` (bilinear, antialiased)."""
    if tuple(src) == tuple(dst):
        return tokens
    b, n, d = tokens.shape
    if n != math.prod(src):
        raise ValueError(f"tokens: expected {math.prod(src)} patch tokens for grid {src}, got {n}")
    x = tokens.transpose(1, 2).reshape(b, d, *src).float()
    x = F.interpolate(x, size=dst, mode="bilinear", align_corners=False, antialias=True)
    return x.flatten(2).transpose(1, 2).to(tokens.dtype)
