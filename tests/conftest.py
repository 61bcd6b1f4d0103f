"""Shared tiny configurations: 32 px, patch 4-8, width 32-64, 2-4 blocks."""

from __future__ import annotations

import pytest
import torch

from semaim import SemAIM

TINY = dict(img_size=32, patch_size=4, embed_dim=32, depth=2, num_heads=2, decoder_depth=2)


def tiny_model(**overrides) -> SemAIM:
    torch.manual_seed(0)
    return SemAIM(**{**TINY, **overrides})


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield
