"""Optimizer pieces shared by pretraining and fine-tuning: parameter groups and the lr schedule."""

from __future__ import annotations

import math

from torch import nn


def skips_decay(model: nn.Module, name: str, param: nn.Parameter) -> bool:
    """No weight decay on norms and biases (1-d) and on what the model's ``no_weight_decay()`` names
    (timm's convention: cls token, position embedding)."""
    skip = model.no_weight_decay() if hasattr(model, "no_weight_decay") else set()
    return param.ndim <= 1 or name in skip


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW groups: weight decay on matrices only, none on norms, biases, position embedding, cls."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if skips_decay(model, name, param):
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


def layer_decay_groups(
    model: nn.Module, weight_decay: float, layer_decay: float, num_layers: int
) -> list[dict]:
    """Fine-tuning groups with layer-wise lr decay (BEiT / MAE): block ``i`` gets ``decay^(L − i)``.

    Layer 0 is the embedding (patch, cls, position), layers ``1..L`` the blocks, ``L+1`` the final norm
    and head. Each group carries ``lr_scale``; norms, biases, cls and position take no weight decay.
    Not timm's ``param_groups_layer_decay``: it puts the final ``norm`` in the last block's layer and counts
    layers from the parameters present (segmentation's headless encoder: every scale ``1/decay`` times ours).
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
        no_decay = skips_decay(model, name, param)
        key = (layer, no_decay)
        if key not in groups:
            groups[key] = {
                "params": [],
                "weight_decay": 0.0 if no_decay else weight_decay,
                "lr_scale": layer_decay ** (num_layers + 1 - layer),
            }
        groups[key]["params"].append(param)
    return [groups[k] for k in sorted(groups)]
