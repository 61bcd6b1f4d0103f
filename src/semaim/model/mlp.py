"""timm's ``Mlp`` (same parameters and names) that keeps less for backward.

A plain ``fc2(gelu(fc1(x)))`` saves both the GELU input (for GELU's backward) and its output (for
fc2's weight gradient): two ``4D``-wide activations per block, the largest tensors a ViT block keeps.
Here ``gelu ∘ fc2`` is one autograd function that saves only the GELU input and recomputes the GELU
in backward, an elementwise pass that costs ~1 % of the step but frees a quarter to a third of the
activation memory of every block (encoder, decoder and prediction head alike).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import Mlp as TimmMlp
from torch import nn


class _GeluLinear(torch.autograd.Function):
    """``linear(gelu(h), weight, bias)``, saving only ``h`` (and a reference to the weight)."""

    @staticmethod
    def forward(ctx, h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        # The ambient autocast (if any) still applies here, so fc2 runs in the low precision with
        # autocast's cached weight copy; backward saves the fp32 parameter itself (no extra memory)
        # and casts it to h's dtype, the precision the forward computed in.
        ctx.save_for_backward(h, weight)
        ctx.has_bias = bias is not None
        return F.linear(F.gelu(h), weight, bias)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        h, weight = ctx.saved_tensors
        grad_out = grad_out.to(h.dtype)
        a = F.gelu(h)  # recomputed instead of stored
        g2 = grad_out.reshape(-1, grad_out.shape[-1])
        grad_w = g2.T @ a.reshape(-1, a.shape[-1])
        grad_b = g2.sum(0) if ctx.has_bias else None
        grad_h = torch.ops.aten.gelu_backward(grad_out @ weight.to(h.dtype), h)
        return grad_h, grad_w, grad_b


class Mlp(TimmMlp):
    """``fc1 → GELU → fc2`` with the GELU recomputed in backward; timm's forward for anything else."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        plain = (
            type(self.act) is not nn.GELU
            or self.act.approximate != "none"
            or not isinstance(self.norm, nn.Identity)
            or (self.training and self.drop1.p > 0)
            or not torch.is_grad_enabled()
        )
        if plain:
            return super().forward(x)
        return self.drop2(_GeluLinear.apply(self.fc1(x), self.fc2.weight, self.fc2.bias))
