"""semaim's pretraining step against the public reference implementation, on the same machine.

    git clone https://github.com/skyoux/SemAIM /path/to/SemAIM      # not shipped with semaim
    python benchmarks/reference.py --reference-dir /path/to/SemAIM --config vit-t16-224 vit-s16-224
    python benchmarks/reference.py --reference-dir /path/to/SemAIM --device cuda --config vit-b16-224 --batch-size 256

The reference's step is run the way its ``engines/engine_pretrain.py`` runs it for the semantic order
(``permutation_type=attention_center``, ``attention_type=cls``, pixel targets with a 9×9 σ=1 blur,
norm-pix loss): a no-grad eval-mode ``forward_encoder`` pass for the order, then ``forward_aim`` with its
B×(N+1)×(N+1) float masks and hand-written attention, ``loss.backward()``, ``torch.optim.AdamW`` with
betas (0.9, 0.95). Its autocast is ``torch.cuda.amp.autocast``, a no-op on CPU, so on CPU it runs in
fp32 as shipped; ``ref-bf16`` wraps the same step in CPU bf16 autocast (a one-line change a user could
make) for calibration. Two adaptations only make it run off-GPU: its hard-coded ``.cuda()`` calls
become no-ops when it runs on the CPU, and semaim's own 2-D sin-cos table stands in for MAE's
``util/pos_embed.py`` (same values; the timing does not depend on them), which a clone may lack and
which calls ``np.float``, gone since NumPy 1.24.

On CUDA the reference runs natively, as its engine does: ``.cuda()`` as written, its order pass in fp32
outside autocast, the rest under fp16 autocast with a ``GradScaler`` (``ref-fp16``, the baseline there);
semaim runs the same step in fp16 with a scaler (``semaim-fp16``) and in bf16 (``semaim-bf16``). Neither
side clips gradients or computes their norm, so both do the same work around the model.

semaim runs the same model shape with the same targets (blur σ=1, norm-pix) and the fused AdamW that
``semaim pretrain`` uses. All paths are interleaved step by step after warm-up; medians are reported.
Memory: each path in a fresh process — what the steps add over the built model (as in ``semaim
bench``: peak RSS on CPU, the allocator's peak on CUDA) and the process's whole peak.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import json
import re
import statistics
import subprocess
import sys
import types
from dataclasses import replace
from pathlib import Path

import torch

from semaim.bench import CONFIGS, BenchConfig, make_step, step_flops, time_interleaved
from semaim.engine.distributed import resolve_device
from semaim.engine.optim import param_groups
from semaim.engine.run import autocast_context
from semaim.errors import ConfigError
from semaim.model.semaim import SemAIM

PATHS = ("semaim-bf16", "semaim-fp32", "semaim-fp16", "ref-fp32", "ref-bf16", "ref-fp16")
DEFAULT_PATHS = {
    "cpu": ("semaim-bf16", "semaim-fp32", "ref-fp32", "ref-bf16"),
    "cuda": ("semaim-fp16", "ref-fp16", "semaim-bf16"),
}
BASELINE = {"cpu": "ref-fp32", "cuda": "ref-fp16"}
"""The reference as shipped on each device: what the ratios divide by."""


def load_reference(reference_dir: Path, device: torch.device | None = None) -> types.ModuleType:
    """Import ``models/models_semaim.py`` from a clone of the reference repository."""
    if not (reference_dir / "models" / "models_semaim.py").is_file():
        raise SystemExit(
            f"--reference-dir: {reference_dir} has no models/models_semaim.py (clone skyoux/SemAIM)"
        )
    if str(reference_dir) not in sys.path:
        sys.path.insert(0, str(reference_dir))
    if "util.pos_embed" not in sys.modules:
        from semaim.model.pos_embed import sincos_2d

        stub = types.ModuleType("util.pos_embed")
        stub.get_2d_sincos_pos_embed = lambda dim, size, cls_token=False: sincos_2d(
            dim, (size, size), cls_token
        ).numpy()
        sys.modules["util.pos_embed"] = stub
    if device is None or device.type == "cpu":
        torch.Tensor.cuda = lambda self, *args, **kwargs: self  # the reference hard-codes .cuda()
    return importlib.import_module("models.models_semaim")


def build_reference(module: types.ModuleType, cfg: BenchConfig) -> torch.nn.Module:
    return module.AimViT(
        img_size=cfg.img_size,
        patch_size=cfg.patch_size,
        embed_dim=cfg.embed_dim,
        depth=cfg.depth,
        num_heads=cfg.num_heads,
        mlp_ratio=4,
        permutation_type="attention_center",
        attention_type="cls",
        query_depth=cfg.decoder_depth,
        prediction_head_type="MLP",
        gaussian_kernel_size=9,
        gaussian_sigma=1,
        loss_type="L2",
        norm_pix_loss=True,
    )


def reference_step(model: torch.nn.Module, images: torch.Tensor, precision: str):
    """The reference engine's step: fp32 no-grad order pass, then the loss under autocast (fp16: scaled)."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95))
    scaler = torch.amp.GradScaler(images.device.type, enabled=precision == "fp16")

    def step() -> None:
        model.eval()  # engine_pretrain: the order pass, no grad, eval mode, outside autocast
        with torch.no_grad():
            _, attention, _ = model(images, forward_encoder=True)
        model.train()
        with autocast_context(images.device, precision):
            loss, _, _ = model(images, None, attention.detach())
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad()

    return step


