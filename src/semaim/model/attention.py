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
def _causal_bias(n_q: int, n_k: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Top-left aligned causal mask as an additive bias (0 or -inf), as SDPA's ``is_causal`` aligns it."""
    masked = torch.ones(n_q, n_k, dtype=torch.bool, device=device).triu(1)
    return torch.zeros(n_q, n_k, dtype=dtype, device=device).masked_fill(masked, float("-inf"))


def matmul_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    is_causal: bool = False,
) -> torch.Tensor:
    """``softmax(q kᵀ / √d + mask) v`` with explicit matmuls; boolean masks mean True = may attend.

    The causal mask is added inside the score GEMM (``baddbmm``'s bias, scale as its ``alpha``), so
    neither the scaling nor the masking is a separate pass over the B×H×N×N scores in forward or
    backward; the softmax stays in the input dtype (the CPU kernel accumulates in fp32) so no fp32
    copy of the scores is kept for backward. Together ~1.8× faster fwd+bwd in bf16 at 65-257 tokens
    than scale + ``masked_fill`` + fp32 softmax, and half the saved attention memory.
    """
    *batch, n_q, d = q.shape
    n_k = k.shape[-2]
    q3, k3, v3 = q.reshape(-1, n_q, d), k.reshape(-1, n_k, d), v.reshape(-1, n_k, v.shape[-1])
    if is_causal:
        bias = _causal_bias(n_q, n_k, q.dtype, q.device)
        scores = torch.baddbmm(bias, q3, k3.transpose(1, 2), alpha=d**-0.5)
    else:
        scores = torch.bmm(q3 * d**-0.5, k3.transpose(1, 2))
    if attn_mask is not None:
        mask = attn_mask.expand(*batch, n_q, n_k).reshape(-1, n_q, n_k)
        scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
    return torch.bmm(scores.softmax(dim=-1), v3).reshape(*batch, n_q, v.shape[-1])


MATMUL_MAX_KEYS = 512
"""Above this many keys the matmul form's B×H×N×N tensors become memory-bound and SDPA's tiled kernel
wins. Measured bf16 causal fwd+bwd, 16×3 heads×64, matmul vs SDPA: 65 keys 1.4 vs 6.5 ms, 197 keys
7.5 vs 18.0, 257 keys 12.7 vs 27.4, 401 keys 30.2 vs 53.8, 785 keys 175 vs 125. In fp32 SDPA is the
faster at every length (197 keys: 13.8 vs 18.3 ms), so fp32 always uses it."""


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
