"""``semaim bench``: the full pretraining step, fast path against the explicit-mask path.

A step is what Algorithm 1 does per batch: the order pass (no-grad encoder), the forward of both
streams, the backward and the optimizer update (with a gradient scaler in fp16). Both paths run on
the same model and inputs, interleaved after warm-up; the median images/s of each is reported with
their ratio, the achieved FLOP/s (FLOPs counted analytically, see :func:`step_flops`), the model FLOP
utilisation (MFU: against a GPU's data-sheet peak in bf16/fp16, else against a matmul measured on the
spot in the same precision) and which attention kernels one fast step ran. ``batch_size="max"`` takes
the largest power-of-two batch whose fast step fits in device memory. Peak memory is measured in a
fresh process per path: what the steps add on top of the built model (on CPU the peak RSS, on CUDA
the allocator's peak).
"""

from __future__ import annotations

import gc
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import astuple, dataclass, replace

import torch

from .engine.distributed import resolve_device
from .engine.run import autocast_context, resolve_precision
from .errors import ConfigError
from .model.semaim import SemAIM

FORMULA = (
    "per image, T = N+1 tokens, D width, L encoder / L' decoder blocks, P patch, t target dim:\n"
    "  encoder fwd   = L·(24·T·D² + 2·T²·D)        (linears + the causal half of QKᵀ and AV)\n"
    "  decoder fwd   = L'·(24·N·D² + 2·N²·D)\n"
    "  embed + head  = 2·N·P²·3·D + 2·N·(4D·D + 4D·t)\n"
    "  order pass    = L·(24·T·D² + 4·T²·D)         (forward only, full attention)\n"
    "  step          = 3·(encoder + decoder + embed/head) + order pass"
)


@dataclass(frozen=True)
class BenchConfig:
    name: str
    img_size: int
    patch_size: int
    embed_dim: int
    depth: int
    num_heads: int
    decoder_depth: int
    batch_size: int

    def model_kwargs(self) -> dict:
        return {
            "img_size": self.img_size,
            "patch_size": self.patch_size,
            "embed_dim": self.embed_dim,
            "depth": self.depth,
            "num_heads": self.num_heads,
            "decoder_depth": self.decoder_depth,
            "order": "semantic",
        }


CONFIGS = {
    c.name: c
    for c in (
        BenchConfig("vit-t16-224", 224, 16, 192, 12, 3, 12, 16),
        BenchConfig("vit-s16-224", 224, 16, 384, 12, 6, 12, 8),
        BenchConfig("vit-t4-32", 32, 4, 192, 12, 3, 12, 64),
        BenchConfig("vit-b16-224", 224, 16, 768, 12, 12, 12, 64),
        BenchConfig("vit-l16-224", 224, 16, 1024, 24, 16, 12, 32),  # decoder depth 12 as paper-vit-l16
        BenchConfig("tiny-32", 32, 8, 32, 2, 2, 2, 4),  # smoke tests and dry runs
    )
}

PEAK_TFLOPS = (
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.4),
    ("H200", 989.4),
    ("H800", 989.4),
    ("A100", 312.0),
    ("A800", 312.0),
    ("L40S", 362.0),
    ("B200", 2250.0),
)
"""Dense (no sparsity) bf16 = fp16 tensor-core peaks from the vendors' data sheets, by a substring of
``torch.cuda.get_device_name()``; the first match wins (so "H100 PCIe" before "H100")."""


@dataclass
class BenchSettings:
    """How :func:`run_bench` measures every config: device, precision, steps and the FLOP/s references."""

    device: torch.device
    precision: str
    steps: int = 5
    warmup: int = 2
    memory: bool = True
    fast_only: bool = False
    ceiling: float = 0.0  # FLOP/s of a matmul measured here in the same precision
    peak: float = 0.0  # what MFU divides by
    peak_source: str = ""


