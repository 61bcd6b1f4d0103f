"""Validation split and label subsets: stratified, seeded, disjoint."""

from __future__ import annotations

import pytest
import torch

from semaim.data.splits import label_subset, train_val_split
from semaim.errors import ConfigError

LABELS = torch.tensor([c for c in range(4) for _ in range(25 + 5 * c)])  # classes of 25, 30, 35, 40 images


def counts(indices: torch.Tensor) -> list[int]:
    return torch.bincount(LABELS[indices], minlength=4).tolist()


def test_validation_split_is_stratified_seeded_and_disjoint():
    train, val = train_val_split(LABELS, 26, seed=0)
    assert counts(val) == [5, 6, 7, 8]  # 26 in proportion to 25/30/35/40
    assert len(train) + len(val) == len(LABELS) and not set(train.tolist()) & set(val.tolist())
    again, val_again = train_val_split(LABELS, 26, seed=0)
    assert torch.equal(val, val_again) and torch.equal(train, again)
    assert not torch.equal(train_val_split(LABELS, 26, seed=1)[1], val)
    assert len(train_val_split(LABELS, 0, seed=0)[1]) == 0


def test_label_subsets_count_per_class_and_stay_in_the_pool():
    train, val = train_val_split(LABELS, 26, seed=0)
    k = label_subset(LABELS, train, per_class=7, seed=3)
    assert counts(k) == [7, 7, 7, 7] and set(k.tolist()) <= set(train.tolist())
    assert torch.equal(k, label_subset(LABELS, train, per_class=7, seed=3))
    assert not torch.equal(k, label_subset(LABELS, train, per_class=7, seed=4))
    f = label_subset(LABELS, train, fraction=0.1, seed=0)
    assert counts(f) == [2, 2, 3, 3] and not set(f.tolist()) & set(val.tolist())
    assert torch.equal(label_subset(LABELS, train), train)


@pytest.mark.parametrize(
    "call, field",
    [
        (lambda: train_val_split(LABELS, len(LABELS), 0), "finetune.val_size"),
        (lambda: label_subset(LABELS, torch.arange(len(LABELS)), per_class=26), "finetune.labels_per_class"),
    ],
)
def test_impossible_sizes_name_the_field(call, field):
    with pytest.raises(ConfigError, match=field):
        call()
