"""The measurements: one model's training step at the largest batch that fits (images/s, MFU, step memory, the
attention kernels that ran), and the same step against the reference implementation at the same precision.

Both use ``semaim.bench`` and ``benchmarks/reference.py`` as libraries inside the check's one measuring
process, so they share its torch start-up. Memory is the CUDA allocator's peak over a few steps minus what
was allocated before them, measured in this process: the allocator counts a step's own allocations whatever
ran before. On the CPU no step memory is measured (the process's RSS high-water mark is not one step's).
"""

from __future__ import annotations

import gc
import importlib.util
import statistics
import sys
from dataclasses import replace
from pathlib import Path
from types import ModuleType
from typing import Any

GIB = 2**30


def step_memory(make: Any, device: Any, steps: int = 2) -> dict[str, float | None]:
    """``{"step_bytes", "peak_bytes"}`` of ``steps`` calls of the step that ``make()`` builds: what they add
    over the built model, and the allocator's whole peak. ``None`` on the CPU or when they do not fit."""
    import torch

    from semaim.bench import out_of_memory

    if device.type != "cuda":
        return {"step_bytes": None, "peak_bytes": None}
    release(device)
    try:
        step = make()
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        for _ in range(steps):
            step()
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device)
    except RuntimeError as err:  # torch's out-of-memory error, or cuBLAS / cuDNN failing to allocate
        if not out_of_memory(err):
            raise
        return {"step_bytes": None, "peak_bytes": None}
    finally:
        step = None
        release(device)
    return {"step_bytes": float(peak - base), "peak_bytes": float(peak)}


def release(device: Any) -> None:
    """Hand what dropped tensors held back to the device, so the next measurement starts from the same place."""
    import torch

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _gib(value: float | None) -> str:
    return "–" if value is None else f"{value / GIB:.1f} GiB"


def bench(p: dict[str, Any], ctx: Any) -> dict[str, Any]:
    """One model's fast-path training step at the largest batch that fits: images/s, achieved FLOP/s and MFU,
    step memory, and the SDPA backends and kernels one step ran (``semaim bench --fast-only``)."""
    import torch

    from semaim import bench as b

    device = torch.device(p["device"])
    s = b.BenchSettings(device, p["precision"], p["steps"], p["warmup"], memory=False, fast_only=True)
    s.ceiling = b.matmul_ceiling(device, s.precision, p.get("matmul_size"))
    s.peak, s.peak_source = b.peak_flops(device, s.precision, s.ceiling)
    cfg = b.batch_for(b.CONFIGS[p["model"]], p["batch_size"], s, p["max_batch"])
    print(
        f"{cfg.name}: batch {cfg.batch_size}, {s.precision} on {device}; MFU against {s.peak_source}",
        flush=True,
    )
    row = b.bench_row(cfg, s)
    row = {k: v for k, v in row.items() if k not in ("reference_images_per_s", "ratio")}  # fast path only
    row["images_per_s"] = row.pop("fast_images_per_s")

    def make():
        model, optimizer, images = b.build(cfg, device)
        return b.make_step(model, optimizer, images, s.precision, "fast")

    row.update(step_memory(make, device))
    forward = ", ".join(f"{k} {v}" for k, v in sorted(row["sdpa_calls"]["forward"].items())) or "no SDPA"
    kernels = f"; kernels: {', '.join(row['sdpa_kernels'][:2])}" if row.get("sdpa_kernels") else ""
    row["detail"] = (
        f"{cfg.name} {s.precision}, batch {cfg.batch_size}: {row['images_per_s']:.0f} images/s, "
        f"MFU {100 * row['mfu']:.1f} %, step memory {_gib(row['step_bytes'])} (peak {_gib(row['peak_bytes'])}); "
        f"SDPA {forward}{kernels}"
    )
    return row


def load_reference_benchmark(root: Path) -> ModuleType:
    """``benchmarks/reference.py`` as a module (that folder is no package)."""
    spec = importlib.util.spec_from_file_location(
        "device_check_reference", root / "benchmarks" / "reference.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def reference(p: dict[str, Any], ctx: Any) -> dict[str, Any]:
    """semaim's step against the reference's (a clone of skyoux/SemAIM) on one model and batch, interleaved:
    images/s and step memory of each path, and the ratios to the reference as it ships (fp16 on CUDA)."""
    import torch

    from semaim.bench import CONFIGS

    bench_module = load_reference_benchmark(ctx.root)
    ref_dir, device = Path(ctx.reference_dir), torch.device(p["device"])
    cfg = replace(CONFIGS[p["model"]], batch_size=p["batch_size"])
    paths = tuple(p["paths"])
    saved_cuda = torch.Tensor.cuda  # the reference's loader patches it on the CPU, and sys.path
    saved_path = list(sys.path)
    try:
        times = bench_module.time_all(cfg, ref_dir, p["steps"], p["warmup"], device, paths)
        release(device)
        rows = {}
        for path in paths:
            memory = step_memory(
                lambda path=path: bench_module.make_path(path, cfg, ref_dir, _images(cfg, device)), device
            )
            rows[path] = {"images_per_s": cfg.batch_size / statistics.median(times[path]), **memory}
    finally:
        torch.Tensor.cuda = saved_cuda
        sys.path[:] = saved_path
    return compare(rows, bench_module.BASELINE[device.type], cfg, device)


def _images(cfg: Any, device: Any) -> Any:
    import torch

    return torch.randn(cfg.batch_size, 3, cfg.img_size, cfg.img_size, device=device)


def compare(rows: dict[str, dict], baseline: str, cfg: Any, device: Any) -> dict[str, Any]:
    """Each path's ratios to ``baseline`` (the reference as it ships), and semaim at the baseline's precision."""
    base = rows[baseline]
    for row in rows.values():
        row["speedup"] = row["images_per_s"] / base["images_per_s"]
        row["step_memory_ratio"] = (
            row["step_bytes"] / base["step_bytes"] if row["step_bytes"] and base["step_bytes"] else None
        )
    same = "semaim-" + baseline.split("-")[1]
    result = {
        "config": cfg.name,
        "batch_size": cfg.batch_size,
        "device": str(device),
        "baseline": baseline,
        "paths": rows,
        "same_precision": {"path": same, **{k: rows[same][k] for k in ("speedup", "step_memory_ratio")}}
        if same in rows
        else None,
    }
    parts = [
        f"{path} {row['images_per_s']:.0f} images/s ({row['speedup']:.2f}×, memory "
        f"{'–' if row['step_memory_ratio'] is None else format(row['step_memory_ratio'], '.2f') + '×'})"
        for path, row in rows.items()
        if path != baseline
    ]
    result["detail"] = f"{cfg.name}, batch {cfg.batch_size}, against {baseline}: " + "; ".join(parts)
    return result