def step_flops(cfg: BenchConfig) -> float:
    """Useful FLOPs of one training step per image (only the causal half of masked attention)."""
    n = (cfg.img_size // cfg.patch_size) ** 2
    t, d = n + 1, cfg.embed_dim
    target = cfg.patch_size**2 * 3
    encoder = cfg.depth * (24 * t * d * d + 2 * t * t * d)
    decoder = cfg.decoder_depth * (24 * n * d * d + 2 * n * n * d)
    embed_head = 2 * n * cfg.patch_size**2 * 3 * d + 2 * n * (4 * d * d + 4 * d * target)
    order = cfg.depth * (24 * t * d * d + 4 * t * t * d)
    return 3 * (encoder + decoder + embed_head) + order


def matmul_ceiling(device: torch.device, precision: str, n: int | None = None, repeats: int = 10) -> float:
    """FLOP/s of an ``n×n`` matmul in this precision, best of ``repeats`` (n: 2048 on CPU, 8192 on GPU,
    where a smaller one cannot fill the device)."""
    n = n or (8192 if device.type == "cuda" else 2048)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    best = float("inf")
    for _ in range(repeats + 2):
        _sync(device)
        t0 = time.perf_counter()
        a @ b
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


def peak_flops(device: torch.device, precision: str, measured: float) -> tuple[float, str]:
    """``(FLOP/s, where it comes from)`` that MFU divides by: a known GPU's data-sheet peak in bf16/fp16,
    else ``measured`` (the matmul ceiling)."""
    if device.type == "cuda" and precision in ("bf16", "fp16"):
        name = torch.cuda.get_device_name(device)
        for key, tflops in PEAK_TFLOPS:
            if key in name:
                return tflops * 1e12, f"{name} data sheet, dense {precision} {tflops:g} TFLOP/s"
    return measured, f"the {precision} matmul measured here, {measured / 1e12:.2f} TFLOP/s"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def free_memory(device: torch.device) -> None:
    """Return what dropped tensors held to the device (after an out-of-memory trial, before a subprocess)."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def make_step(
    model: SemAIM, optimizer: torch.optim.Optimizer, images: torch.Tensor, precision: str, path: str
) -> Callable[[], None]:
    """One training step of ``path`` (``fast`` or ``reference``: the explicit masks) as a function.
    fp16 steps scale the loss with a ``GradScaler``, as ``semaim pretrain`` does."""
    device = images.device
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")

    def step() -> None:
        with autocast_context(device, precision):
            if path == "fast":
                loss = model(images).loss
            else:
                loss = model.forward_reference(images, model.compute_centerness(images)).loss
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)

    return step


def build(cfg: BenchConfig, device: torch.device, seed: int = 0):
    torch.manual_seed(seed)
    model = SemAIM(**cfg.model_kwargs()).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    images = torch.randn(cfg.batch_size, 3, cfg.img_size, cfg.img_size, device=device)
    return model, optimizer, images


OUT_OF_MEMORY_SIGNS = ("out of memory", "CUBLAS_STATUS_ALLOC_FAILED", "CUDNN_STATUS_NOT_ENOUGH_WORKSPACE")
"""How running out of device memory reads when a library other than PyTorch's allocator hits it first."""


def out_of_memory(err: RuntimeError) -> bool:
    """Whether ``err`` is the device running out of memory: torch's own error, or cuBLAS / cuDNN failing to
    allocate at the memory edge with a plain RuntimeError."""
    return isinstance(err, torch.cuda.OutOfMemoryError) or any(
        sign in str(err) for sign in OUT_OF_MEMORY_SIGNS
    )


def largest_batch(cfg: BenchConfig, device: torch.device, precision: str, cap: int = 4096) -> int:
    """The largest power-of-two batch up to ``cap`` (from ``min(8, cap)``) at which one fast step fits.

    One model and optimizer serve every trial, so the optimizer state is counted as in a real run. Only
    CUDA reports running out of memory; on CPU the cap alone bounds the search.
    """
    model, optimizer, _ = build(replace(cfg, batch_size=1), device)
    best, batch = 0, min(8, cap)
    while batch <= cap:
        images = torch.randn(batch, 3, cfg.img_size, cfg.img_size, device=device)
        try:
            make_step(model, optimizer, images, precision, "fast")()
            _sync(device)
        except RuntimeError as err:
            if not out_of_memory(err):
                raise
            break
        finally:
            del images
        best, batch = batch, 2 * batch
    del model, optimizer
    free_memory(device)
    if not best:
        raise ConfigError(
            f"--batch-size max: not even a batch of {min(8, cap)} fits on {device} for {cfg.name}"
        )
    return best


def time_interleaved(
    runs: dict[str, Callable[[], None]], steps: int, warmup: int, device: torch.device | None = None
) -> dict[str, list[float]]:
    """Seconds per call of each step function, interleaved so that all see the same machine state."""
    device = device or torch.device("cpu")
    for _ in range(warmup):
        for run in runs.values():
            run()
    times: dict[str, list[float]] = {p: [] for p in runs}
    for _ in range(steps):
        for p, run in runs.items():
            _sync(device)
            t0 = time.perf_counter()
            run()
            _sync(device)
            times[p].append(time.perf_counter() - t0)
    return times


def time_paths(
    cfg: BenchConfig,
    device: torch.device,
    precision: str,
    steps: int,
    warmup: int,
    paths=("fast", "reference"),
) -> dict[str, list[float]]:
    """Seconds per step of each path on one model and batch, interleaved."""
    model, optimizer, images = build(cfg, device)
    runs = {p: make_step(model, optimizer, images, precision, p) for p in paths}
    return time_interleaved(runs, steps, warmup, device)


SDPA_BACKENDS = (
    ("flash_attention_for_cpu", "cpu-flash"),
    ("flash", "flash"),
    ("efficient", "efficient"),
    ("cudnn", "cudnn"),
    ("math", "math"),
)
"""ATen's SDPA implementations (``aten::_scaled_dot_product_<name>``) by substring, the first match wins."""


def sdpa_calls(events: Iterable) -> dict[str, dict[str, int]]:
    """``{"forward": {backend: calls}, "backward": {...}}`` from profiler events (``key``, ``count``).

    SDPA dispatches to one ATen op per backend, so the op names say which kernel family ran: ``flash``,
    ``efficient`` (memory-efficient), ``cudnn``, ``cpu-flash``, or ``math``, the unfused fallback that
    materialises the B×H×N×N scores. Attention computed without SDPA (semaim's bf16 matmul form on
    CPU) does not appear here.
    """
    counts: dict[str, dict[str, int]] = {"forward": {}, "backward": {}}
    for event in events:
        if not event.key.startswith("aten::_scaled_dot_product"):
            continue
        backend = next((name for key, name in SDPA_BACKENDS if key in event.key), "other")
        phase = counts["backward" if event.key.endswith("_backward") else "forward"]
        phase[backend] = phase.get(backend, 0) + event.count
    return counts


def attention_profile(step: Callable[[], None], device: torch.device) -> dict:
    """Profile one more call of a (warmed-up) step: SDPA calls by backend and, on CUDA, the names of the
    attention kernels that ran."""
    from torch.profiler import ProfilerActivity, profile

    # The profiler's own log lines (profiler_start/stop, a failed GPU count on a CPU-only machine) say nothing
    # about the step; they stay quiet unless the user asked for them.
    os.environ.setdefault("KINETO_LOG_LEVEL", "6")
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        step()
        _sync(device)
    events = prof.key_averages()
    out: dict = {"sdpa_calls": sdpa_calls(events)}
    if device.type == "cuda":
        keys = ("flash", "fmha", "efficient", "attention", "cudnn", "sdpa")
        names = {e.key for e in events if e.device_type == torch.autograd.DeviceType.CUDA}
        # Kernels carry the CUDA tag; should a profiler version not set it, every non-ATen name will do.
        names = names or {e.key for e in events if not e.key.startswith("aten::")}
        kernels = sorted(n for n in names if any(k in n.lower() for k in keys))[:8]
        out["sdpa_kernels"] = [n if len(n) <= 120 else n[:117] + "..." for n in kernels]  # long templates
    return out


def measure_steps(cfg: BenchConfig, s: BenchSettings) -> tuple[dict[str, list[float]], dict, str | None]:
    """``(seconds per step of each path, attention profile of the fast step, note)``. When the explicit
    masks do not fit beside the fast path's batch, the fast path is timed alone and the note says so."""
    paths = ("fast",) if s.fast_only else ("fast", "reference")
    try:
        return *_timed_and_profiled(cfg, s, paths), None
    except RuntimeError as err:
        if s.fast_only or not out_of_memory(err):
            raise
    free_memory(s.device)  # outside the except clause: the traceback no longer holds the tensors
    note = f"explicit masks: out of memory at batch {cfg.batch_size}, fast path timed alone"
    return *_timed_and_profiled(cfg, s, ("fast",)), note


def _timed_and_profiled(cfg: BenchConfig, s: BenchSettings, paths: tuple[str, ...]):
    model, optimizer, images = build(cfg, s.device)
    runs = {p: make_step(model, optimizer, images, s.precision, p) for p in paths}
    times = time_interleaved(runs, s.steps, s.warmup, s.device)
    return times, attention_profile(runs["fast"], s.device)


def peak_memory(
    cfg: BenchConfig | str, device: str, precision: str, path: str, steps: int = 2
) -> float | None:
    """Memory (bytes) that ``steps`` steps of one path add, measured in a fresh Python process; ``None``
    when that process fails (out of memory).

    CPU: peak RSS (VmHWM) minus the RSS after imports, model, optimizer and inputs exist (VmHWM is the
    process's own; ``ru_maxrss`` would carry the parent's peak across exec). CUDA: the allocator's peak
    minus what was allocated before the steps.
    """
    cfg = CONFIGS[cfg] if isinstance(cfg, str) else cfg
    code = (
        "import json, re, torch; from semaim.bench import BenchConfig, build, make_step;"
        "kib = lambda key: int(re.search(key + r':\\s+(\\d+)', open('/proc/self/status').read()).group(1)) * 1024;"
        f"d = torch.device({device!r}); m, o, x = build(BenchConfig(*{astuple(cfg)!r}), d);"
        f"s = make_step(m, o, x, {precision!r}, {path!r});"
        "cuda = d.type == 'cuda'; cuda and torch.cuda.reset_peak_memory_stats(d);"
        "base = torch.cuda.memory_allocated(d) if cuda else kib('VmRSS');"
        f"[s() for _ in range({steps})];"
        "print(json.dumps(torch.cuda.max_memory_allocated(d) - base if cuda else kib('VmHWM') - base))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if out.returncode != 0:
        return None
    return float(out.stdout.strip().splitlines()[-1])


SWEEP = (
    # tokens: ViT-T, decoder depth 12, batch 16
    BenchConfig("t-32/4", 32, 4, 192, 12, 3, 12, 16),
    BenchConfig("t-64/8", 64, 8, 192, 12, 3, 12, 16),
    BenchConfig("t-224/16", 224, 16, 192, 12, 3, 12, 16),
    BenchConfig("t-128/8", 128, 8, 192, 12, 3, 12, 16),
    BenchConfig("t-224/8", 224, 8, 192, 12, 3, 12, 16),
    # decoder depth at 224/16
    BenchConfig("t-224/16-d1", 224, 16, 192, 12, 3, 1, 16),
    BenchConfig("t-224/16-d6", 224, 16, 192, 12, 3, 6, 16),
)


def run_sweep(device: str = "cpu", precision: str = "auto", steps: int = 3, warmup: int = 1) -> list[dict]:
    """Step time against tokens and decoder depth, next to the FLOP-count prediction.

    The prediction scales the measured time of ``t-224/16`` by the ratio of :func:`step_flops`.
    """
    dev = resolve_device(device)
    precision = resolve_precision(precision, dev)
    print(
        f"{'model':12s} {'tokens':>6s} {'L':>3s} {'fast s/step':>11s} {'masks s/step':>12s} {'masks/fast':>10s} {'GFLOP/step':>10s} {'predicted s':>11s}"
    )
    rows, base = [], None
    for cfg in SWEEP:
        times = time_paths(cfg, dev, precision, steps, warmup)
        fast, ref = statistics.median(times["fast"]), statistics.median(times["reference"])
        flops = step_flops(cfg) * cfg.batch_size
        if cfg.name == "t-224/16":
            base = fast / flops
        rows.append(
            {
                "config": cfg.name,
                "tokens": (cfg.img_size // cfg.patch_size) ** 2 + 1,
                "decoder_depth": cfg.decoder_depth,
                "fast_s": fast,
                "reference_s": ref,
                "flops": flops,
            }
        )
    for row in rows:
        row["predicted_s"] = row["flops"] * base if base else float("nan")
        print(
            f"{row['config']:12s} {row['tokens']:6d} {row['decoder_depth']:3d} {row['fast_s']:11.3f} "
            f"{row['reference_s']:12.3f} {row['reference_s'] / row['fast_s']:10.2f} {row['flops'] / 1e9:10.1f} "
            f"{row['predicted_s']:11.3f}"
        )
    return rows


def batch_for(
    cfg: BenchConfig, batch_size: int | str | None, s: BenchSettings, max_batch: int
) -> BenchConfig:
    """The config at the asked batch: its own (``None``), a number, or ``"max"`` (:func:`largest_batch`)."""
    if batch_size is None:
        return cfg
    if batch_size == "max":
        return replace(cfg, batch_size=largest_batch(cfg, s.device, s.precision, max_batch))
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"--batch-size: expected a positive int or 'max', got {batch_size!r}")
    return replace(cfg, batch_size=batch_size)


def bench_row(cfg: BenchConfig, s: BenchSettings) -> dict:
    """Time, profile and (optionally) measure the memory of one config; print its line."""
    times, profile, note = measure_steps(cfg, s)
    free_memory(s.device)  # before the memory processes: they need the device to themselves
    fast = cfg.batch_size / statistics.median(times["fast"])
    ref = cfg.batch_size / statistics.median(times["reference"]) if "reference" in times else None
    achieved = fast * step_flops(cfg)
    row = {
        "config": cfg.name,
        "batch_size": cfg.batch_size,
        "precision": s.precision,
        "device": str(s.device),
        "fast_images_per_s": fast,
        "reference_images_per_s": ref,
        "ratio": fast / ref if ref else None,
        "flops_per_image": step_flops(cfg),
        "achieved_flops": achieved,
        "ceiling_flops": s.ceiling,
        "peak_flops": s.peak,
        "peak_source": s.peak_source,
        "mfu": achieved / s.peak,
        **profile,
    }
    if note:
        row["note"] = note
    if s.memory:
        row["fast_peak_bytes"] = peak_memory(cfg, str(s.device), s.precision, "fast")
        row["reference_peak_bytes"] = (
            peak_memory(cfg, str(s.device), s.precision, "reference") if ref else None
        )
    print(format_row(row), flush=True)
    return row


def _fmt(value: float | None, spec: str, scale: float = 1.0) -> str:
    return "-" if value is None else format(value / scale, spec)


def format_row(row: dict) -> str:
    """One config's line of the table :func:`run_bench` prints."""
    line = (
        f"{row['config']:12s} {row['batch_size']:5d} {row['fast_images_per_s']:10.2f} "
        f"{_fmt(row['reference_images_per_s'], '9.2f'):>9s} {_fmt(row['ratio'], '6.2f'):>6s} "
        f"{row['achieved_flops'] / 1e12:8.3f} {100 * row['mfu']:6.1f}%"
    )
    if "fast_peak_bytes" in row:
        line += f" {_fmt(row['fast_peak_bytes'], '9.0f', 2**20):>9s} {_fmt(row['reference_peak_bytes'], '8.0f', 2**20):>8s}"
    forward = row["sdpa_calls"]["forward"]
    line += "  sdpa: " + (
        ", ".join(f"{k} {v}" for k, v in sorted(forward.items())) or "none (matmul attention)"
    )
    if row.get("sdpa_kernels"):
        line += f"  kernels: {', '.join(row['sdpa_kernels'])}"
    return line + (f"  ({row['note']})" if "note" in row else "")


def run_bench(
    names: list[str],
    device: str = "cpu",
    precision: str = "auto",
    steps: int = 5,
    warmup: int = 2,
    memory: bool = True,
    out: str | None = None,
    batch_size: int | str | None = None,
    max_batch: int = 4096,
    fast_only: bool = False,
    matmul_size: int | None = None,
) -> list[dict]:
    """Benchmark each named config (see the module docstring); returns the rows, also written to ``out``."""
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        raise ConfigError(f"--config: unknown {unknown[0]!r}; choose from {sorted(CONFIGS)}")
    dev = resolve_device(device)
    s = BenchSettings(dev, resolve_precision(precision, dev), steps, warmup, memory, fast_only)
    s.ceiling = matmul_ceiling(dev, s.precision, matmul_size)
    s.peak, s.peak_source = peak_flops(dev, s.precision, s.ceiling)
    print(FORMULA)
    print(
        f"\nmatmul ceiling ({s.precision}, {dev}): {s.ceiling / 1e12:.2f} TFLOP/s; threads {torch.get_num_threads()}"
    )
    print(f"MFU against {s.peak_source}")
    header = f"{'model':12s} {'batch':>5s} {'fast img/s':>10s} {'ref img/s':>9s} {'ratio':>6s} {'TFLOP/s':>8s} {'MFU':>7s}"
    print(header + (f" {'fast MiB':>9s} {'ref MiB':>8s}" if memory else ""))
    rows = []
    for name in names:
        cfg = batch_for(CONFIGS[name], batch_size, s, max_batch)
        rows.append(bench_row(cfg, s))
        if out:  # after every config: a later one that fails keeps the earlier rows
            with open(out, "w") as f:
                json.dump(rows, f, indent=2)
    return rows
