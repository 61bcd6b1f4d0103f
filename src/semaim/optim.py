"""Optimiser pieces shared by pretraining and fine-tuning: parameter groups and the lr schedule."""

from __future__ import annotations

import math

import torch
from torch import nn

NO_DECAY_NAMES = ("cls_token", "pos_embed", "dist_token", "reg_token")


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW groups: weight decay on matrices only, none on norms, biases, position embedding, cls."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if param.ndim <= 1 or name.split(".")[-1] in NO_DECAY_NAMES:
            no_decay.append(param)
        else:
            decay.append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def scaled_lr(blr: float, batch_size: int) -> float:
    """Table S1's rule: ``lr = blr × effective batch / 256``."""
    return blr * batch_size / 256


def lr_at(step: int, total_steps: int, warmup_steps: int, base_lr: float, min_lr: float = 0.0) -> float:
    """Per-iteration linear warmup from 0, then half-cosine decay to ``min_lr`` at ``total_steps``."""
    if step < warmup_steps:
        return base_lr * step / warmup_steps
    if total_steps <= warmup_steps:
        return base_lr
    progress = min(1.0, (step - warmup_steps) / (total_steps - warmup_steps))
    return min_lr + (base_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


class LARS(torch.optim.Optimizer):
    """SGD with momentum and layer-wise trust ratios (You et al. 2017), as linear probing uses it.

    For every matrix the step is rescaled by ``trust · ‖w‖ / ‖g + wd·w‖``; biases and other 1-d
    parameters take plain momentum SGD without weight decay.
    """

    def __init__(
        self, params, lr: float = 0.0, weight_decay: float = 0.0, momentum: float = 0.9, trust: float = 0.001
    ):
        super().__init__(
            params, {"lr": lr, "weight_decay": weight_decay, "momentum": momentum, "trust": trust}
        )

    @torch.no_grad()
    def step(self, closure=None):  # noqa: D102
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                update = p.grad
                if p.ndim > 1:
                    update = update.add(p, alpha=group["weight_decay"])
                    w_norm, u_norm = torch.norm(p), torch.norm(update)
                    ratio = torch.where(
                        (w_norm > 0) & (u_norm > 0), group["trust"] * w_norm / u_norm, torch.ones_like(w_norm)
                    )
                    update = update.mul(ratio)
                state = self.state[p]
                if "mu" not in state:
                    state["mu"] = torch.zeros_like(p)
                mu = state["mu"].mul_(group["momentum"]).add_(update)
                p.add_(mu, alpha=-group["lr"])


def layer_decay_groups(
    model: nn.Module, weight_decay: float, layer_decay: float, num_layers: int
) -> list[dict]:
    """Fine-tuning groups with layer-wise lr decay (BEiT / MAE): block ``i`` gets ``decay^(L − i)``.

    Layer 0 is the embedding (patch, cls, position), layers ``1..L`` the blocks, ``L+1`` the final norm
    and head. Each group carries ``lr_scale``; norms, biases, cls and position take no weight decay.
    """
    groups: dict[tuple[int, bool], dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if name.startswith(("cls_token", "pos_embed", "patch_embed", "reg_token")):
            layer = 0
        elif name.startswith("blocks."):
            layer = int(name.split(".")[1]) + 1
        else:
            layer = num_layers + 1
        no_decay = param.ndim <= 1 or name.split(".")[-1] in NO_DECAY_NAMES
        key = (layer, no_decay)
        if key not in groups:
            groups[key] = {
                "params": [],
                "weight_decay": 0.0 if no_decay else weight_decay,
                "lr_scale": layer_decay ** (num_layers + 1 - layer),
            }
        groups[key]["params"].append(param)
    return [groups[k] for k in sorted(groups)]
