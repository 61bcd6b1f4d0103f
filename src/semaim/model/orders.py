"""Autoregression orders: the similarity map (Eq. 2), the semantic centre (Eq. 3), centerness (Eq. 4-5).

Every order is expressed as a *centerness* ``C`` of shape ``(B, N)`` over the ``N = h·w`` patches in
raster order: the permutation is ``π = argsort(C)`` (Eq. 6), so a smaller ``C`` is predicted earlier.
All functions are batched and vectorised (no Python loop over the batch) and work on any ``h×w`` grid.

Kinds (Table 1 and controls):

- ``raster``: row-major, ``C = index``.
- ``stochastic``: ``C ~ U(0, 1)`` (SAIM's random order).
- ``similarity``: ``C = -S``, the most cls-similar patch first (the paper's "similarity" row).
- ``semantic``: the paper's order: distance from the semantic centre + ``λ·U(0, 1)``.
- ``center``: distance from the *image* centre + ``λ·U(0, 1)``; the control that separates "semantic"
  from plain "centre-out".
- ``multi-center``: beyond the paper: ``k`` centres from the ``k`` highest peaks of the smoothed map with
  non-maximum suppression; a patch's distance is to its nearest centre.

(docs/design.md §1; the 3×3 filter, λ and raster order vs the official code: §3; the extra kinds: §4)
"""

from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F

from ..config import ORDERS, to_2tuple
from ..errors import ConfigError

NEEDS_SIMILARITY = frozenset({"similarity", "semantic", "multi-center"})
"""Orders that need the similarity map ``S`` of Eq. 2 (and so an encoder pass)."""


def similarity_map(tokens: torch.Tensor) -> torch.Tensor:
    """Eq. 2: ``S_i = softmax_i(cos(z_cls, z_i))``.

    Args:
        tokens: ``(B, 1+N, D)`` encoder output, cls token first (final LayerNorm already applied).

    Returns:
        ``S`` of shape ``(B, N)``, summing to one over the patches of each image.
    """
    if tokens.dim() != 3 or tokens.shape[1] < 2:
        raise ValueError(f"tokens: expected (B, 1+N, D) with the cls token first, got {tuple(tokens.shape)}")
    z = F.normalize(tokens.float(), dim=-1)
    cosine = torch.einsum("bd,bnd->bn", z[:, 0], z[:, 1:])
    return cosine.softmax(dim=-1)


