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

Variants of the centre rule (``ModelConfig.center_filter`` / ``center_map``): the official code takes the
argmax of the raw map (``center_filter="none"``, with ``λ = 1e-3``); beyond the paper (an option of the
official code, ``--attention_type self``), the map may be the last block's cls *attention*
(:func:`cls_attention`) instead of the cls similarity ``S`` of Eq. 2.

(docs/design.md §1; the 3×3 filter, λ and raster order vs the official code: §3; the extra kinds: §4)
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..checks import to_2tuple
from ..errors import ConfigError

CENTER_FILTERS = ("mean3x3", "none")
"""Smoothing before the argmax of Eq. 3: the paper's 3×3 mean filter, or none (the official code)."""

CENTER_MAPS = ("similarity", "attention")
"""The map the semantic centre is found on: ``S`` of Eq. 2 (the paper), or the last block's cls attention."""


def similarity_map(tokens: torch.Tensor) -> torch.Tensor:
    """Eq. 2: ``S_i = softmax_i(cos(z_cls, z_i))``.

    Args:
        tokens: ``(B, 1+N, D)`` encoder output, cls token first (final LayerNorm already applied).

    Returns:
        ``S`` of shape ``(B, N)``, summing to one over the patches of each image.
    """
    if tokens.dim() != 3 or tokens.shape[1] < 2:
        raise ValueError(f"tokens: expected (B, 1+N, D) with the cls token first, got {tuple(tokens.shape)}")
    with torch.autocast(tokens.device.type, enabled=False):  # fp32 under autocast: bf16 values would tie
        z = F.normalize(tokens.float(), dim=-1)
        cosine = torch.einsum("bd,bnd->bn", z[:, 0], z[:, 1:])
        return cosine.softmax(dim=-1)


@torch.no_grad()
def cls_attention(block: nn.Module, tokens: torch.Tensor, num_prefix_tokens: int = 1) -> torch.Tensor:
    """``(B, N)``: the cls query's attention over the patches in ``block`` (a timm ``Block``), mean over heads.

    ``tokens`` ``(B, T, D)`` is the block's input (cls first, ``num_prefix_tokens`` prefix tokens); the
    weights ``softmax(q_cls kᵀ / √d)`` are computed from the block's own ``norm1``, ``qkv``, ``q_norm`` and
    ``k_norm`` (fused attention never materialises them), then renormalised over the patches.
    """
    attn = block.attn
    b, t, _ = tokens.shape
    qkv = attn.qkv(block.norm1(tokens)).reshape(b, t, 3, attn.num_heads, -1).permute(2, 0, 3, 1, 4)
    q, k = attn.q_norm(qkv[0][:, :, :1]), attn.k_norm(qkv[1])
    with torch.autocast(tokens.device.type, enabled=False):  # fp32 under autocast, as in similarity_map
        weights = (q.float() @ k.float().transpose(-2, -1) * attn.scale).softmax(-1)[
            :, :, 0, num_prefix_tokens:
        ]
    weights = weights.mean(1)
    return weights / weights.sum(-1, keepdim=True)


@torch.no_grad()
def encoder_map(encoder: nn.Module, images: torch.Tensor, kind: str = "similarity") -> torch.Tensor:
    """The map the centre is found on, from ``encoder`` run without a mask in eval mode: ``(B, N)``.

    ``encoder`` is a :class:`semaim.SemAIM` or a timm ViT with a cls token (``forward_features``,
    ``blocks``, ``num_prefix_tokens``). ``kind``: ``"similarity"``, ``S`` of Eq. 2 from the final-norm tokens
    (other prefix tokens dropped); ``"attention"``, :func:`cls_attention` of the last block.
    """
    if kind not in CENTER_MAPS:
        raise ConfigError(f"center_map: expected one of {CENTER_MAPS}, got {kind!r}")
    prefix = int(encoder.num_prefix_tokens)
    last_input = []
    hook = encoder.blocks[-1].register_forward_pre_hook(lambda _, args: last_input.append(args[0]))
    was_training = encoder.training
    encoder.eval()
    try:
        tokens = encoder.forward_features(images)
    finally:
        hook.remove()
        encoder.train(was_training)
    if kind == "attention":
        return cls_attention(encoder.blocks[-1], last_input[0], prefix)
    return similarity_map(torch.cat([tokens[:, :1], tokens[:, prefix:]], dim=1))


