"""`semaim bench`: the FLOP formula against a counted forward and a counted training step, and the report."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from semaim.bench import CONFIGS, BenchConfig, build, make_step, run_bench, step_flops
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


def test_step_flops_match_a_counted_training_step():
    """:func:`step_flops` against FlopCounterMode on one real bench step (order pass, both streams, backward).

    In bf16 on the CPU attention runs as explicit matmuls over the full N×N scores, so every product is
    counted, attention included: the count is the formula with its causal half undone. The tolerance is
    the one product the formula leaves out, the order pass's cls-to-patch similarity (Eq. 2, 2·N·D per
    image, 0.01% here); everything else is an exact identity of integer counts. (The patch-embedding
    conv is counted 3× by the formula: the step runs its forward, its weight gradient but no input
    gradient, and the order pass runs one more forward.) Writing N for T (or T for N) in one attention
    term, the smallest slip, moves the formula by over 10× the tolerance.
    """
    model, optimizer, images = build(replace(TINY, batch_size=1), torch.device("cpu"))
    step = make_step(model, optimizer, images, "bf16", "fast")
    with FlopCounterMode(display=False) as counter:
        step()
    counted = counter.get_total_flops()  # one image
    n, d = (TINY.img_size // TINY.patch_size) ** 2, TINY.embed_dim
    t = n + 1
    masked_half = 3 * (TINY.depth * 2 * t * t * d + TINY.decoder_depth * 2 * n * n * d)  # fwd + 2x bwd
    similarity = 2 * n * d
    assert counted == pytest.approx(step_flops(TINY) + masked_half, rel=0, abs=similarity)


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
    assert main(["bench", "--model", "nope"]) == 2  # argparse rejects an unknown model by name
    assert "--model: invalid choice: 'nope'" in capsys.readouterr().err


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


def test_bench_output_carries_no_profiler_log_lines(tmp_path):
    """torch's profiler logs its own start and stop (and, on a CPU-only machine, a failed GPU count) to
    stderr; none of that reaches a user of ``semaim bench``."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "KINETO_LOG_LEVEL"}
    args = ["bench", "--model", "tiny-32", "--device", "cpu", "--steps", "1", "--warmup", "1", "--no-memory"]
    result = subprocess.run(
        [sys.executable, "-m", "semaim", *args, "--fast-only"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "tiny-32" in result.stdout
    noise = [line for line in result.stderr.splitlines() if line.startswith(("USDT:", "ERROR:", "WARNING:"))]
    assert noise == []