def make_path(path: str, cfg: BenchConfig, reference_dir: Path, images: torch.Tensor):
    torch.manual_seed(0)
    precision = path.split("-")[1]
    if path.startswith("ref"):
        model = build_reference(load_reference(reference_dir, images.device), cfg).to(images.device)
        return reference_step(model, images, precision)
    model = SemAIM(**cfg.model_kwargs(), blur_sigma=1.0).to(images.device)
    optimizer = torch.optim.AdamW(param_groups(model, 0.05), lr=1e-4, betas=(0.9, 0.95), fused=True)
    return make_step(model, optimizer, images, precision, "fast")


def _kib(key: str) -> int:
    return int(re.search(key + r":\s+(\d+)", Path("/proc/self/status").read_text()).group(1)) * 1024


def measure_memory(
    path: str, cfg: BenchConfig, reference_dir: Path, device: torch.device, steps: int = 2
) -> dict:
    """Run in a fresh process (see ``--memory-of``): what ``steps`` steps add over the built model, and the
    process's whole peak (CPU: RSS; CUDA: the allocator's)."""
    images = torch.randn(cfg.batch_size, 3, cfg.img_size, cfg.img_size, device=device)
    step = make_path(path, cfg, reference_dir, images)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        for _ in range(steps):
            step()
        peak = torch.cuda.max_memory_allocated(device)
        return {"added": peak - base, "total": peak}
    base = _kib("VmRSS")
    for _ in range(steps):
        step()
    return {"added": _kib("VmHWM") - base, "total": _kib("VmHWM")}