def smooth_map(
    similarity: torch.Tensor, grid: tuple[int, int], center_filter: str = "mean3x3"
) -> torch.Tensor:
    """The 3×3 mean filter of Eq. 3 (stride 1, borders averaged over the cells that exist): ``(B, h, w)``.

    ``center_filter="none"`` returns the map unfiltered, as the official code takes its argmax.
    """
    if center_filter not in CENTER_FILTERS:
        raise ConfigError(f"center_filter: expected one of {CENTER_FILTERS}, got {center_filter!r}")
    h, w = grid
    s = similarity.reshape(-1, 1, h, w).float()
    if center_filter == "none":
        return s[:, 0]
    return F.avg_pool2d(s, kernel_size=3, stride=1, padding=1, count_include_pad=False)[:, 0]


def semantic_center(
    similarity: torch.Tensor, grid: int | tuple[int, int], center_filter: str = "mean3x3"
) -> torch.Tensor:
    """Eq. 3: ``(c_y, c_x) = argmax(mean3x3(S))`` for ``S`` of ``(B, N)`` or ``(B, h, w)``: ``(B, 2)``."""
    grid = to_2tuple(grid, "grid")
    flat = smooth_map(similarity, grid, center_filter).flatten(1).argmax(dim=1)
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


def find_peaks(
    similarity: torch.Tensor, grid: tuple[int, int], k: int, radius: float, center_filter: str = "mean3x3"
) -> torch.Tensor:
    """The ``k`` highest peaks of the smoothed map, greedy non-maximum suppression. ``-> (B, k, 2)``.

    After each pick, every cell within Euclidean ``radius`` of it is suppressed. When the grid is too
    small to hold ``k`` separated peaks the remaining centres repeat the first one (harmless: a patch's
    distance is to its nearest centre). The loop runs over ``k`` (a handful), never over the batch.
    """
    smoothed = smooth_map(similarity, grid, center_filter).flatten(1)  # (B, N)
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


@dataclass(frozen=True)
class OrderInputs:
    """What an order may read to rank the ``N = h·w`` patches of a batch (see :func:`centerness`)."""

    batch_size: int
    grid: tuple[int, int]
    similarity: torch.Tensor | None  # (B, N) float, None for the orders that need no map
    lam: float
    generator: torch.Generator | None
    device: torch.device | str | None
    num_centers: int
    nms_radius: float | None
    center_filter: str

    def uniform(self) -> torch.Tensor:
        """``U(0, 1)`` of shape ``(B, N)``: the noise of SAIM's order and of Eq. 5."""
        n = self.grid[0] * self.grid[1]
        return torch.rand(self.batch_size, n, generator=self.generator, device=self.device)


@dataclass(frozen=True)
class Order:
    """One autoregression order: its centerness function and whether it reads a map of the image."""

    centerness: Callable[[OrderInputs], torch.Tensor]
    needs_map: bool  # S of Eq. 2 (or the cls attention): an encoder pass before the order is known


def raster(x: OrderInputs) -> torch.Tensor:
    """Row-major: ``C = index``."""
    n = x.grid[0] * x.grid[1]
    return torch.arange(n, device=x.device, dtype=torch.float32).expand(x.batch_size, n).clone()


def stochastic(x: OrderInputs) -> torch.Tensor:
    """SAIM's random order: ``C ~ U(0, 1)``."""
    return x.uniform()


def most_similar_first(x: OrderInputs) -> torch.Tensor:
    """The paper's "similarity" row: ``C = -S``, the most cls-similar patch first."""
    return -x.similarity


