"""Learning-rate schedule and weight-decay groups."""

from __future__ import annotations

import math

import pytest

from semaim.engine.optim import lr_at, param_groups, scaled_lr
from tests.conftest import tiny_model


def test_warmup_then_cosine():
    total, warm, base = 100, 10, 1.0
    assert lr_at(0, total, warm, base) == 0.0
    assert lr_at(5, total, warm, base) == pytest.approx(0.5)
    assert lr_at(10, total, warm, base) == pytest.approx(1.0)
    assert lr_at(55, total, warm, base) == pytest.approx(0.5)
    assert lr_at(100, total, warm, base, min_lr=0.1) == pytest.approx(0.1)
    values = [lr_at(s, total, warm, base) for s in range(10, 101)]
    assert all(a >= b for a, b in zip(values, values[1:], strict=False))
    assert scaled_lr(2e-4, 2048) == pytest.approx(1.6e-3)
    assert math.isfinite(lr_at(3, 3, 5, base))


def test_no_weight_decay_on_norms_biases_cls():
    model = tiny_model()
    decay, no_decay = param_groups(model, 0.05)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    not_decayed = {names[id(p)] for p in no_decay["params"]}
    assert "cls_token" in not_decayed and "blocks.0.norm1.weight" in not_decayed
    assert "blocks.0.attn.qkv.bias" in not_decayed and "blocks.0.attn.qkv.weight" in decayed
    assert "patch_embed.proj.weight" in decayed and "decoder_blocks.0.attn.q.weight" in decayed
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    assert len(decayed) + len(not_decayed) == len(list(model.parameters()))