def memory_in_fresh_process(path: str, cfg: BenchConfig, reference_dir: Path, device: torch.device) -> dict:
    """:func:`measure_memory` in a fresh process; ``None`` values when that process fails (out of memory)."""
    cmd = [
        sys.executable,
        __file__,
        "--reference-dir",
        str(reference_dir),
        "--config",
        cfg.name,
        "--batch-size",
        str(cfg.batch_size),
        "--device",
        str(device),
        "--memory-of",
        path,
    ]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        print(f"{path}: the memory process failed: {out.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
        return {"added": None, "total": None}
    return json.loads(out.stdout.strip().splitlines()[-1])


def time_all(
    cfg: BenchConfig,
    reference_dir: Path,
    steps: int,
    warmup: int,
    device: torch.device,
    paths: tuple[str, ...],
) -> dict[str, list[float]]:
    images = torch.randn(cfg.batch_size, 3, cfg.img_size, cfg.img_size, device=device)
    runs = {p: make_path(p, cfg, reference_dir, images) for p in paths}
    return time_interleaved(runs, steps, warmup, device)


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def config_row(
    cfg: BenchConfig, args: argparse.Namespace, device: torch.device, paths: tuple[str, ...]
) -> dict:
    """Time every path on one config (interleaved), then measure each one's memory in a fresh process."""
    times = time_all(cfg, args.reference_dir, args.steps, args.warmup, device, paths)
    if device.type == "cuda":
        gc.collect()
        torch.cuda.empty_cache()  # the memory processes need the device to themselves
    baseline = (
        BASELINE[device.type] if BASELINE[device.type] in paths else next(p for p in paths if "ref" in p)
    )
    row = {
        "config": cfg.name,
        "batch_size": cfg.batch_size,
        "device": str(device),
        "baseline": baseline,
        "flops_per_image": step_flops(cfg),
    }
    for path in paths:
        memory = memory_in_fresh_process(path, cfg, args.reference_dir, device)
        row[path] = {
            "images_per_s": cfg.batch_size / statistics.median(times[path]),
            "step_bytes": memory["added"],
            "peak_rss_bytes": memory["total"],
        }
    ref = row[baseline]
    for path in paths:
        r = row[path]
        r["speedup"] = _ratio(r["images_per_s"], ref["images_per_s"])
        r["step_memory_ratio"] = _ratio(r["step_bytes"], ref["step_bytes"])
        mib = "-" if r["step_bytes"] is None else f"{r['step_bytes'] / 2**20:6.0f}"
        peak = "-" if r["peak_rss_bytes"] is None else f"{r['peak_rss_bytes'] / 2**20:6.0f}"
        print(
            f"{cfg.name:12s} {path:12s} {r['images_per_s']:7.2f} img/s  {r['speedup']:5.2f}× {baseline}  "
            f"step {mib} MiB ({r['step_memory_ratio'] or float('nan'):.2f}×)  peak {peak} MiB",
            flush=True,
        )
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reference-dir", type=Path, required=True, help="a clone of skyoux/SemAIM")
    p.add_argument("--config", nargs="+", default=["vit-t16-224", "vit-s16-224"], choices=sorted(CONFIGS))
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--batch-size", type=int, help="batch of every config (default: the config's own)")
    p.add_argument(
        "--paths",
        nargs="+",
        choices=PATHS,
        help=f"default: {' '.join(DEFAULT_PATHS['cpu'])} on CPU, {' '.join(DEFAULT_PATHS['cuda'])} on CUDA",
    )
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--out", type=Path, help="write the rows as JSON")
    p.add_argument("--memory-of", choices=PATHS, help=argparse.SUPPRESS)
    args = p.parse_args()
    try:
        device = resolve_device(args.device)
    except ConfigError as err:
        p.error(str(err))
    paths = tuple(args.paths or DEFAULT_PATHS[device.type])
    if device.type != "cuda" and any(path.endswith("fp16") for path in paths):
        p.error("--paths: fp16 paths need a CUDA device")
    configs = [
        CONFIGS[n] if args.batch_size is None else replace(CONFIGS[n], batch_size=args.batch_size)
        for n in args.config
    ]
    if args.memory_of:
        print(json.dumps(measure_memory(args.memory_of, configs[0], args.reference_dir, device)))
        return
    load_reference(args.reference_dir, device)  # fail early on a bad directory
    print(
        f"{device}, {torch.get_num_threads()} threads; images/s (median of {args.steps}), "
        "step memory MiB added / process peak"
    )
    rows = []
    for cfg in configs:
        rows.append(config_row(cfg, args, device, paths))
        if args.out:
            args.out.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
