"""`semaim bench`: the FLOP formula against a counted forward, and the report itself."""

from __future__ import annotations

import json

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from semaim.bench import CONFIGS, BenchConfig, run_bench, step_flops
from semaim.cli import main
from semaim.model.semaim import SemAIM

TINY = BenchConfig("tiny", 32, 8, 32, 2, 2, 2, 4)


def test_linear_flops_match_a_counted_forward():
    """With attention excluded, 3 × forward + order pass is what FlopCounterMode sees in matmuls."""
    model = SemAIM(**TINY.model_kwargs())
    images = torch.randn(TINY.batch_size, 3, 32, 32)
    c = model.compute_centerness(images)
    with FlopCounterMode(display=False) as counter:
        model(images, c)
    counts = counter.get_flop_counts()["Global"]
    linear = sum(v for k, v in counts.items() if "attention" not in str(k) and "bmm" not in str(k))
    n, d = 16, 32
    t = n + 1
    expected = TINY.batch_size * (
        TINY.depth * 24 * t * d * d
        + TINY.decoder_depth * 24 * n * d * d
        + 2 * n * 64 * 3 * d
        + 2 * n * (4 * d * d + 4 * d * 64 * 3)
    )
    assert abs(linear - expected) / expected < 0.02
    # The step count adds backward (2x forward) and the order pass.
    assert step_flops(TINY) > 3 * expected / TINY.batch_size


def test_bench_reports_both_paths(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(CONFIGS, "tiny", TINY)
    rows = run_bench(["tiny"], steps=2, warmup=1, memory=False, out=str(tmp_path / "b.json"))
    (row,) = rows
    assert row["fast_images_per_s"] > 0 and row["reference_images_per_s"] > 0
    assert row["ratio"] == row["fast_images_per_s"] / row["reference_images_per_s"]
    assert 0 < row["achieved_flops"] < 10 * row["ceiling_flops"]
    assert json.loads((tmp_path / "b.json").read_text())[0]["config"] == "tiny"
    printed = capsys.readouterr().out
    assert "encoder fwd" in printed and "matmul ceiling" in printed and "tiny" in printed
    with pytest.raises(SystemExit):  # argparse rejects an unknown config by name
        main(["bench", "--config", "nope"])


def test_sweep_reports_prediction_from_the_base_config(monkeypatch, capsys):
    import semaim.bench as bench

    small = BenchConfig("t-224/16", 32, 8, 32, 2, 2, 2, 4)  # stands in for the base row
    larger = BenchConfig("more-tokens", 32, 4, 32, 2, 2, 2, 4)
    monkeypatch.setattr(bench, "SWEEP", (small, larger))
    rows = bench.run_sweep(steps=1, warmup=1)
    assert [r["tokens"] for r in rows] == [17, 65]
    assert rows[0]["predicted_s"] == pytest.approx(rows[0]["fast_s"])  # the base predicts itself
    assert rows[1]["predicted_s"] > rows[0]["predicted_s"]  # more tokens, more FLOPs
    assert "predicted s" in capsys.readouterr().out
