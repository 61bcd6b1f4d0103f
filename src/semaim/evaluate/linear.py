"""Linear probing on frozen features: BatchNorm without affine, then a linear layer (as in MAE).

Features are extracted once (eval mode) and cached, so the probe trains in seconds to minutes.
"""

from __future__ import annotations

import torch
from timm.optim import Lars
from torch import nn

from ..config import LinProbeConfig
from ..engine.optim import lr_at, scaled_lr
from ..engine.progress import track
from ..errors import DataError


class LinearProbe(nn.Module):
    def __init__(self, dim: int, num_classes: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm1d(dim, affine=False, eps=1e-6)
        self.head = nn.Linear(dim, num_classes)
        nn.init.trunc_normal_(self.head.weight, std=0.01)
        nn.init.zeros_(self.head.bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(features))


def lars(probe: nn.Module, lr: float) -> Lars:
    """MAE's LARS: momentum 0.9, trust ratio 0.001 on matrices, plain momentum SGD on biases.

    timm's ``Lars`` computes MAE's update exactly when weight decay is 0 (what the recipes use;
    :class:`~semaim.config.LinProbeConfig` refuses anything else with LARS), given the two groups.
    """
    matrices = [p for p in probe.parameters() if p.ndim > 1]
    vectors = [p for p in probe.parameters() if p.ndim <= 1]
    groups = [{"params": matrices, "always_adapt": True}, {"params": vectors, "always_adapt": False}]
    return Lars(groups, lr=lr, momentum=0.9, weight_decay=0.0, trust_coeff=0.001)


def top_k_accuracy(logits: torch.Tensor, labels: torch.Tensor, k: int) -> float:
    top = logits.topk(min(k, logits.shape[1]), dim=1).indices
    return 100.0 * (top == labels[:, None]).any(dim=1).float().mean().item()


def train_linear_probe(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    cfg: LinProbeConfig,
    progress: bool = True,
) -> dict:
    """Train on ``train_*``, evaluate on ``test_*``: ``{"top1", "top5", "history": [per epoch]}``."""
    if (train_labels < 0).any() or (test_labels < 0).any():
        raise DataError("linear probe needs labels: the data has unlabeled images (use class sub-folders)")
    cfg.validate()
    torch.manual_seed(cfg.seed)
    num_classes = int(max(train_labels.max(), test_labels.max())) + 1
    probe = LinearProbe(train_features.shape[1], num_classes)
    base_lr = scaled_lr(cfg.blr, cfg.batch_size)
    if cfg.optimizer == "lars":
        opt = lars(probe, base_lr)
    else:
        opt = torch.optim.SGD(probe.parameters(), lr=base_lr, momentum=0.9, weight_decay=cfg.weight_decay)
    n = len(train_features)
    batch = min(cfg.batch_size, n)
    steps_per_epoch = max(1, n // batch)
    total = steps_per_epoch * cfg.epochs
    loss_fn = nn.CrossEntropyLoss()
    history = []
    step = 0
    g = torch.Generator().manual_seed(cfg.seed)
    for epoch in track(range(cfg.epochs), "linear probe", unit="epoch", enabled=progress):
        probe.train()
        perm = torch.randperm(n, generator=g)
        epoch_loss = 0.0
        for i in range(steps_per_epoch):
            idx = perm[i * batch : (i + 1) * batch]
            for group in opt.param_groups:
                group["lr"] = lr_at(step, total, cfg.warmup_epochs * steps_per_epoch, base_lr)
            loss = loss_fn(probe(train_features[idx]), train_labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            epoch_loss += loss.item() / steps_per_epoch
            step += 1
        history.append({"epoch": epoch, "loss": epoch_loss})
    probe.eval()  # BatchNorm uses its running statistics at test time
    with torch.no_grad():
        logits = probe(test_features)
    return {
        "top1": top_k_accuracy(logits, test_labels, 1),
        "top5": top_k_accuracy(logits, test_labels, 5),
        "history": history,
    }
