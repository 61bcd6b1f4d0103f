"""The two attention streams: content (encoder, Eq. 7-8) and query (decoder, Eq. 9-11).

The content stream is made of timm ``Block``s, so the encoder keeps timm's parameter names. The query
stream is made of :class:`DecoderBlock`s: pre-norm cross-attention from the query tokens to the content
tokens, then an MLP.

Two equivalent ways to apply the order (docs/design.md §2):

- explicit masks (:func:`encoder_mask`, :func:`decoder_mask`) over tokens in raster order: the oracle;
- tokens gathered into the order ``π``, where Eq. 7 becomes plain causal attention and Eq. 9 becomes
  causal attention from the queries ``g[1:]`` to the content ``h[:-1]``: the fast path.

Masks are built from *ranks* (the position of each patch in the order, ``rank = argsort(π)``) rather
than from ``C`` itself: identical when ``C`` has no ties, and still a strict order when it does
(ties are broken by raster index, exactly as the stable sort of the fast path breaks them).
"""

from __future__ import annotations

import torch
from torch import nn

from .attention import attend
from .mlp import Mlp


def encoder_mask(rank: torch.Tensor) -> torch.Tensor:
    """Eq. 7 with the cls token: ``(B, 1, 1+N, 1+N)`` bool, True = may attend.

    Patch ``i`` attends to patch ``j`` iff ``rank_j <= rank_i`` (itself and everything earlier) and to
    cls; cls attends only to itself.
    """
    b, n = rank.shape
    mask = torch.zeros(b, n + 1, n + 1, dtype=torch.bool, device=rank.device)
    mask[:, :, 0] = True
    mask[:, 1:, 1:] = rank[:, None, :] <= rank[:, :, None]
    return mask[:, None]


def decoder_mask(rank: torch.Tensor) -> torch.Tensor:
    """Eq. 9 with the cls token: ``(B, 1, N, 1+N)`` bool from patch queries to content tokens.

    Query ``i`` attends to content ``j`` iff ``rank_j < rank_i`` (strictly earlier: never its own patch)
    and always to cls, so the first patch in the order is predicted from cls alone.
    """
    b, n = rank.shape
    mask = torch.zeros(b, n, n + 1, dtype=torch.bool, device=rank.device)
    mask[:, :, 0] = True
    mask[:, :, 1:] = rank[:, None, :] < rank[:, :, None]
    return mask[:, None]


class CrossAttention(nn.Module):
    """Multi-head attention from queries ``g`` to keys/values ``h`` (Eq. 10)."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(dim, 2 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(
        self,
        g: torch.Tensor,
        h: torch.Tensor,
        attn_mask: torch.Tensor | None = None,
        is_causal: bool = False,
    ) -> torch.Tensor:
        b, n_q, dim = g.shape
        n_kv = h.shape[1]
        q = self.q(g).reshape(b, n_q, self.num_heads, self.head_dim).transpose(1, 2)
        k, v = self.kv(h).reshape(b, n_kv, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        out = attend(q, k, v, attn_mask=attn_mask, is_causal=is_causal)
        return self.proj(out.transpose(1, 2).reshape(b, n_q, dim))


class DecoderBlock(nn.Module):
    """One query-stream block (Eq. 10): ``g += Attn(norm1(g), norm1(h))``; ``g += MLP(norm2(g))``.

    One LayerNorm normalises both the queries and the content tokens, as in the reference
    implementation that produced the published numbers (docs/design.md §3).
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, eps: float = 1e-6) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = CrossAttention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU)

    def forward(
        self,
        g: torch.Tensor,
        h: torch.Tensor,
        attn_mask: torch.Tensor | None = None,
        is_causal: bool = False,
    ) -> torch.Tensor:
        g = g + self.attn(self.norm1(g), self.norm1(h), attn_mask=attn_mask, is_causal=is_causal)
        return g + self.mlp(self.norm2(g))
