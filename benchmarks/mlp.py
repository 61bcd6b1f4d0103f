"""The MLP's GELU recomputation: torch's activation checkpoint against the old hand-written Function.

    python benchmarks/mlp.py --steps 8 --warmup 1

Three copies of one SemAIM model (same weights, each with its own fused AdamW) differ only in the
MLP of every block and of the head: ``checkpoint`` (semaim's ``Mlp``), ``hand-written`` (the
``_GeluLinear`` autograd Function semaim used before, kept here only for this comparison) and
``timm`` (plain ``timm.layers.Mlp``, which keeps the GELU output). Full training steps (order pass,
forward, backward, AdamW) in fp32 alternate between the three after warm-up, in an order rotated
every step; medians are reported with the activation bytes one step's forward keeps for backward
(parameters not counted). Another process on the CPU shifts all three alike: read the ratios.
"""

from __future__ import annotations

import argparse
import copy
import statistics
from collections.abc import Callable

import torch
import torch.nn.functional as F
from timm.layers import Mlp as TimmMlp

from semaim.bench import BenchConfig, build, make_step, time_interleaved
from semaim.model.mlp import Mlp
from semaim.model.semaim import SemAIM


class _GeluLinear(torch.autograd.Function):
    """The old ``linear(gelu(h), weight, bias)``, saving only ``h`` (and a reference to the weight)."""

    @staticmethod
    def forward(ctx, h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        ctx.save_for_backward(h, weight)
        ctx.has_bias = bias is not None
        return F.linear(F.gelu(h), weight, bias)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        h, weight = ctx.saved_tensors
        grad_out = grad_out.to(h.dtype)
        a = F.gelu(h)
        g2 = grad_out.reshape(-1, grad_out.shape[-1])
        grad_w = g2.T @ a.reshape(-1, a.shape[-1])
        grad_b = g2.sum(0) if ctx.has_bias else None
        grad_h = torch.ops.aten.gelu_backward(grad_out @ weight.to(h.dtype), h)
        return grad_h, grad_w, grad_b


class HandWrittenMlp(Mlp):
    """semaim's ``Mlp`` as it was: the same fallbacks, the hand-written Function otherwise."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._plain():
            return TimmMlp.forward(self, x)
        return self.drop2(_GeluLinear.apply(self.fc1(x), self.fc2.weight, self.fc2.bias))


VARIANTS = {"checkpoint": Mlp, "hand-written": HandWrittenMlp, "timm": TimmMlp}


def with_mlp(model: SemAIM, cls: type) -> SemAIM:
    """A copy of ``model`` whose MLPs run ``cls``'s forward (same parameters and names)."""
    model = copy.deepcopy(model)
    for module in model.modules():
        if isinstance(module, TimmMlp):
            module.__class__ = cls
    return model


def saved_bytes(model: SemAIM, images: torch.Tensor) -> int:
    """Bytes of the distinct non-parameter storages one forward keeps for backward."""
    params = {p.data_ptr() for p in model.parameters()}
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        if t.data_ptr() not in params:
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(images)  # the graph (and what it saved) is dropped unused
    return sum(storages.values())


def rotated(runs: dict[str, Callable[[], None]], steps: int, warmup: int) -> dict[str, list[float]]:
    """:func:`time_interleaved`, with the order of the variants rotated every step (no fixed neighbour)."""
    times = time_interleaved(runs, 0, warmup)
    names = list(runs)
    for i in range(steps):
        order = names[i % len(names) :] + names[: i % len(names)]
        for name, seconds in time_interleaved({n: runs[n] for n in order}, 1, 0).items():
            times[name] += seconds
    return times


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=64)
    args = p.parse_args()
    cfg = BenchConfig("t4-32-d6", 32, 4, 192, 6, 3, 6, args.batch_size)
    base, _, images = build(cfg, torch.device("cpu"))
    models = {name: with_mlp(base, cls) for name, cls in VARIANTS.items()}
    runs = {}
    for name, model in models.items():
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
        runs[name] = make_step(model, optimizer, images, "fp32", "fast")
    memory = {name: saved_bytes(model, images) for name, model in models.items()}
    times = rotated(runs, args.steps, args.warmup)
    ref = statistics.median(times["hand-written"])
    print(f"{cfg}, fp32, {torch.get_num_threads()} threads, median of {args.steps} interleaved steps")
    print(f"{'mlp':14s} {'ms/step':>8s} {'min ms':>8s} {'vs hand':>8s} {'saved MiB':>10s}")
    for name in VARIANTS:
        ms, best = 1e3 * statistics.median(times[name]), 1e3 * min(times[name])
        print(f"{name:14s} {ms:8.1f} {best:8.1f} {ms / (1e3 * ref):8.3f} {memory[name] / 2**20:10.1f}")


if __name__ == "__main__":
    main()
