"""Fixed 2-D sin-cos position embeddings (the `p` of "x = [x_cls; x_p] ⊕ p", as in MAE)."""

from __future__ import annotations

import torch


def sincos_1d(dim: int, positions: torch.Tensor) -> torch.Tensor:
    """``(M,) -> (M, dim)``: half sines, half cosines at geometric frequencies ``1 / 10000^(2k/dim)``."""
    if dim % 2:
        raise ValueError(f"dim: expected an even number, got {dim}")
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2))
    angles = positions.to(torch.float64)[:, None] * omega[None, :]
    return torch.cat([angles.sin(), angles.cos()], dim=1)


def sincos_2d(dim: int, grid: tuple[int, int], cls_token: bool = True) -> torch.Tensor:
    """``((1 if cls_token else 0) + h*w, dim)`` embedding of an ``h×w`` grid, raster (row-major) order.

    The first half of the channels encodes the column, the second half the row. With ``cls_token`` a
    zero row is prepended for the cls token, which carries no position.
    """
    if dim % 4:
        raise ValueError(f"dim: the 2-D sin-cos embedding needs a multiple of 4, got {dim}")
    h, w = grid
    rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    emb = torch.cat([sincos_1d(dim // 2, cols.reshape(-1)), sincos_1d(dim // 2, rows.reshape(-1))], dim=1)
    if cls_token:
        emb = torch.cat([torch.zeros(1, dim, dtype=emb.dtype), emb], dim=0)
    return emb.float()
