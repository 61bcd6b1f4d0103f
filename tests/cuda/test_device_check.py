"""What ``scripts/device-check.sh`` runs, on every device: the bench's batch search and kernel report, the
loader's GPU-decoding pipeline, and the script itself (a dry run on the CPU, and a run whose steps fail)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch

import semaim.bench as bench
from semaim.data.folders import ImageFolder
from semaim.data.sampler import AugmentedDataset
from semaim.data.transforms import PretrainTransform
from tests.cuda.conftest import DEVICES, NO_CUDA

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "device-check.sh"
TINY = bench.CONFIGS["tiny-32"]


def load_benchmark(name: str):
    """``benchmarks/NAME.py`` as a module (the folder is not a package)."""
    spec = importlib.util.spec_from_file_location(f"benchmarks_{name}", ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("device", DEVICES)
def test_bench_takes_the_largest_batch_and_reports_mfu_and_kernels(device, tmp_path):
    out = tmp_path / "bench.json"
    rows = bench.run_bench(
        ["tiny-32"],
        device=device,
        precision="fp32",
        steps=1,
        warmup=1,
        memory=False,
        out=str(out),
        batch_size="max",
        max_batch=8,
        matmul_size=256,
    )
    (row,) = rows
    assert row["batch_size"] == 8 and row["device"].startswith(device)
    assert row["mfu"] > 0 and row["mfu"] == row["achieved_flops"] / row["peak_flops"]
    assert row["reference_images_per_s"] > 0 and row["ratio"] > 0
    forward = row["sdpa_calls"]["forward"]
    assert sum(forward.values()) == 6 and "math" not in forward  # order pass + 2 encoder + 2 decoder blocks
    if device == "cuda":
        assert row["sdpa_kernels"], "the profiler saw no attention kernel"
    assert json.loads(out.read_text()) == json.loads(json.dumps(rows))


def test_largest_batch_stops_below_the_first_batch_that_does_not_fit(monkeypatch):
    tried = []

    def step_or_oom(model, optimizer, images, precision, path):
        def step():
            tried.append(len(images))
            if len(images) > 32:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")

        return step

    monkeypatch.setattr(bench, "make_step", step_or_oom)
    assert bench.largest_batch(TINY, torch.device("cpu"), "fp32", cap=4096) == 32
    assert tried == [8, 16, 32, 64]
    assert bench.largest_batch(TINY, torch.device("cpu"), "fp32", cap=20) == 16  # the cap bounds it too


@pytest.mark.parametrize(
    "message",
    [
        "CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`",
        "cuDNN error: CUDNN_STATUS_NOT_ENOUGH_WORKSPACE",
    ],
)
def test_a_library_running_out_of_memory_also_ends_the_search(monkeypatch, message):
    """At the memory edge cuBLAS or cuDNN may fail first, with a plain RuntimeError; another error is a bug."""

    def step_or_fail(model, optimizer, images, precision, path):
        def step():
            if len(images) > 16:
                raise RuntimeError(message)

        return step

    monkeypatch.setattr(bench, "make_step", step_or_fail)
    assert bench.largest_batch(TINY, torch.device("cpu"), "fp32", cap=4096) == 16
    monkeypatch.setattr(
        bench, "make_step", lambda *a: lambda: (_ for _ in ()).throw(RuntimeError("shape mismatch"))
    )
    with pytest.raises(RuntimeError, match="shape mismatch"):
        bench.largest_batch(TINY, torch.device("cpu"), "fp32", cap=4096)


def test_masks_that_do_not_fit_leave_the_fast_path_timed_alone(monkeypatch):
    def timed(cfg, s, paths):
        if "reference" in paths:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return {"fast": [0.5]}, {"sdpa_calls": {"forward": {}, "backward": {}}}

    monkeypatch.setattr(bench, "_timed_and_profiled", timed)
    s = bench.BenchSettings(torch.device("cpu"), "fp32", memory=False, peak=1.0, ceiling=1.0)
    row = bench.bench_row(replace(TINY, batch_size=4), s)
    assert row["fast_images_per_s"] == 8.0 and row["reference_images_per_s"] is None and row["ratio"] is None
    assert "out of memory at batch 4" in row["note"]
    assert "(explicit masks: out of memory" in bench.format_row(row)


@pytest.mark.parametrize("device", DEVICES)
def test_peak_memory_of_a_step_in_a_fresh_process(device, monkeypatch):
    added = bench.peak_memory(TINY, device, "fp32", "fast")
    assert added is not None and 0 < added < 2**31
    failed = subprocess.CompletedProcess([], 1, "", "torch.OutOfMemoryError: CUDA out of memory")
    monkeypatch.setattr(bench.subprocess, "run", lambda *a, **k: failed)
    assert bench.peak_memory(TINY, device, "fp32", "fast") is None  # out of memory: no number, no traceback


def test_peak_flops_come_from_the_data_sheet_for_known_gpus(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H100 80GB HBM3")
    peak, source = bench.peak_flops(torch.device("cuda"), "bf16", measured=5e14)
    assert peak == 989.4e12 and "data sheet" in source
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H100 PCIe")
    assert bench.peak_flops(torch.device("cuda"), "fp16", measured=5e14)[0] == 756e12
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Some Future GPU")
    assert bench.peak_flops(torch.device("cuda"), "bf16", measured=5e14) == (
        5e14,
        "the bf16 matmul measured here, 500.00 TFLOP/s",
    )
    assert bench.peak_flops(torch.device("cpu"), "bf16", measured=4e11)[0] == 4e11


@pytest.mark.filterwarnings(
    "ignore:The image decoding and encoding capabilities of TorchVision:DeprecationWarning"
)
@pytest.mark.parametrize("device", DEVICES)
def test_gpu_decoding_gives_the_pil_pipeline_s_images(tmp_path, device):
    """``loader.py --decode gpu`` decodes with torchvision on the device and crops, flips and normalises
    there with the same per-sample seeds: the same images as the PIL workers, up to resampling."""
    loader = load_benchmark("loader")
    loader.write_jpegs(tmp_path, 6, (80, 60))
    base = ImageFolder(tmp_path)
    transform = PretrainTransform((32, 32), base.mean, base.std)
    items = [(i, 1000 + i) for i in range(len(base))]
    pil = torch.stack([AugmentedDataset(base, transform)[item][0] for item in items])
    batch = loader.collate_bytes([loader.JpegBytes(base.files)[item] for item in items])
    decoded = loader.decode_batch(*batch, transform, torch.device(device))
    assert decoded.device.type == device and decoded.shape == pil.shape == (6, 3, 32, 32)
    difference = (decoded.cpu() - pil).abs()
    # Equal on the CPU (same libjpeg, same resampling: < 1e-3); nvJPEG may differ by a few of 255 levels.
    assert difference.mean().item() < 0.05, difference.mean()
    flipped = (decoded.cpu() - pil.flip(-1)).abs().flatten(1).mean(1)
    assert (difference.flatten(1).mean(1) < flipped).all()  # the same flips, the same crops


def run_script(out: Path, *args: str, **env: str) -> tuple[subprocess.CompletedProcess, float]:
    start = time.perf_counter()
    proc = subprocess.run(
        ["bash", str(SCRIPT), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=400,
        env={**os.environ, "OUT": str(out), "REFERENCE_DIR": "", **env},
    )
    return proc, time.perf_counter() - start


def steps_of(out: Path) -> dict[str, dict]:
    return {s["name"]: s for s in json.loads((out / "summary.json").read_text())["steps"]}


@pytest.mark.device_check
def test_dry_run_goes_through_every_step_on_the_cpu(tmp_path):
    out = tmp_path / "device-check"
    proc, seconds = run_script(out, "--dry-run")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    print(f"dry run: {seconds:.0f} s")
    steps = steps_of(out)
    assert list(steps) == [
        "env",
        "tests",
        "bench-b16",
        "bench-l16",
        "reference",
        "loader",
        "pretrain",
        "knn",
        "knn-random",
    ]
    assert {n for n, s in steps.items() if s["status"] == "ok"} == {
        "env",
        "tests",
        "bench-b16",
        "loader",
        "pretrain",
        "knn",
    }
    assert "--reference-dir DIR or REFERENCE_DIR=DIR" in steps["reference"]["detail"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["mode"] == "dry-run"
    if not torch.cuda.is_available():
        assert summary["tests"]["skipped"] >= 10 and summary["tests"]["skip_reasons"] == {
            NO_CUDA: summary["tests"]["skipped"]
        }
    (row,) = summary["bench"]
    assert row["config"] == "tiny-32" and row["batch_size"] == 8 and row["mfu"] > 0
    loader = summary["loader"]
    assert [r["decode"] for r in loader["results"]] == ["pil", "gpu"]
    assert loader["step_images_per_s"] == row["fast_images_per_s"]
    assert summary["pretrain"]["steps"] == 16 and set(summary["knn"]["top1"]) == {"3", "10"}
    markdown = (out / "summary.md").read_text()
    for text in (
        "| tests | ok |",
        "| tiny-32 | 8 | fp32 |",
        "## Input pipeline",
        "k-NN top-1",
        "## Targets",
        "A dry run",
    ):
        assert text in markdown
    assert seconds < 170, "over the dry run's own budget"


def test_failing_steps_are_recorded_and_the_rest_still_run(tmp_path):
    """A Python that runs only the script's helper: every step fails (fast), each is recorded with its exit
    status and last line, the summary is still written and the script exits 1."""
    fake = tmp_path / "python"
    fake.write_text(
        f'#!/bin/sh\ncase "$1" in scripts/device-check.py) exec {sys.executable} "$@";; esac\n'
        'echo "no GPU here, stopping" >&2; exit 3\n'
    )
    fake.chmod(0o755)
    out = tmp_path / "device-check"
    proc, _ = run_script(out, "--dry-run", PYTHON=str(fake))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    steps = steps_of(out)
    for name in ("tests", "bench-b16", "loader", "pretrain"):
        assert steps[name]["status"] == "failed" and steps[name]["rc"] == 3
        assert "exit 3" in steps[name]["detail"] and "no GPU here, stopping" in steps[name]["detail"]
    assert steps["knn"]["status"] == "skipped"  # nothing to evaluate: said, not crashed
    assert "| bench-b16 | failed |" in (out / "summary.md").read_text()


def test_a_bad_argument_is_exit_2(tmp_path):
    proc, _ = run_script(tmp_path, "--fast")
    assert proc.returncode == 2 and "unknown argument --fast" in proc.stderr
    help_text = subprocess.run(["bash", str(SCRIPT), "--help"], capture_output=True, text=True).stdout
    assert "--dry-run" in help_text and "set -euo" not in help_text
