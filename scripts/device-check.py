"""Helpers of ``scripts/device-check.sh``: dependency check, environment record, tiny data, summary.

    python scripts/device-check.py deps                  # exit 1 (and name them) when modules are missing
    python scripts/device-check.py env OUT/env.json [--probe]
    python scripts/device-check.py tiny-data DIR         # a small Fashion-MNIST in IDX files (dry runs)
    python scripts/device-check.py summary OUT           # OUT/summary.json + OUT/summary.md

Only ``env --probe`` imports torch; the rest reads the JSON the steps wrote, so the summary is written
even when the environment is broken.
"""

from __future__ import annotations

import argparse
import gzip
import importlib.metadata
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

MODULES = (
    "torch",
    "torchvision",
    "timm",
    "safetensors",
    "yaml",
    "PIL",
    "numpy",
    "tqdm",
    "tensorboard",
    "matplotlib",
    "skimage",
    "pytest",
)
STEPS = (
    "install",
    "env",
    "tests",
    "bench-b16",
    "bench-l16",
    "reference",
    "loader",
    "pretrain",
    "knn",
    "knn-random",
)
TARGETS = {"mfu": 0.45, "speedup": 1.5, "step_memory_ratio": 0.6}
"""The GPU performance targets on an H100/H200-class GPU: ViT-B/16@224 bf16 MFU, and against the reference at the
same precision, images/s ratio (at least) and step-memory ratio (at most)."""


def deps() -> int:
    missing = [m for m in MODULES if importlib.util.find_spec(m) is None]
    print(" ".join(missing))
    return 1 if missing else 0


def _run(cmd: list[str]) -> str | None:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def env(path: Path, probe: bool) -> int:
    versions = {}
    for dist in ("torch", "torchvision", "timm", "numpy", "pillow"):
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            versions[dist] = None
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "versions": versions,
        "cpus": os.cpu_count(),
        "host": platform.node(),
        "git": _run(["git", "rev-parse", "--short", "HEAD"]),
        "nvidia_smi": _run(
            ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"]
        ),
    }
    if probe:
        import torch

        info["cuda_available"] = torch.cuda.is_available()
        info["torch_cuda"] = torch.version.cuda
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
            info["capability"] = list(torch.cuda.get_device_capability(0))
    path.write_text(json.dumps(info, indent=2))
    print(json.dumps(info))
    return 0


def tiny_data(root: Path, n_train: int = 256, n_test: int = 128) -> int:
    """Fashion-MNIST's four IDX files with random 28×28 items (labels cycle through the 10 classes)."""
    import numpy as np

    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        for kind, array in (
            ("images-idx3", rng.integers(0, 255, (n, 28, 28))),
            ("labels-idx1", np.arange(n) % 10),
        ):
            header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
                int(d).to_bytes(4, "big") for d in array.shape
            )
            with gzip.open(root / f"{prefix}-{kind}-ubyte.gz", "wb") as f:
                f.write(header + array.astype(np.uint8).tobytes())
    return 0