def with_distance_noise(distance: torch.Tensor, x: OrderInputs, image_center: bool) -> torch.Tensor:
    """Eq. 5: ``C = distance + λ·U(0, 1)``, warning when ``λ`` can reorder patches at different distances."""
    safe = max_safe_lambda(x.grid, image_center=image_center)
    if x.lam >= safe:
        h, w = x.grid
        warnings.warn(
            f"lam={x.lam} is not below the smallest distance gap on a {h}x{w} grid ({safe:.4g}): "
            "the noise of Eq. 5 may reorder patches at different distances",
            stacklevel=4,  # the caller of centerness()
        )
    return distance + x.lam * x.uniform()


def semantic(x: OrderInputs) -> torch.Tensor:
    """The paper's order (Eq. 3-5): distance from the semantic centre, plus ``λ·U(0, 1)``."""
    center = semantic_center(x.similarity, x.grid, x.center_filter)
    return with_distance_noise(distance_to_centers(center, x.grid), x, image_center=False)


def image_center(x: OrderInputs) -> torch.Tensor:
    """The control: distance from the *image* centre, plus ``λ·U(0, 1)``."""
    h, w = x.grid
    center = torch.tensor([(h - 1) / 2, (w - 1) / 2], device=x.device).expand(x.batch_size, 2)
    return with_distance_noise(distance_to_centers(center, x.grid), x, image_center=True)


def multi_center(x: OrderInputs) -> torch.Tensor:
    """Beyond the paper: distance to the nearest of ``k`` peaks of the smoothed map, plus ``λ·U(0, 1)``."""
    h, w = x.grid
    radius = x.nms_radius if x.nms_radius is not None else max(1.0, min(h, w) / 4)
    centers = find_peaks(x.similarity, x.grid, x.num_centers, radius, x.center_filter)
    return with_distance_noise(distance_to_centers(centers, x.grid), x, image_center=False)


ORDERS: dict[str, Order] = {
    "raster": Order(raster, needs_map=False),
    "stochastic": Order(stochastic, needs_map=False),
    "similarity": Order(most_similar_first, needs_map=True),
    "semantic": Order(semantic, needs_map=True),
    "center": Order(image_center, needs_map=False),
    "multi-center": Order(multi_center, needs_map=True),
}
"""Every autoregression order by name (Table 1 of the paper, the ``center`` control, ``multi-center``). A
new order is a function of :class:`OrderInputs` and one line here; the config and the CLI read the names."""

NEEDS_MAP = frozenset(name for name, order in ORDERS.items() if order.needs_map)
"""Orders that need the similarity map ``S`` of Eq. 2 (and so an encoder pass)."""


def centerness(
    kind: str,
    batch_size: int,
    grid: int | tuple[int, int],
    *,
    similarity: torch.Tensor | None = None,
    lam: float = 0.01,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    num_centers: int = 2,
    nms_radius: float | None = None,
    center_filter: str = "mean3x3",
) -> torch.Tensor:
    """Centerness ``C`` of shape ``(B, N)`` for any order kind; smaller is predicted earlier (Eq. 6).

    Args:
        kind: a name of :data:`ORDERS`.
        batch_size: ``B``.
        grid: ``(h, w)`` patch grid (or one int for a square grid).
        similarity: ``S`` of Eq. 2 (or the cls attention map), ``(B, N)`` or ``(B, h, w)``; needed by
            the orders of :data:`NEEDS_MAP`.
        lam: ``λ`` of Eq. 5 (the paper's 0.01).
        generator: random source for the noise (``stochastic`` and the ``λ`` term).
        device: where to build ``C`` when no ``similarity`` is given.
        num_centers, nms_radius: ``multi-center`` only.
        center_filter: the smoothing before the argmax (``semantic``, ``multi-center``): see
            :data:`CENTER_FILTERS`.
    """
    if kind not in ORDERS:
        raise ConfigError(f"kind: expected one of {tuple(ORDERS)}, got {kind!r}")
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
    elif ORDERS[kind].needs_map:
        raise ValueError(f"similarity: order {kind!r} needs the similarity map S of Eq. 2, got None")
    if device is None and generator is not None:
        device = generator.device
    inputs = OrderInputs(
        batch_size, grid, similarity, lam, generator, device, num_centers, nms_radius, center_filter
    )
    return ORDERS[kind].centerness(inputs)
