"""``semaim bench``: the full pretraining step, fast path against the explicit-mask path.

A step is what Algorithm 1 does per batch: the order pass (no-grad encoder), the forward of both
streams, the backward and the optimiser update. Both paths run on the same model and inputs,
interleaved after warm-up; the median images/s of each is reported with their ratio, the achieved
FLOP/s (FLOPs counted analytically, see :func:`step_flops`) and the matmul ceiling measured on the
spot in the same precision. Peak memory is measured in a fresh process per path (on CPU the peak RSS
the steps add on top of the loaded model; on CUDA the allocator's peak).
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

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
            "img_size": self.img_size, "patch_size": self.patch_size, "embed_dim": self.embed_dim,
            "depth": self.depth, "num_heads": self.num_heads, "decoder_depth": self.decoder_depth,
            "order": "semantic",
        }  # fmt: skip


CONFIGS = {
    c.name: c
    for c in (
        BenchConfig("vit-t16-224", 224, 16, 192, 12, 3, 12, 16),
        BenchConfig("vit-s16-224", 224, 16, 384, 12, 6, 12, 8),
        BenchConfig("vit-t4-32", 32, 4, 192, 12, 3, 12, 64),
        BenchConfig("vit-b16-224", 224, 16, 768, 12, 12, 12, 64),
    )
}


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


def matmul_ceiling(device: torch.device, precision: str, n: int = 2048, repeats: int = 10) -> float:
    """FLOP/s of an ``n×n`` matmul in this precision, best of ``repeats``."""
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    best = float("inf")
    for _ in range(repeats + 2):
        _sync(device)
        t0 = time.perf_counter()
        a @ b
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_step(
    model: SemAIM, optimizer: torch.optim.Optimizer, images: torch.Tensor, precision: str, path: str
):
    device = images.device

    def step() -> None:
        with autocast_context(device, precision):
            if path == "fast":
                loss = model(images).loss
            else:
                loss = model.forward_reference(images, model.compute_centerness(images)).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def build(cfg: BenchConfig, device: torch.device, seed: int = 0):
    torch.manual_seed(seed)
    model = SemAIM(**cfg.model_kwargs()).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    images = torch.randn(cfg.batch_size, 3, cfg.img_size, cfg.img_size, device=device)
    return model, optimizer, images


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


def peak_memory(cfg_name: str, device: str, precision: str, path: str, steps: int = 2) -> float:
    """Peak memory (bytes) that ``steps`` steps of one path add, measured in a fresh Python process.

    CPU: peak RSS (VmHWM) minus the RSS after imports, model, optimiser and inputs exist (VmHWM is the
    process's own; ``ru_maxrss`` would carry the parent's peak across exec). CUDA: the allocator's peak.
    """
    code = (
        "import json, re, torch; from semaim.bench import CONFIGS, build, make_step;"
        "kib = lambda key: int(re.search(key + r':\\s+(\\d+)', open('/proc/self/status').read()).group(1)) * 1024;"
        f"d = torch.device({device!r}); m, o, x = build(CONFIGS[{cfg_name!r}], d);"
        f"s = make_step(m, o, x, {precision!r}, {path!r}); base = kib('VmRSS');"
        f"[s() for _ in range({steps})];"
        "print(json.dumps(torch.cuda.max_memory_allocated(d) if d.type == 'cuda' else kib('VmHWM') - base))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def sdpa_kernels(cfg: BenchConfig, device: torch.device, precision: str) -> list[str]:
    """Names of the attention kernels one fast step launches (CUDA only)."""
    from torch.profiler import ProfilerActivity, profile

    model, optimizer, images = build(cfg, device)
    step = make_step(model, optimizer, images, precision, "fast")
    step()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        step()
        _sync(device)
    names = {e.key for e in prof.key_averages()}
    keys = ("flash", "fmha", "efficient", "attention", "cudnn_sdpa")
    return sorted(n for n in names if any(k in n.lower() for k in keys))[:6]


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
    dev = torch.device(device)
    precision = resolve_precision(precision, dev)
    print(
        f"{'config':12s} {'tokens':>6s} {'L':>3s} {'fast s/step':>11s} {'masks s/step':>12s} {'masks/fast':>10s} {'GFLOP/step':>10s} {'predicted s':>11s}"
    )
    rows, base = [], None
    for cfg in SWEEP:
        times = time_paths(cfg, dev, precision, steps, warmup)
        fast, ref = statistics.median(times["fast"]), statistics.median(times["reference"])
        flops = step_flops(cfg) * cfg.batch_size
        if cfg.name == "t-224/16":
            base = fast / flops
        rows.append({"config": cfg.name, "tokens": (cfg.img_size // cfg.patch_size) ** 2 + 1,
                     "decoder_depth": cfg.decoder_depth, "fast_s": fast, "reference_s": ref, "flops": flops})  # fmt: skip
    for row in rows:
        row["predicted_s"] = row["flops"] * base if base else float("nan")
        print(
            f"{row['config']:12s} {row['tokens']:6d} {row['decoder_depth']:3d} {row['fast_s']:11.3f} "
            f"{row['reference_s']:12.3f} {row['reference_s'] / row['fast_s']:10.2f} {row['flops'] / 1e9:10.1f} "
            f"{row['predicted_s']:11.3f}"
        )
    return rows


def run_bench(
    names: list[str], device: str = "cpu", precision: str = "auto", steps: int = 5, warmup: int = 2,
    memory: bool = True, out: str | None = None,
) -> list[dict]:  # fmt: skip
    dev = torch.device(device)
    precision = resolve_precision(precision, dev)
    ceiling = matmul_ceiling(dev, precision)
    print(FORMULA)
    print(
        f"\nmatmul ceiling ({precision}, 2048², {dev}): {ceiling / 1e12:.2f} TFLOP/s; threads {torch.get_num_threads()}"
    )
    header = f"{'config':12s} {'batch':>5s} {'fast img/s':>10s} {'ref img/s':>9s} {'ratio':>6s} {'TFLOP/s':>8s} {'of ceil':>7s}"
    if memory:
        header += f" {'fast MiB':>9s} {'ref MiB':>8s}"
    print(header)
    rows = []
    for name in names:
        if name not in CONFIGS:
            raise ConfigError(f"--config: unknown {name!r}; choose from {sorted(CONFIGS)}")
        cfg = CONFIGS[name]
        times = time_paths(cfg, dev, precision, steps, warmup)
        fast = cfg.batch_size / statistics.median(times["fast"])
        ref = cfg.batch_size / statistics.median(times["reference"])
        achieved = fast * step_flops(cfg)
        row = {
            "config": name, "batch_size": cfg.batch_size, "precision": precision, "device": str(dev),
            "fast_images_per_s": fast, "reference_images_per_s": ref, "ratio": fast / ref,
            "flops_per_image": step_flops(cfg), "achieved_flops": achieved, "ceiling_flops": ceiling,
        }  # fmt: skip
        line = (
            f"{name:12s} {cfg.batch_size:5d} {fast:10.2f} {ref:9.2f} {fast / ref:6.2f} "
            f"{achieved / 1e12:8.3f} {100 * achieved / ceiling:6.1f}%"
        )
        if memory:
            row["fast_peak_bytes"] = peak_memory(name, device, precision, "fast")
            row["reference_peak_bytes"] = peak_memory(name, device, precision, "reference")
            line += f" {row['fast_peak_bytes'] / 2**20:9.0f} {row['reference_peak_bytes'] / 2**20:8.0f}"
        if dev.type == "cuda":
            row["sdpa_kernels"] = sdpa_kernels(cfg, dev, precision)
            line += f"  kernels: {', '.join(row['sdpa_kernels'])}"
        print(line, flush=True)
        rows.append(row)
    if out:
        with open(out, "w") as f:
            json.dump(rows, f, indent=2)
    return rows
