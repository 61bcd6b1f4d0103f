"""Scaled dot-product attention, with the kernel chosen for speed on the device at hand.

On GPUs and for fp32 on CPUs, ``F.scaled_dot_product_attention`` (flash / memory-efficient / fused
kernels) is the fastest. For bf16 on CPUs it is not: measured on this project's CPU (AVX512-BF16),
the flash kernel's backward is 2-5x slower than two plain bf16 matmuls around a softmax at the
sequence lengths of small-image and ViT-/16 pretraining (65-257 tokens), because the matmul form
runs on oneDNN's bf16 GEMMs. So on CPU in reduced precision and up to ``MATMUL_MAX_KEYS`` keys,
:func:`attend` computes ``softmax(q kᵀ / √d + mask) v`` explicitly; everywhere else (longer
sequences, fp32, GPUs) it calls SDPA. Both give the same result up to rounding.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from timm.layers import Attention as TimmAttention


@functools.lru_cache(maxsize=32)
def _causal_mask(n_q: int, n_k: int, device: torch.device) -> torch.Tensor:
    """Top-left aligned causal mask, True = masked out (as SDPA's ``is_causal`` aligns it)."""
    return torch.ones(n_q, n_k, dtype=torch.bool, device=device).triu(1)


def matmul_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    is_causal: bool = False,
) -> torch.Tensor:
    """``softmax(q kᵀ / √d + mask) v`` with explicit matmuls; boolean masks mean True = may attend."""
    scores = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)
    if is_causal:
        scores = scores.masked_fill(_causal_mask(q.shape[-2], k.shape[-2], q.device), float("-inf"))
    if attn_mask is not None:
        scores = (
            scores.masked_fill(~attn_mask, float("-inf"))
            if attn_mask.dtype == torch.bool
            else scores + attn_mask
        )
    weights = scores.softmax(dim=-1, dtype=torch.float32).to(v.dtype)
    return weights @ v


MATMUL_MAX_KEYS = 320
"""Above this many keys the matmul form's B×H×N×N tensors become memory-bound and SDPA's tiled kernel
wins (measured bf16 fwd+bwd, 16×3 heads×64: 257 keys 20 vs 28 ms, 401 keys 68 vs 53, 785 keys 345 vs 118)."""


def attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    is_causal: bool = False,
) -> torch.Tensor:
    """Attention over ``(B, H, N, d)`` tensors with the fastest kernel for this device and dtype."""
    if (
        q.device.type == "cpu"
        and q.dtype in (torch.bfloat16, torch.float16)
        and k.shape[-2] <= MATMUL_MAX_KEYS
    ):
        return matmul_attention(q, k, v, attn_mask, is_causal)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal)


class Attention(TimmAttention):
    """timm's ``Attention`` (same parameters and names) computing through :func:`attend`."""

    def forward(
        self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False
    ) -> torch.Tensor:
        b, n, _ = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        out = attend(q, k, v, attn_mask=attn_mask, is_causal=is_causal)
        out = self.norm(out.transpose(1, 2).reshape(b, n, self.attn_dim))
        return self.proj_drop(self.proj(out))