def smooth_map(similarity: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """The 3×3 mean filter of Eq. 3 (stride 1, borders averaged over the cells that exist): ``(B, h, w)``."""
    h, w = grid
    s = similarity.reshape(-1, 1, h, w).float()
    return F.avg_pool2d(s, kernel_size=3, stride=1, padding=1, count_include_pad=False)[:, 0]


def semantic_center(similarity: torch.Tensor, grid: int | tuple[int, int]) -> torch.Tensor:
    """Eq. 3: ``(c_y, c_x) = argmax(mean3x3(S))`` for ``S`` of ``(B, N)`` or ``(B, h, w)``: ``(B, 2)``."""
    grid = to_2tuple(grid, "grid")
    flat = smooth_map(similarity, grid).flatten(1).argmax(dim=1)
    return torch.stack([flat // grid[1], flat % grid[1]], dim=1)


def patch_coordinates(grid: tuple[int, int], device: torch.device | None = None) -> torch.Tensor:
    """``(N, 2)`` float (row, col) of every patch in raster order."""
    h, w = grid
    rows, cols = torch.meshgrid(
        torch.arange(h, device=device, dtype=torch.float32),
        torch.arange(w, device=device, dtype=torch.float32),
        indexing="ij",
    )
    return torch.stack([rows.reshape(-1), cols.reshape(-1)], dim=1)


def distance_to_centers(centers: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Eq. 4: Euclidean distance of every patch to its nearest centre.

    Args:
        centers: ``(B, 2)`` or ``(B, K, 2)`` (row, col), integer or fractional.

    Returns:
        ``D`` of shape ``(B, N)``.
    """
    if centers.dim() == 2:
        centers = centers[:, None]
    coords = patch_coordinates(grid, centers.device)  # (N, 2)
    diff = coords[None, None] - centers.float()[:, :, None]  # (B, K, N, 2)
    return diff.pow(2).sum(-1).sqrt().amin(dim=1)


def find_peaks(similarity: torch.Tensor, grid: tuple[int, int], k: int, radius: float) -> torch.Tensor:
    """The ``k`` highest peaks of the smoothed map, greedy non-maximum suppression. ``-> (B, k, 2)``.

    After each pick, every cell within Euclidean ``radius`` of it is suppressed. When the grid is too
    small to hold ``k`` separated peaks the remaining centres repeat the first one (harmless: a patch's
    distance is to its nearest centre). The loop runs over ``k`` (a handful), never over the batch.
    """
    smoothed = smooth_map(similarity, grid).flatten(1)  # (B, N)
    coords = patch_coordinates(grid, smoothed.device)
    centers = []
    for _ in range(k):
        best_value, best = smoothed.max(dim=1)
        center = coords[best]  # (B, 2)
        if centers:  # nothing left to pick: fall back to the strongest peak
            center = torch.where(torch.isfinite(best_value)[:, None], center, centers[0])
        centers.append(center)
        near = (coords[None] - center[:, None]).pow(2).sum(-1) <= radius**2
        smoothed = smoothed.masked_fill(near, float("-inf"))
    return torch.stack(centers, dim=1)


def max_safe_lambda(grid: tuple[int, int], image_center: bool = False) -> float:
    """The smallest gap between two different patch-to-centre distances on this grid.

    Eq. 5's noise ``λ·U(0,1)`` cannot reorder patches at different distances when ``λ`` is below it.
    Within one image all squared distances differ by integers (the centre is a cell, or the image centre
    whose fractional offsets are the same for every patch), so with ``M`` the largest squared distance
    the smallest gap is ``√M − √(M−1)``. For the paper's 14×14 grid that is 0.027 > λ = 0.01.
    """
    h, w = grid
    # The image centre, or any cell for the semantic / multi-centre orders.
    largest = ((h - 1) / 2) ** 2 + ((w - 1) / 2) ** 2 if image_center else (h - 1) ** 2 + (w - 1) ** 2
    if largest < 1:
        return math.inf
    return math.sqrt(largest) - math.sqrt(largest - 1)


def centerness(
    kind: str,
    batch_size: int,
    grid: int | tuple[int, int],
    similarity: torch.Tensor | None = None,
    lam: float = 0.01,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    num_centers: int = 2,
    nms_radius: float | None = None,
) -> torch.Tensor:
    """Centerness ``C`` of shape ``(B, N)`` for any order kind; smaller is predicted earlier (Eq. 6).

    Args:
        kind: one of :data:`semaim.config.ORDERS`.
        batch_size: ``B``.
        grid: ``(h, w)`` patch grid (or one int for a square grid).
        similarity: ``S`` of Eq. 2, ``(B, N)`` or ``(B, h, w)``; needed by ``similarity``, ``semantic``,
            ``multi-center``.
        lam: ``λ`` of Eq. 5 (the paper's 0.01).
        generator: random source for the noise (``stochastic`` and the ``λ`` term).
        device: where to build ``C`` when no ``similarity`` is given.
        num_centers, nms_radius: ``multi-center`` only.
    """
    if kind not in ORDERS:
        raise ConfigError(f"kind: expected one of {ORDERS}, got {kind!r}")
    grid = to_2tuple(grid, "grid")
    h, w = grid
    n = h * w
    if similarity is not None:
        if similarity.shape[0] != batch_size or similarity[0].numel() != n:
            raise ValueError(
                f"similarity: expected ({batch_size}, {n}) or ({batch_size}, {h}, {w}) for grid {grid}, "
                f"got {tuple(similarity.shape)}"
            )
        similarity = similarity.reshape(batch_size, n).float()
        device = similarity.device
    elif kind in NEEDS_SIMILARITY:
        raise ValueError(f"similarity: order {kind!r} needs the similarity map S of Eq. 2, got None")
    if device is None and generator is not None:
        device = generator.device

    def uniform() -> torch.Tensor:
        return torch.rand(batch_size, n, generator=generator, device=device)

    if kind == "raster":
        return torch.arange(n, device=device, dtype=torch.float32).expand(batch_size, n).clone()
    if kind == "stochastic":
        return uniform()
    if kind == "similarity":
        return -similarity

    if kind == "semantic":
        distance = distance_to_centers(semantic_center(similarity, grid), grid)
    elif kind == "center":
        center = torch.tensor([(h - 1) / 2, (w - 1) / 2], device=device).expand(batch_size, 2)
        distance = distance_to_centers(center, grid)
    else:  # multi-center
        radius = nms_radius if nms_radius is not None else max(1.0, min(h, w) / 4)
        distance = distance_to_centers(find_peaks(similarity, grid, num_centers, radius), grid)
    safe = max_safe_lambda(grid, image_center=kind == "center")
    if lam >= safe:
        warnings.warn(
            f"lam={lam} is not below the smallest distance gap on a {h}x{w} grid ({safe:.4g}): "
            "the noise of Eq. 5 may reorder patches at different distances",
            stacklevel=2,
        )
    return distance + lam * uniform()  # Eq. 5
