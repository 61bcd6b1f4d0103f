"""The attention kernel choice: the explicit-matmul form equals SDPA, masks and causal alike."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from semaim.model.attention import attend, matmul_attention
from tests.conftest import tiny_model


def test_matmul_attention_equals_sdpa():
    q, k, v = (torch.randn(2, 3, 17, 8) for _ in range(3))
    for kwargs in ({}, {"is_causal": True}, {"attn_mask": torch.rand(2, 1, 17, 17) > 0.3}):
        if "attn_mask" in kwargs:
            kwargs["attn_mask"][..., 0] = True  # every row may attend somewhere
        torch.testing.assert_close(
            matmul_attention(q, k, v, **kwargs),
            F.scaled_dot_product_attention(q, k, v, **kwargs),
            atol=1e-5,
            rtol=1e-5,
        )


def test_bf16_on_cpu_takes_the_matmul_path_and_stays_close():
    q, k, v = (torch.randn(2, 3, 65, 16) for _ in range(3))
    reference = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    out = attend(q.bfloat16(), k.bfloat16(), v.bfloat16(), is_causal=True)
    assert out.dtype == torch.bfloat16
    assert (out.float() - reference).abs().max() < 3e-2


def test_fast_path_equals_oracle_under_bf16_autocast():
    model = tiny_model(depth=4, decoder_depth=2, order="semantic")
    images = torch.randn(3, 3, 32, 32)
    c = model.compute_centerness(images)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fast, ref = model(images, c), model.forward_reference(images, c)
    assert (fast.pred.float() - ref.pred.float()).abs().max() < 5e-2
    assert abs(fast.loss.item() - ref.loss.item()) < 1e-2


def test_long_sequences_go_back_to_sdpa(monkeypatch):
    import semaim.model.attention as attention

    calls = []
    monkeypatch.setattr(attention, "matmul_attention", lambda *a, **k: calls.append("matmul") or a[0])
    short = torch.randn(1, 1, attention.MATMUL_MAX_KEYS, 8, dtype=torch.bfloat16)
    long = torch.randn(1, 1, attention.MATMUL_MAX_KEYS + 1, 8, dtype=torch.bfloat16)
    attention.attend(short, short, short, is_causal=True)
    out = attention.attend(long, long, long, is_causal=True)
    assert calls == ["matmul"] and out.shape == long.shape
