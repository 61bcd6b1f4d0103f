"""Weighted k-NN classification on frozen features (DINO's protocol).

Features are L2-normalised; each test image's ``k`` most cosine-similar training images vote for
their class with weight ``exp(sim / T)``, ``T = 0.07``; accuracy is reported for several ``k``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import DataError

KS = (10, 20, 100)


@torch.no_grad()
def knn_scores(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    k: int,
    *,
    num_classes: int,
    temperature: float = 0.07,
    chunk: int = 512,
) -> torch.Tensor:
    """Class scores ``(N_test, num_classes)``: the temperature-weighted votes of the ``k`` nearest."""
    train = F.normalize(train_features.float(), dim=1)
    test = F.normalize(test_features.float(), dim=1)
    k = min(k, len(train))
    out = []
    for start in range(0, len(test), chunk):
        sim, idx = (test[start : start + chunk] @ train.T).topk(k, dim=1)
        weights = (sim / temperature).exp()
        votes = torch.zeros(len(sim), num_classes, dtype=weights.dtype)
        out.append(votes.scatter_add_(1, train_labels[idx], weights))
    return torch.cat(out)


def knn_accuracy(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    ks: tuple[int, ...] = KS,
    temperature: float = 0.07,
) -> dict[str, dict[str, float]]:
    """``{"top1": {"10": %, ...}, "top5": {...}}`` for every ``k`` in ``ks``."""
    if (train_labels < 0).any() or (test_labels < 0).any():
        raise DataError("k-NN needs labels: the data has unlabeled images (use class sub-folders)")
    num_classes = int(max(train_labels.max(), test_labels.max())) + 1
    result: dict[str, dict[str, float]] = {"top1": {}, "top5": {}}
    for k in ks:
        scores = knn_scores(
            train_features, train_labels, test_features, k, num_classes=num_classes, temperature=temperature
        )
        top = scores.topk(min(5, num_classes), dim=1).indices
        hit = top == test_labels[:, None]
        result["top1"][str(k)] = 100.0 * hit[:, 0].float().mean().item()
        result["top5"][str(k)] = 100.0 * hit.any(dim=1).float().mean().item()
    return result
