"""The version gate: semaim's packages are there and new enough (a timm wheel carried with the working tree is
installed when the machine's timm is older), then torch, timm, CUDA, cuDNN and the GPU are named before any
measurement. What the check cannot run without stops it with a message that says what to do."""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import os
import platform
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

MINIMUM = {"torch": "2.4", "timm": "1.0.26"}
WHY = {
    "torch": "the oldest torch semaim supports",
    "timm": "semaim's fast path calls Block.forward(x, attn_mask=None, is_causal=False)",
}
MODULES = (
    "torch",
    "torchvision",
    "timm",
    "safetensors",
    "yaml",
    "PIL",
    "numpy",
    "scipy",
    "skimage",
    "tqdm",
    "tensorboard",
    "matplotlib",
    "pytest",
)
"""What semaim and its device tests import (by module name)."""
MIN_CUDA = "11.8"
"""The first CUDA release that builds for Hopper (sm_90)."""
WHEEL_HINT = (
    "carry a newer wheel with the working tree: here, pip download --no-deps timm==1.0.31 -d wheels/ "
    "(and name wheels in the device tool's carry argument if git ignores it)"
)


class GateError(Exception):
    """Something the rest of the check cannot run without; ``versions`` holds what was found."""

    def __init__(self, message: str, versions: dict[str, Any]) -> None:
        super().__init__(message)
        self.versions = versions


def version_tuple(text: str) -> tuple[int, ...]:
    """The leading release numbers of a version: ``2.11.0+cu130`` -> (2, 11, 0), ``1.0.27rc1`` -> (1, 0, 27)."""
    numbers = []
    for part in text.split("+")[0].split("."):
        match = re.match(r"\d+", part)
        if not match:
            break
        numbers.append(int(match.group()))
        if match.end() < len(part):
            break
    return tuple(numbers)


def at_least(version: str | None, minimum: str) -> bool:
    return version is not None and version_tuple(version) >= version_tuple(minimum)


def installed_version(dist: str, path: list[str] | None = None) -> str | None:
    """A distribution's version from its metadata, nothing imported; ``path``: look only in these folders."""
    if path is None:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            return None
    found = next(iter(importlib.metadata.distributions(name=dist, path=path)), None)
    return found.version if found is not None else None


def carried_wheel(root: Path, dist: str = "timm") -> Path | None:
    """The newest ``<dist>-*.whl`` in ``$SEMAIM_WHEELS`` (default ``root/wheels``) that meets semaim's minimum,
    if one was carried."""
    folder = Path(os.environ.get("SEMAIM_WHEELS", root / "wheels"))
    wheels = [w for w in folder.glob(f"{dist}-*.whl") if at_least(w.name.split("-")[1], MINIMUM[dist])]
    return max(wheels, key=lambda w: version_tuple(w.name.split("-")[1]), default=None)


def install_wheel(wheel: Path, site: Path) -> None:
    """``pip install --no-index --no-deps`` into ``site``: a folder on PYTHONPATH, so the wheel shadows the
    machine's copy in this process and in every process the check starts, and the machine's Python is left as
    it was (no network is needed, and none is there)."""
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile"]
    cmd += ["--disable-pip-version-check", "--upgrade", "--target", str(site), str(wheel)]
    subprocess.run(cmd, check=True, timeout=120)
    importlib.invalidate_caches()


def check_packages(root: Path, site: Path) -> tuple[dict[str, Any], list[str]]:
    """``(versions, problems)`` from the packages' metadata alone (nothing is imported yet, so a carried timm
    can still replace the machine's): installs ``wheels/timm-*.whl`` into ``site`` when timm is too old."""
    versions: dict[str, Any] = {d: installed_version(d) for d in ("torch", "timm")}
    versions["timm_wheel"] = None
    if not at_least(versions["timm"], MINIMUM["timm"]):
        wheel = carried_wheel(root)
        if wheel is not None:
            install_wheel(wheel, site)
            versions["timm"], versions["timm_wheel"] = installed_version("timm", [str(site)]), wheel.name
    problems = []
    for dist in ("torch", "timm"):
        if not at_least(versions[dist], MINIMUM[dist]):
            found = f"{dist} {versions[dist]}" if versions[dist] else f"no {dist}"
            hint = f"; {WHEEL_HINT}" if dist == "timm" else ""
            problems.append(f"{found}: semaim needs {dist} >= {MINIMUM[dist]} ({WHY[dist]}){hint}")
    missing = [m for m in MODULES if importlib.util.find_spec(m) is None]
    if missing:
        problems.append(f"missing Python modules: {', '.join(missing)} (carry them as wheels)")
    return versions, problems


