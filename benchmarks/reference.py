"""semaim's pretraining step against the public reference implementation, on the same machine.

    git clone https://github.com/skyoux/SemAIM /path/to/SemAIM      # not shipped with semaim
    python benchmarks/reference.py --reference-dir /path/to/SemAIM --config vit-t16-224 vit-s16-224

The reference's step is run the way its ``engines/engine_pretrain.py`` runs it for the semantic order
(``permutation_type=attention_center``, ``attention_type=cls``, pixel targets with a 9×9 σ=1 blur,
norm-pix loss): a no-grad eval-mode ``forward_encoder`` pass for the order, then ``forward_aim`` with its
B×(N+1)×(N+1) float masks and hand-written attention, ``loss.backward()``, ``torch.optim.AdamW`` with
betas (0.9, 0.95). Its autocast is ``torch.cuda.amp.autocast``, a no-op on CPU, so on CPU it runs in
fp32 as shipped; ``ref-bf16`` wraps the same step in CPU bf16 autocast (a one-line change a user could
make) for calibration. Two adaptations only make it run off-GPU: its hard-coded ``.cuda()`` calls
become no-ops on a CUDA-less machine, and when the clone lacks MAE's ``util/pos_embed.py`` semaim's own
2-D sin-cos table stands in for it (same values; the timing does not depend on them).

semaim runs the same model shape with the same targets (blur σ=1, norm-pix) and the fused AdamW that
``semaim pretrain`` uses. All paths are interleaved step by step after warm-up; medians are reported.
Memory: each path in a fresh process — the peak RSS the steps add over the built model (as in
``semaim bench``) and the process's whole peak RSS.
"""

from __future__ import annotations

import argparse
import importlib
import json
import re
import statistics
import subprocess
import sys
import types
from pathlib import Path

import torch

from semaim.bench import CONFIGS, BenchConfig, make_step, step_flops, time_interleaved
from semaim.engine.optim import param_groups
from semaim.model.semaim import SemAIM

PATHS = ("semaim-bf16", "semaim-fp32", "ref-fp32", "ref-bf16")


def load_reference(reference_dir: Path) -> types.ModuleType:
    """Import ``models/models_semaim.py`` from a clone of the reference repository."""
    if not (reference_dir / "models" / "models_semaim.py").is_file():
        raise SystemExit(
            f"--reference-dir: {reference_dir} has no models/models_semaim.py (clone skyoux/SemAIM)"
        )
    sys.path.insert(0, str(reference_dir))
    if not (reference_dir / "util" / "pos_embed.py").is_file():
        from semaim.model.pos_embed import sincos_2d

        stub = types.ModuleType("util.pos_embed")
        stub.get_2d_sincos_pos_embed = lambda dim, size, cls_token=False: sincos_2d(
            dim, (size, size), cls_token
        ).numpy()
        sys.modules["util.pos_embed"] = stub
    if not torch.cuda.is_available():
        torch.Tensor.cuda = lambda self, *args, **kwargs: self  # the reference hard-codes .cuda()
    return importlib.import_module("models.models_semaim")


def build_reference(module: types.ModuleType, cfg: BenchConfig) -> torch.nn.Module:
    return module.AimViT(
        img_size=cfg.img_size, patch_size=cfg.patch_size, embed_dim=cfg.embed_dim, depth=cfg.depth,
        num_heads=cfg.num_heads, mlp_ratio=4, permutation_type="attention_center", attention_type="cls",
        query_depth=cfg.decoder_depth, prediction_head_type="MLP", gaussian_kernel_size=9,
        gaussian_sigma=1, loss_type="L2", norm_pix_loss=True,
    )  # fmt: skip


def reference_step(model: torch.nn.Module, images: torch.Tensor, bf16: bool):
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95))

    def step() -> None:
        model.eval()  # engine_pretrain: the order pass, no grad, eval mode
        with torch.no_grad():
            _, attention, _ = model(images, forward_encoder=True)
        model.train()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss, _, _ = model(images, None, attention.detach())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    return step


def make_path(path: str, cfg: BenchConfig, reference_dir: Path, images: torch.Tensor):
    torch.manual_seed(0)
    if path.startswith("ref"):
        model = build_reference(load_reference(reference_dir), cfg)
        return reference_step(model, images, bf16=path.endswith("bf16"))
    model = SemAIM(**cfg.model_kwargs(), blur_sigma=1.0)
    optimizer = torch.optim.AdamW(param_groups(model, 0.05), lr=1e-4, betas=(0.9, 0.95), fused=True)
    return make_step(model, optimizer, images, path.split("-")[1], "fast")


def _kib(key: str) -> int:
    return int(re.search(key + r":\s+(\d+)", Path("/proc/self/status").read_text()).group(1)) * 1024


def measure_memory(path: str, cfg: BenchConfig, reference_dir: Path, steps: int = 2) -> dict:
    """Run in a fresh process (see ``--memory-of``): added and total peak RSS of ``steps`` steps."""
    images = torch.randn(cfg.batch_size, 3, cfg.img_size, cfg.img_size)
    step = make_path(path, cfg, reference_dir, images)
    base = _kib("VmRSS")
    for _ in range(steps):
        step()
    return {"added": _kib("VmHWM") - base, "total": _kib("VmHWM")}


def memory_in_fresh_process(path: str, cfg: BenchConfig, reference_dir: Path) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--reference-dir",
        str(reference_dir),
        "--config",
        cfg.name,
        "--memory-of",
        path,
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def time_all(cfg: BenchConfig, reference_dir: Path, steps: int, warmup: int) -> dict[str, list[float]]:
    images = torch.randn(cfg.batch_size, 3, cfg.img_size, cfg.img_size)
    return time_interleaved({p: make_path(p, cfg, reference_dir, images) for p in PATHS}, steps, warmup)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reference-dir", type=Path, required=True, help="a clone of skyoux/SemAIM")
    p.add_argument("--config", nargs="+", default=["vit-t16-224", "vit-s16-224"], choices=sorted(CONFIGS))
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--out", type=Path, help="write the rows as JSON")
    p.add_argument("--memory-of", choices=PATHS, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.memory_of:
        print(json.dumps(measure_memory(args.memory_of, CONFIGS[args.config[0]], args.reference_dir)))
        return
    load_reference(args.reference_dir)  # fail early on a bad directory
    print(
        f"{torch.get_num_threads()} threads; images/s (median of {args.steps}), step memory MiB added / process peak"
    )
    rows = []
    for name in args.config:
        cfg = CONFIGS[name]
        times = time_all(cfg, args.reference_dir, args.steps, args.warmup)
        row = {"config": name, "batch_size": cfg.batch_size, "flops_per_image": step_flops(cfg)}
        for path in PATHS:
            memory = memory_in_fresh_process(path, cfg, args.reference_dir)
            row[path] = {"images_per_s": cfg.batch_size / statistics.median(times[path]),
                         "step_bytes": memory["added"], "peak_rss_bytes": memory["total"]}  # fmt: skip
        ref = row["ref-fp32"]
        for path in PATHS:
            r = row[path]
            print(
                f"{name:12s} {path:12s} {r['images_per_s']:7.2f} img/s  {r['images_per_s'] / ref['images_per_s']:5.2f}× "
                f"ref-fp32  step {r['step_bytes'] / 2**20:6.0f} MiB ({r['step_bytes'] / ref['step_bytes']:.2f}×)  "
                f"peak RSS {r['peak_rss_bytes'] / 2**20:6.0f} MiB ({r['peak_rss_bytes'] / ref['peak_rss_bytes']:.2f}×)",
                flush=True,
            )
        rows.append(row)
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
