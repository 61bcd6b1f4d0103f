"""What ``scripts/device-check.sh`` runs, on every device: the bench's batch search and kernel report, the
loader's GPU-decoding pipeline, and the check itself: its plan and targets, its version gate, a dry run on the
CPU, a run whose steps all fail and a run the gate stops."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
import zipfile
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
        env={**os.environ, "OUT": str(out), "SEMAIM_REFERENCE_DIR": "", **env},
    )
    return proc, time.perf_counter() - start


def summary_of(out: Path) -> dict:
    """The check's JSON summary, once it is checked that OUT holds the two files and nothing else."""
    assert sorted(p.name for p in out.iterdir()) == ["device-check.json", "device-check.log"]
    return json.loads((out / "device-check.json").read_text())


def steps_of(summary: dict) -> dict[str, dict]:
    return {s["name"]: s for s in summary["steps"]}


@pytest.fixture(scope="module")
def check():
    """``scripts/device-check.py`` as a module, and its helpers in ``scripts/device_check/`` importable."""
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        spec = importlib.util.spec_from_file_location(
            "device_check_script", ROOT / "scripts" / "device-check.py"
        )
        module = sys.modules[spec.name] = importlib.util.module_from_spec(spec)  # dataclasses look it up
        spec.loader.exec_module(module)
        import device_check.gate  # noqa: F401  (while scripts/ is on the path)
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    return module


ORDER = ["gate", "bench-b16", "reference", "bench-l16", "pretrain-resume", "torchrun", "tests"]


def test_the_gpu_plan_fits_in_six_minutes_with_the_most_valuable_measurement_first(check):
    gpu = check.plan("gpu")
    assert [s.name for s in gpu] == ORDER
    assert sum(s.limit_s for s in gpu) <= check.BUDGET_S["gpu"] == 360
    assert gpu[1].params["model"] == "vit-b16-224" and gpu[1].params["precision"] == "bf16"
    assert gpu[1].params["batch_size"] == "max" and gpu[3].params["model"] == "vit-l16-224"
    assert {s.name for s in gpu if s.process == check.MEASURE} == set(ORDER[:5])  # one torch start-up
    assert "NCCL" in gpu[5].what and "torch.distributed.run" in gpu[5].command
    assert "cuda" in gpu[6].command and check.BUDGET_S["dry-run"] < 180
    dry = check.plan("dry-run")
    assert [s.name for s in dry] == ORDER and all(s.params["device"] == "cpu" for s in dry if s.params)
    assert "--reference-dir DIR" in gpu[2].skip and check.plan("gpu", str(ROOT))[2].skip.endswith("SemAIM")


def test_targets_are_met_missed_or_not_measured(check):
    results = {
        "bench-b16": {"achieved_flops": 0.5 * check.PEAK_BF16_FLOPS},
        "reference": {"same_precision": {"speedup": 1.4, "step_memory_ratio": None}},
    }
    rows = {r["name"]: r for r in check.evaluate_targets(results, "gpu")}
    assert [rows[n]["status"] for n in ("mfu", "speedup", "memory")] == ["met", "missed", "not measured"]
    assert rows["mfu"]["value"] == pytest.approx(0.5) and rows["memory"]["target"] == "≤ 0.6"
    assert {r["status"] for r in check.evaluate_targets(results, "dry-run")} == {"not measured"}