# --------------------------------------------------------------------------- summary
def _load(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _f(value: float | None, spec: str = ".1f", scale: float = 1.0) -> str:
    return "–" if value is None else format(value / scale, spec)


def _check(value: float | None, target: float, at_least: bool) -> str:
    if value is None:
        return "not measured"
    ok = value >= target if at_least else value <= target
    return f"{'met' if ok else 'MISSED'} ({value:.2f} {'≥' if at_least else '≤'} {target})"


def tests_summary(path: Path) -> dict | None:
    """Counts and skip reasons from pytest's JUnit XML."""
    if not path.is_file():
        return None
    suite = ET.parse(path).getroot()
    suite = suite.find("testsuite") if suite.tag == "testsuites" else suite
    reasons: dict[str, int] = {}
    for case in suite.iter("testcase"):
        skipped = case.find("skipped")
        if skipped is not None:
            reason = skipped.get("message", "").removeprefix("Skipped: ")
            reasons[reason] = reasons.get(reason, 0) + 1
    counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    return {
        **counts,
        "passed": counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"],
        "skip_reasons": reasons,
    }


def pretrain_summary(path: Path) -> dict | None:
    if not path.is_file():
        return None
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if not records:
        return None
    steady = [r["images_per_s"] for r in records[len(records) // 5 :]] or [records[-1]["images_per_s"]]
    return {
        "steps": records[-1]["step"],
        "first_loss": records[0]["loss"],
        "last_loss": records[-1]["loss"],
        "median_images_per_s": statistics.median(steady),
        "seconds": records[-1]["time"] - records[0]["time"],
    }


def gather(out: Path) -> dict:
    steps = (
        [json.loads(line) for line in (out / "steps.jsonl").read_text().splitlines() if line.strip()]
        if (out / "steps.jsonl").is_file()
        else []
    )
    order = {name: i for i, name in enumerate(STEPS)}
    steps.sort(key=lambda s: order.get(s["name"], len(order)))
    return {
        "mode": (out / "mode").read_text().strip() if (out / "mode").is_file() else "unknown",
        "env": _load(out / "env.json"),
        "steps": steps,
        "tests": tests_summary(out / "tests.xml"),
        "bench": (_load(out / "bench-b16.json") or []) + (_load(out / "bench-l16.json") or []),
        "reference": _load(out / "reference.json"),
        "loader": _load(out / "loader.json"),
        "pretrain": pretrain_summary(out / "pretrain-metrics.jsonl"),
        "knn": _load(out / "knn.json"),
        "knn_random": _load(out / "knn-random.json"),
    }


def md_steps(s: dict) -> list[str]:
    lines = ["| step | status | seconds | detail |", "|---|---|---|---|"]
    lines += [
        f"| {st['name']} | {st['status']} | {st['seconds']} | {st.get('detail', '')} |" for st in s["steps"]
    ]
    t = s["tests"]
    if t:
        reasons = "; ".join(f"{n} × {r}" for r, n in t["skip_reasons"].items())
        lines += [
            "",
            f"Tests: {t['passed']} passed, {t['failures']} failed, {t['errors']} errors, {t['skipped']} "
            f"skipped" + (f" ({reasons})" if reasons else "") + ".",
        ]
    return lines


def md_bench(s: dict) -> list[str]:
    if not s["bench"]:
        return []
    lines = [
        "",
        "## Pretraining step (`semaim bench`)",
        "",
        "| config | batch | precision | fast img/s | masks img/s | MFU | step memory MiB fast / masks | "
        "SDPA calls (forward) | kernels |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in s["bench"]:
        sdpa = (
            ", ".join(f"{k} {v}" for k, v in sorted(r["sdpa_calls"]["forward"].items())) or "matmul attention"
        )
        lines.append(
            f"| {r['config']} | {r['batch_size']} | {r['precision']} | {r['fast_images_per_s']:.1f} | "
            f"{_f(r['reference_images_per_s'])} | {100 * r['mfu']:.1f} % | {_f(r.get('fast_peak_bytes'), '.0f', 2**20)}"
            f" / {_f(r.get('reference_peak_bytes'), '.0f', 2**20)} | {sdpa} | {', '.join(r.get('sdpa_kernels', []))} |"
        )
    lines.append(f"\nMFU against {s['bench'][0]['peak_source']}.")
    return lines


def md_reference(s: dict) -> list[str]:
    rows = s["reference"] or []
    lines = []
    for row in rows:
        lines += [
            "",
            f"## Against the reference: {row['config']}, batch {row['batch_size']}, {row['device']} "
            f"(baseline {row['baseline']})",
            "",
            "| path | images/s | × baseline | step MiB | × baseline |",
            "|---|---|---|---|---|",
        ]
        for path, r in row.items():
            if isinstance(r, dict):
                lines.append(
                    f"| {path} | {r['images_per_s']:.1f} | {_f(r['speedup'], '.2f')} | "
                    f"{_f(r['step_bytes'], '.0f', 2**20)} | {_f(r['step_memory_ratio'], '.2f')} |"
                )
    return lines


def md_loader_and_run(s: dict) -> list[str]:
    lines = []
    if s["loader"]:
        ld = s["loader"]
        lines += [
            "",
            f"## Input pipeline ({ld['images']} JPEGs of {ld['jpeg_size'][0]}×{ld['jpeg_size'][1]} → "
            f"{ld['img_size']} px, batch {ld['batch_size']})",
            "",
            "| decode | workers | images/s | step consumes | keeps up |",
            "|---|---|---|---|---|",
        ]
        for r in ld["results"]:
            lines.append(
                f"| {r['decode']} | {r['workers']} | {r['images_per_s']:.0f} | "
                f"{_f(ld['step_images_per_s'], '.0f')} ({ld['step_config']}) | {r['keeps_up']} |"
            )
    p, knn, floor = s["pretrain"], s["knn"], s["knn_random"]
    if p:
        lines += [
            "",
            "## Short pretraining, then k-NN",
            "",
            f"{p['steps']} steps in {p['seconds']:.0f} s, {p['median_images_per_s']:.0f} images/s (median "
            f"after the first fifth), loss {p['first_loss']:.4f} → {p['last_loss']:.4f}.",
        ]
    for name, result in (("pretrained", knn), ("random init (floor)", floor)):
        if result:
            top1 = ", ".join(f"k={k}: {v:.2f}" for k, v in result["top1"].items())
            lines.append(f"k-NN top-1 ({name}, {result['data']}): {top1}.")
    return lines


def targets(s: dict) -> list[str]:
    """The GPU performance targets, each met, missed or not measured."""
    b16 = next((r for r in s["bench"] if r["config"] == "vit-b16-224" and r["precision"] == "bf16"), None)
    ref = next((r for r in s["reference"] or [] if r["config"] == "vit-b16-224"), None)
    same = (
        ref.get(ref["baseline"].replace("ref", "semaim")) if ref else None
    )  # semaim at the baseline's precision
    results = (s["loader"] or {}).get("results", [])
    pil = max((r for r in results if r["decode"] == "pil"), key=lambda r: r["workers"], default=None)
    keeps_up = (
        "not measured" if not pil or pil["keeps_up"] is None else ("met" if pil["keeps_up"] else "MISSED")
    )
    return [
        "",
        "## Targets (ViT-B/16@224 on an H100/H200-class GPU)",
        "",
        f"- bf16 MFU ≥ 45 %: {_check(b16 and b16['mfu'], TARGETS['mfu'], True)}",
        f"- ≥ 1.5× the reference's images/s at the same precision: "
        f"{_check(same and same['speedup'], TARGETS['speedup'], True)}",
        f"- step memory ≤ 0.6× the reference's: {_check(same and same['step_memory_ratio'], TARGETS['step_memory_ratio'], False)}",
        f"- the loader ({pil['workers'] if pil else '?'} workers, PIL decoding) sustains the step: {keeps_up}",
    ]


def summary(out: Path) -> int:
    s = gather(out)
    (out / "summary.json").write_text(json.dumps(s, indent=2))
    e = s["env"] or {}
    device = e.get("gpu") or (e.get("nvidia_smi") or "no GPU").splitlines()[0]
    head = [
        f"# Device check ({s['mode']})",
        "",
        f"{device}; torch {e.get('versions', {}).get('torch')}, CUDA {e.get('torch_cuda')}, {e.get('cpus')} CPUs, "
        f"commit {e.get('git')}.",
        "",
    ]
    lines = head + md_steps(s) + md_bench(s) + md_reference(s) + md_loader_and_run(s) + targets(s)
    if s["mode"] != "gpu":
        lines += ["", "(A dry run on the CPU at tiny sizes: it checks the pipeline, not the numbers.)"]
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("deps")
    q = sub.add_parser("env")
    q.add_argument("path", type=Path)
    q.add_argument("--probe", action="store_true", help="import torch: CUDA availability and the GPU's name")
    sub.add_parser("tiny-data").add_argument("root", type=Path)
    sub.add_parser("summary").add_argument("out", type=Path)
    args = p.parse_args()
    if args.command == "deps":
        return deps()
    if args.command == "env":
        return env(args.path, args.probe)
    if args.command == "tiny-data":
        return tiny_data(args.root)
    return summary(args.out)


if __name__ == "__main__":
    sys.exit(main())