def cudnn_text(torch: Any) -> str | None:
    """cuDNN's version as ``major.minor.patch`` (torch reports 91002 for 9.10.2, 8902 for 8.9.2)."""
    number = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    if number is None:
        return None
    major, rest = (number // 10000, number % 10000) if number >= 10000 else (number // 1000, number % 1000)
    return f"{major}.{rest // 100}.{rest % 100}"


def driver_version() -> str | None:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None


def runtime_versions() -> dict[str, Any]:
    """What the imported torch and timm say: their versions, CUDA's, cuDNN's, and the GPU."""
    import timm
    import torch

    info: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "cuda": torch.version.cuda,
        "cudnn": cudnn_text(torch),
        "cuda_available": torch.cuda.is_available(),
        "cpus": len(os.sched_getaffinity(0)),
    }
    if info["cuda_available"]:
        props = torch.cuda.get_device_properties(0)
        info["gpu"] = props.name
        info["capability"] = f"{props.major}.{props.minor}"
        info["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
        info["bf16"] = torch.cuda.is_bf16_supported()
        info["driver"] = driver_version()
    return info


def runtime_problems(info: dict[str, Any], mode: str) -> list[str]:
    """What the imported packages rule out: old versions (metadata can lie), and on a GPU run no usable GPU."""
    problems = [
        f"{dist} {info[dist]} is imported: semaim needs {dist} >= {MINIMUM[dist]} ({WHY[dist]})"
        for dist in ("torch", "timm")
        if not at_least(info[dist], MINIMUM[dist])
    ]
    if mode == "gpu":
        if not info["cuda_available"]:
            build = f"CUDA {info['cuda']}" if info["cuda"] else "a CPU-only build"
            problems.append(f"no CUDA device: torch {info['torch']} ({build}) sees no GPU")
        elif not at_least(info["cuda"], MIN_CUDA):
            problems.append(f"CUDA {info['cuda']}: the GPU steps need CUDA >= {MIN_CUDA}")
        elif not info["bf16"]:
            problems.append(f"{info['gpu']} does not compute in bf16, which the measurements use")
    return problems


def describe(info: dict[str, Any]) -> str:
    """One line: torch, timm (and the wheel it came from), CUDA, cuDNN, the GPU."""
    timm = info["timm"] + (f" (from the carried {info['timm_wheel']})" if info.get("timm_wheel") else "")
    gpu = (
        f"{info['gpu']} (sm {info['capability']}, {info['gpu_memory_gib']} GiB, driver {info.get('driver')})"
        if info.get("gpu")
        else "no GPU"
    )
    return (
        f"torch {info['torch']}, timm {timm}, CUDA {info['cuda']}, cuDNN {info['cudnn']}, {gpu}, "
        f"Python {info['python']}, {info['cpus']} CPUs"
    )


def gate(mode: str, root: Path, site: Path) -> dict[str, Any]:
    """The version gate (see the module docstring). Raises :class:`GateError` with the reason to stop."""
    versions, problems = check_packages(root, site)
    print("packages: " + ", ".join(f"{k} {v}" for k, v in versions.items() if v), flush=True)
    if problems:
        raise GateError("; ".join(problems), versions)
    if versions["timm_wheel"] and str(site) not in sys.path:  # normally there already, through PYTHONPATH
        sys.path.insert(0, str(site))
    info = {**runtime_versions(), "timm_wheel": versions["timm_wheel"]}
    print("versions: " + describe(info), flush=True)
    problems = runtime_problems(info, mode)
    if problems:
        raise GateError("; ".join(problems), info)
    return {"versions": info, "detail": describe(info)}