def test_the_gate_installs_a_carried_timm_wheel_when_the_machine_s_is_too_old(check, tmp_path, monkeypatch):
    gate = sys.modules["device_check.gate"]
    assert gate.version_tuple("2.11.0+cu130") == (2, 11, 0) and gate.version_tuple("1.0.27rc1") == (1, 0, 27)
    real = gate.installed_version
    monkeypatch.setattr(
        gate,
        "installed_version",
        lambda d, path=None: "1.0.20" if d == "timm" and not path else real(d, path),
    )
    _, problems = gate.check_packages(tmp_path, tmp_path / "site")
    assert any("timm 1.0.20: semaim needs timm >= 1.0.26" in p and "pip download" in p for p in problems)
    wheel = tmp_path / "wheels" / "timm-9.9.9-py3-none-any.whl"
    wheel.parent.mkdir()
    info = "timm-9.9.9.dist-info/"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("timm/__init__.py", "__version__ = '9.9.9'\n")
        z.writestr(info + "METADATA", "Metadata-Version: 2.1\nName: timm\nVersion: 9.9.9\n")
        z.writestr(
            info + "WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        )
        z.writestr(info + "RECORD", "")
    (tmp_path / "wheels" / "timm-1.0.1-py3-none-any.whl").write_bytes(b"")  # too old: never chosen
    versions, problems = gate.check_packages(tmp_path, tmp_path / "site")
    assert versions["timm"] == "9.9.9" and versions["timm_wheel"] == wheel.name and problems == []
    assert (tmp_path / "site" / "timm" / "__init__.py").is_file()


def test_an_in_process_step_is_stopped_at_its_limit_and_a_failure_is_named(check, tmp_path, monkeypatch):
    def assert_false(p, ctx):
        raise AssertionError

    steps = {
        "slow": lambda p, ctx: time.sleep(30),
        "bad": assert_false,
        "ok": lambda p, ctx: {"detail": "fine"},
    }
    monkeypatch.setattr(check, "step_functions", lambda: steps)
    ctx = check.Context("dry-run", tmp_path)
    slow = check.run_one(check.Step("slow", 1, check.MEASURE, (), "sleeps"), ctx)
    assert slow["status"] == "timeout" and slow["seconds"] < 5 and "1 s time limit" in slow["detail"]
    assert check.run_one(check.Step("bad", 5, check.MEASURE, (), ""), ctx)["detail"] == "AssertionError"
    assert check.run_one(check.Step("ok", 5, check.MEASURE, (), ""), ctx)["detail"] == "fine"


@pytest.mark.device_check
def test_dry_run_goes_through_every_step_on_the_cpu(tmp_path, check):
    out = tmp_path / "device-check"
    proc, seconds = run_script(out, "--dry-run")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    print(f"dry run: {seconds:.0f} s")
    summary = summary_of(out)
    assert (
        summary["mode"] == "dry-run"
        and summary["ok"]
        and summary["gate"] == {"passed": True, "stopped": None}
    )
    assert summary["versions"]["torch"] == torch.__version__ and summary["versions"]["timm"]
    assert [p["name"] for p in summary["plan"]] == ORDER and summary["plan_limit_s"] <= summary["budget_s"]
    steps = steps_of(summary)
    assert list(steps) == ORDER
    for name, step in steps.items():
        assert step["status"] == ("skipped" if name == "reference" else "ok"), step
        assert step["seconds"] <= step["limit_s"] and step["detail"]
    assert "--reference-dir DIR or set SEMAIM_REFERENCE_DIR=DIR" in steps["reference"]["detail"]
    b16 = steps["bench-b16"]["results"]
    assert (
        b16["config"] == "tiny-32" and b16["batch_size"] == 8 and b16["mfu"] > 0 and b16["images_per_s"] > 0
    )
    assert sum(b16["sdpa_calls"]["forward"].values()) == 6
    resume = steps["pretrain-resume"]["results"]
    assert resume["equal"] and resume["bitwise_equal"] and resume["steps"] == resume["steps_resumed_run"] == 6
    assert (
        resume["resumed_from_step"] < resume["killed_after_step"] < 6 and resume["deterministic"] == "strict"
    )
    run = steps["torchrun"]["results"]
    assert run["world_size"] == 1 and run["pretrain_exit"] == 0 and run["probe_backend"] == "gloo"
    assert run["probe_all_reduce_ok"] and run["probe_grads_finite"]
    tests = steps["tests"]["results"]
    assert tests["tests"] >= 10 and tests["failures"] == tests["errors"] == 0
    if not torch.cuda.is_available():
        assert tests["skip_reasons"] == {NO_CUDA: tests["tests"]}
    targets = {t["name"]: t for t in summary["targets"]}
    assert {t["status"] for t in targets.values()} == {"not measured"} and targets["mfu"]["value"] > 0
    log = (out / "device-check.log").read_text()
    assert all(f"] {name}: " in log for name in ORDER) and "===== pretrain-resume" in log and "done in" in log
    assert seconds < summary["budget_s"], "over the dry run's own budget"


def test_failing_steps_are_recorded_and_the_rest_still_run(tmp_path):
    """A Python that runs only the check's runner: every step fails (fast), each is recorded with its exit
    status and last line, a dead in-process step's successor gets a process of its own, the summary is still
    written and the script exits 1."""
    fake = tmp_path / "python"
    fake.write_text(
        f'#!/bin/sh\ncase "$1 $2" in "scripts/device-check.py run") exec {sys.executable} "$@";; esac\n'
        'echo "no GPU here, stopping" >&2; exit 3\n'
    )
    fake.chmod(0o755)
    out = tmp_path / "device-check"
    proc, _ = run_script(out, "--dry-run", PYTHON=str(fake))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    summary = summary_of(out)
    steps = steps_of(summary)
    assert not summary["ok"] and list(steps) == ORDER
    for name in ("gate", "bench-b16", "bench-l16", "pretrain-resume", "torchrun", "tests"):
        assert steps[name]["status"] == "failed" and steps[name]["rc"] == 3, steps[name]
        assert "exit" in steps[name]["detail"] and "no GPU here, stopping" in steps[name]["detail"]
    assert steps["reference"]["status"] == "skipped"
    assert "bench-b16: failed" in (out / "device-check.log").read_text()


def test_the_version_gate_stops_the_check_and_says_why(tmp_path):
    old = tmp_path / "old" / "timm-1.0.20.dist-info"
    old.mkdir(parents=True)
    (old / "METADATA").write_text("Metadata-Version: 2.1\nName: timm\nVersion: 1.0.20\n")
    out = tmp_path / "device-check"
    no_wheels = tmp_path / "no-wheels"  # no carried wheel can stand in for the old timm
    no_wheels.mkdir()
    proc, _ = run_script(out, "--dry-run", PYTHONPATH=str(tmp_path / "old"), SEMAIM_WHEELS=str(no_wheels))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    summary = summary_of(out)
    steps = steps_of(summary)
    assert (
        steps["gate"]["status"] == "failed"
        and "timm 1.0.20: semaim needs timm >= 1.0.26" in summary["gate"]["stopped"]
    )
    assert "pip download --no-deps timm==1.0.31 -d wheels/" in steps["gate"]["detail"]
    assert summary["versions"]["timm"] == "1.0.20"
    assert {steps[n]["status"] for n in ORDER[1:]} == {"not run"}


def test_a_bad_argument_is_exit_2(tmp_path):
    proc, _ = run_script(tmp_path, "--fast")
    assert proc.returncode == 2 and "unknown argument --fast" in proc.stderr
    help_text = subprocess.run(["bash", str(SCRIPT), "--help"], capture_output=True, text=True).stdout
    assert "--dry-run" in help_text and "set -euo" not in help_text and "wheels/" in help_text
