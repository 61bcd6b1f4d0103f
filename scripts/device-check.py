"""The device check: its plan (each step's name, time limit and command), the runner that keeps to it, and the
summary with the GPU performance targets. ``scripts/device-check.sh`` is the entry point; it calls ``run``.

    python scripts/device-check.py run --mode gpu|dry-run --out OUT --work SCRATCH [--reference-dir DIR]
    python scripts/device-check.py plan [--mode gpu|dry-run]        # the plan as JSON
    python scripts/device-check.py steps --mode M --work W NAME...  # in-process steps (what ``run`` starts)
    python scripts/device-check.py torchrun-worker --mode M --work W   # what torchrun starts

The steps of the ``measure`` process run one after another in one Python process (one torch start-up), each
under its own time limit; a step that fails, or the process dying, is recorded and the rest still run (a new
process takes over the remaining steps). The other steps are commands of their own. Only the version gate
stops the check: nothing after it would mean anything. ``run`` writes exactly two files to OUT,
``device-check.json`` and ``device-check.log``; everything else goes to the scratch folder. Only the standard
library is imported here: torch is imported by the steps, after the gate (``scripts/device_check/``).
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import itertools
import json
import math
import os
import shlex
import signal
import subprocess
import sys
import time
import traceback
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = "scripts/device-check.py"
MEASURE = "measure"
"""The process the in-process steps share."""
BUDGET_S = {"gpu": 360, "dry-run": 170}
"""The whole check's wall time, imports included: on a GPU machine, and on the CPU with --dry-run."""
MIN_START_S = 10
"""A step that would start with less of the budget left is skipped."""
PEAK_BF16_FLOPS = 989.4e12
"""Dense bf16 tensor-core peak of an H100 SXM / H200 (their data sheets): what the MFU target divides by."""


# --------------------------------------------------------------------------- the plan
@dataclass(frozen=True)
class Step:
    """One step: its name, time limit, the process it runs in (``measure``: the shared one), the command that
    runs it (``{python}``, ``{script}``, ``{mode}`` and ``{work}`` filled in when run), what it measures, its
    sizes, and why it will not run (``skip``, decided when planning)."""

    name: str
    limit_s: int
    process: str
    command: tuple[str, ...]
    what: str
    params: dict[str, Any] = field(default_factory=dict)
    skip: str | None = None


def in_process(name: str) -> tuple[str, ...]:
    return ("{python}", "{script}", "steps", "--mode", "{mode}", "--work", "{work}", name)


TORCHRUN = ("{python}", "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1")
TORCHRUN += ("{script}", "torchrun-worker", "--mode", "{mode}", "--work", "{work}")
PYTEST = ("{python}", "-m", "pytest", "tests/cuda", "-m", "cuda", "-q", "-rs", "-p", "no:cacheprovider")
PYTEST += ("--junitxml={work}/tests.xml",)
TINY = {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2, "decoder_depth": 2}
B16 = {"model": "vit-b16-224", "device": "cuda", "precision": "bf16", "batch_size": "max", "max_batch": 4096}
REFERENCE = {"model": "vit-b16-224", "device": "cuda", "batch_size": 256, "steps": 6, "warmup": 2}
REFERENCE |= {"paths": ["ref-fp16", "semaim-fp16", "semaim-bf16"]}
RUN = {"device": "cuda", "precision": "bf16", "workers": 2, "batch_size": 64}
"""A tiny pretraining run on the GPU: cpu-tiny's model (32 px, 64 tokens, 6 + 6 blocks of width 128)."""

GPU_PLAN = (
    Step(
        "gate",
        30,
        MEASURE,
        in_process("gate"),
        "torch >= 2.4, timm >= 1.0.26 (a carried wheel when older); torch, timm, CUDA, cuDNN and the GPU named",
    ),
    Step(
        "bench-b16",
        60,
        MEASURE,
        in_process("bench-b16"),
        "ViT-B/16@224 bf16 training step at the largest batch that fits: images/s, MFU, memory, SDPA kernels",
        {**B16, "steps": 8, "warmup": 2},
    ),
    Step(
        "reference",
        50,
        MEASURE,
        in_process("reference"),
        "ViT-B/16@224, batch 256: semaim against the reference at its own precision (fp16), and semaim in bf16",
        REFERENCE,
    ),
    Step(
        "bench-l16",
        45,
        MEASURE,
        in_process("bench-l16"),
        "ViT-L/16@224 bf16 training step at the largest batch that fits",
        {**B16, "model": "vit-l16-224", "steps": 5, "warmup": 2},
    ),
    Step(
        "pretrain-resume",
        45,
        MEASURE,
        in_process("pretrain-resume"),
        "tiny pretraining on generated data, SIGKILLed mid-run and resumed: an uninterrupted run's losses",
        {**RUN, "limit": 1024, "epochs": 6, "save_every": 5, "kill_after": 23},
    ),
    Step(
        "torchrun",
        40,
        "torchrun",
        TORCHRUN,
        "semaim pretrain under torchrun --nproc_per_node 1, then a DDP step and an all-reduce on NCCL",
        {**RUN, "limit": 256, "epochs": 2, "save_every": 4},
    ),
    Step("tests", 75, "tests", PYTEST, "the device tests: pytest -m cuda tests/cuda"),
)
"""The plan on one H100/H200-class GPU, the most valuable measurement first: 345 s of limits in all (the gate's
30 s hold the first torch import and CUDA start on a cold machine)."""

DRY_LIMITS = {"gate": 25, "bench-b16": 15, "reference": 30, "bench-l16": 10, "pretrain-resume": 35}
DRY_LIMITS |= {"torchrun": 25, "tests": 30}
"""The dry run's time limits: 170 s in all, about twice what each step takes on two busy CPU cores."""
DRY_BENCH = {
    "model": "tiny-32",
    "device": "cpu",
    "precision": "fp32",
    "steps": 2,
    "warmup": 1,
    "matmul_size": 256,
}
DRY_RUN = {"device": "cpu", "precision": "fp32", "workers": 0, "model": TINY, "batch_size": 8}
DRY_SIZES = {
    "gate": ({}, "no GPU needed"),
    "bench-b16": ({**DRY_BENCH, "batch_size": "max", "max_batch": 8}, "tiny-32, batch ≤ 8"),
    "reference": (
        {
            **DRY_BENCH,
            "model": "vit-t16-224",
            "batch_size": 2,
            "steps": 1,
            "paths": ["ref-fp32", "semaim-fp32"],
        },
        "ViT-T/16 (the reference's code needs 12 blocks), batch 2",
    ),
    "bench-l16": ({**DRY_BENCH, "batch_size": "max", "max_batch": 2, "steps": 1, "warmup": 0}, "tiny-32"),
    "pretrain-resume": ({**DRY_RUN, "limit": 24, "epochs": 2, "save_every": 2, "kill_after": 3}, "6 steps"),
    "torchrun": ({**DRY_RUN, "limit": 8, "epochs": 1, "save_every": 1}, "gloo, 1 step"),
    "tests": ({}, "CUDA cases skipped"),
}
"""Each step's sizes in a dry run, and what stands in for the GPU plan's."""


def dry_plan() -> list[Step]:
    """The same steps on the CPU at tiny sizes, in fp32 (:data:`DRY_SIZES`, :data:`DRY_LIMITS`)."""
    steps = []
    for step in GPU_PLAN:
        params, stand_in = DRY_SIZES[step.name]
        what = f"{step.what} [dry run: {stand_in}]"
        steps.append(replace(step, limit_s=DRY_LIMITS[step.name], params=params, what=what))
    return steps


def reference_missing(reference_dir: str | None) -> str | None:
    """Why the reference comparison cannot run, or ``None`` when ``reference_dir`` holds the clone."""
    if not reference_dir:
        return (
            "no reference clone: pass --reference-dir DIR or set SEMAIM_REFERENCE_DIR=DIR (a clone of "
            "github.com/skyoux/SemAIM inside the working tree, carried to the GPU machine with it)"
        )
    if not (Path(reference_dir) / "models" / "models_semaim.py").is_file():
        return f"{reference_dir} holds no models/models_semaim.py: not a clone of github.com/skyoux/SemAIM"
    return None


def plan(mode: str, reference_dir: str | None = None) -> list[Step]:
    steps = list(GPU_PLAN) if mode == "gpu" else dry_plan()
    why = reference_missing(reference_dir)
    return [replace(s, skip=why) if s.name == "reference" and why else s for s in steps]


# --------------------------------------------------------------------------- the targets
@dataclass(frozen=True)
class Target:
    name: str
    what: str
    bound: float
    at_least: bool


TARGETS = (
    Target("mfu", "ViT-B/16@224 bf16 step: MFU against the 989 TFLOP/s dense bf16 peak", 0.45, True),
    Target("speedup", "ViT-B/16@224: images/s against the reference at the same precision", 1.5, True),
    Target("memory", "ViT-B/16@224: step memory against the reference's at the same precision", 0.6, False),
)
"""The GPU performance targets, on an H100/H200-class GPU."""


def target_values(results: dict[str, dict]) -> dict[str, float | None]:
    """Each target's measured value from the steps' results (``None``: not measured)."""
    bench = results.get("bench-b16") or {}
    same = (results.get("reference") or {}).get("same_precision") or {}
    achieved = bench.get("achieved_flops")
    return {
        "mfu": achieved / PEAK_BF16_FLOPS if achieved else None,
        "speedup": same.get("speedup"),
        "memory": same.get("step_memory_ratio"),
    }


def evaluate_targets(results: dict[str, dict], mode: str) -> list[dict[str, Any]]:
    """Each target met, missed or not measured. A dry run's tiny CPU numbers say nothing about the targets:
    their values are shown, their status is "not measured"."""
    rows = []
    for target, value in zip(TARGETS, target_values(results).values(), strict=True):
        if value is None or mode != "gpu":
            status = "not measured"
        else:
            status = (
                "met" if (value >= target.bound if target.at_least else value <= target.bound) else "missed"
            )
        bound = f"{'≥' if target.at_least else '≤'} {target.bound:g}"
        rows.append(
            {"name": target.name, "what": target.what, "target": bound, "value": value, "status": status}
        )
    return rows


# --------------------------------------------------------------------------- results of the standalone steps
def tests_results(work: Path) -> dict[str, Any]:
    """Counts and skip reasons from pytest's JUnit XML."""
    path = work / "tests.xml"
    if not path.is_file():
        return {}
    suite = ET.parse(path).getroot()
    suite = suite.find("testsuite") if suite.tag == "testsuites" else suite
    reasons: dict[str, int] = {}
    for case in suite.iter("testcase"):
        skipped = case.find("skipped")
        if skipped is not None:
            reason = skipped.get("message", "").removeprefix("Skipped: ")
            reasons[reason] = reasons.get(reason, 0) + 1
    counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    skips = "".join(f" ({n} × {r})" for r, n in reasons.items())
    detail = f"{counts['passed']} passed, {counts['failures']} failed, {counts['errors']} errors, "
    return {**counts, "skip_reasons": reasons, "detail": detail + f"{counts['skipped']} skipped{skips}"}


def torchrun_results(work: Path) -> dict[str, Any]:
    try:
        return json.loads((work / "torchrun.json").read_text())
    except (OSError, ValueError):
        return {}


RESULTS = {"tests": tests_results, "torchrun": torchrun_results}


# --------------------------------------------------------------------------- the runner
@dataclass
class Context:
    mode: str
    work: Path
    python: str = sys.executable
    reference_dir: str | None = None
    root: Path = ROOT


def command(step: Step, ctx: Context) -> list[str]:
    values = {"python": ctx.python, "script": SCRIPT, "mode": ctx.mode, "work": str(ctx.work)}
    return [part.format(**values) for part in step.command]


def child_env(ctx: Context) -> dict[str, str]:
    """This tree's code, the carried wheels' folder first, whether or not semaim is installed; unbuffered
    output, so that a killed step's log is complete. A dry run's tiny models run on one CPU thread each
    (unless OMP_NUM_THREADS says otherwise): several threads only wait on each other at these sizes, and
    on a busy machine they can make a step forty times slower. The cuBLAS workspace is named as Hopper's
    default (32 MiB): deterministic mode, which the resume check uses, refuses cuBLAS without it, and every
    process of the check then computes with the same workspace."""
    path = [str(ctx.work / "site"), str(ctx.root / "src"), str(ctx.root), os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in path if p), "PYTHONUNBUFFERED": "1"}
    env.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    if ctx.mode != "gpu":
        env.setdefault("OMP_NUM_THREADS", "1")
    env.pop("SEMAIM_REFERENCE_DIR", None)
    if ctx.reference_dir:
        env["SEMAIM_REFERENCE_DIR"] = ctx.reference_dir
    return env


def clean(value: Any) -> Any:
    """JSON without NaN or infinity (not JSON): those become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean(v) for v in value]
    return value


class Events:
    """What an in-process group's process writes to ``WORK/records.jsonl``, read as it grows: the step it is
    in (``running``: the step and when it started) and each finished step's record."""

    def __init__(self, path: Path, steps: dict[str, Step]) -> None:
        self.path, self.steps = path, steps
        self.offset = path.stat().st_size if path.is_file() else 0
        self.since, self.running, self.finished = time.monotonic(), None, 0

    def new(self) -> list[tuple[Step, dict[str, Any]]]:
        """The records finished since the last call (complete lines only)."""
        if not self.path.is_file():
            return []
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            data = f.read()
        data = data[: data.rfind(b"\n") + 1]
        self.offset += len(data)
        done = []
        for line in data.decode().splitlines():
            event = json.loads(line)
            step = self.steps[event["name"]]
            if event.get("event") == "start":
                self.running = (step, time.monotonic())
            else:
                self.running = None
                self.finished += 1
                done.append((step, event))
        return done


class Runner:
    """Runs the plan within the budget and keeps the records, the log and the JSON summary up to date."""

    def __init__(self, ctx: Context, steps: list[Step], out: Path) -> None:
        self.ctx, self.steps, self.out = ctx, steps, out
        self.records: dict[str, dict[str, Any]] = {}
        self.stopped: str | None = None
        self.start, self.started = time.monotonic(), datetime.datetime.now(datetime.UTC)
        self.log_path = out / "device-check.log"
        self.log = open(self.log_path, "w")  # noqa: SIM115  (open for the whole run; children append to it)
        (ctx.work / "site").mkdir(parents=True, exist_ok=True)

    def say(self, text: str) -> None:
        line = f"[{time.strftime('%H:%M:%S')}] {text}"
        print(line, flush=True)
        self.log.write(line + "\n")
        self.log.flush()

    def left(self) -> float:
        return BUDGET_S[self.ctx.mode] - (time.monotonic() - self.start)

    def record(self, step: Step, status: str, seconds: float = 0.0, detail: str = "", **extra: Any) -> None:
        rec = {"name": step.name, "status": status, "seconds": round(seconds, 1), "limit_s": step.limit_s}
        self.records[step.name] = {**rec, "detail": detail, **extra}
        self.say(f"{step.name}: {status} ({seconds:.0f} s) {detail}")
        self.write_summary()

    def launch(self, cmd: list[str], limit: float, poll: Any = None) -> tuple[int, bool, str]:
        """``(exit status, timed out, last line of its output)`` of ``cmd``, its output appended to the log;
        ``poll()`` is called twice a second meanwhile. Past ``limit`` seconds its process group gets SIGTERM,
        then SIGKILL."""
        self.log.flush()
        offset, deadline = self.log_path.stat().st_size, time.monotonic() + limit
        proc = subprocess.Popen(
            cmd,
            cwd=self.ctx.root,
            env=child_env(self.ctx),
            stdout=self.log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        while proc.poll() is None and time.monotonic() < deadline:
            with suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=min(0.5, max(0.01, deadline - time.monotonic())))
            if poll is not None:
                poll()
        timed_out = proc.poll() is None
        for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, None)) if timed_out else ():
            with suppress(ProcessLookupError):  # it may have exited meanwhile
                os.killpg(proc.pid, sig)
            with suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=wait)
                break
        with open(self.log_path, "rb") as f:
            f.seek(offset)
            lines = [ln.strip() for ln in f.read().decode(errors="replace").splitlines() if ln.strip()]
        return proc.returncode, timed_out, (lines[-1][:300] if lines else "(no output)")

    def run(self) -> int:
        self.say(f"device check ({self.ctx.mode}): budget {BUDGET_S[self.ctx.mode]} s, out {self.out}")
        for i, step in enumerate(self.steps):
            if step.name in self.records:
                continue
            if self.stopped:
                self.record(step, "not run", detail="the version gate stopped the check")
            elif step.skip:
                self.record(step, "skipped", detail=step.skip)
            elif step.process == MEASURE:
                group = itertools.takewhile(lambda s: s.process == MEASURE, self.steps[i:])
                self.run_group([s for s in group if not s.skip and s.name not in self.records])
            else:
                self.run_command(step)
        summary = self.write_summary()
        for t in summary["targets"]:
            value = "–" if t["value"] is None else f"{t['value']:.3g}"
            self.say(f"target {t['name']} ({t['what']}, {t['target']}): {t['status']}, {value}")
        self.say(f"done in {summary['seconds']:.0f} s: {self.out / 'device-check.json'}")
        return 0 if summary["ok"] else 1

    def run_command(self, step: Step) -> None:
        """A step that is a command of its own: ok when it exits 0."""
        if self.left() < MIN_START_S:
            self.record(step, "skipped", detail="no time left in the budget")
            return
        limit = min(step.limit_s, self.left())
        self.say(f"{step.name} (limit {limit:.0f} s): {shlex.join(command(step, self.ctx))}")
        start = time.monotonic()
        code, timed_out, last = self.launch(command(step, self.ctx), limit)
        results = RESULTS[step.name](self.ctx.work)
        detail = results.pop("detail", "")
        status = "ok" if code == 0 else "timeout" if timed_out else "failed"
        if status != "ok":
            detail = f"exit {code}{' at its time limit' if timed_out else ''}; last line: {last}" + (
                f"; {detail}" if detail else ""
            )
        self.record(step, status, time.monotonic() - start, detail, rc=code, results=results)

    def run_group(self, group: list[Step]) -> None:
        """The in-process steps in one process, each recorded as soon as it ends; when the process dies, the
        step it was in is recorded and a new process takes over the rest."""
        while group:
            if self.left() < MIN_START_S:
                for step in group:
                    self.record(step, "skipped", detail="no time left in the budget")
                return
            cmd = command(group[0], self.ctx)[:-1] + [s.name for s in group]
            limit = min(sum(s.limit_s for s in group), self.left()) + 5
            self.say(f"{', '.join(s.name for s in group)} (limit {limit:.0f} s): {shlex.join(cmd)}")
            events = Events(self.ctx.work / "records.jsonl", {s.name: s for s in group})
            code, timed_out, last = self.launch(cmd, limit, poll=lambda events=events: self.take(events))
            self.take(events)
            rest = [s for s in group if s.name not in self.records]
            if rest and not self.stopped and (events.running or not events.finished):
                # It died in a step, or before its first: that step fails (a process that stops between
                # steps, its CUDA context lost, leaves the rest to the next one).
                dead, since = events.running or (rest[0], events.since)
                how = "ran past its time limit" if timed_out else f"exited {code}"
                detail = f"the process {how} in this step; last line: {last}"
                self.record(
                    dead, "timeout" if timed_out else "failed", time.monotonic() - since, detail, rc=code
                )
            group = [] if self.stopped else [s for s in rest if s.name not in self.records]

    def take(self, events: Events) -> None:
        """Record the steps the group's process has finished since the last look."""
        for step, event in events.new():
            extra = {
                k: v for k, v in event.items() if k not in ("name", "status", "seconds", "detail", "stop")
            }
            self.record(step, event["status"], event["seconds"], event["detail"], **extra)
            if event.get("stop"):
                self.stopped = event["detail"]
                self.say(f"STOPPED by the version gate: {self.stopped}")

    def summary(self) -> dict[str, Any]:
        """The JSON summary: versions, the plan, every step's record, the targets."""
        results = {name: rec.get("results") or {} for name, rec in self.records.items()}
        done = [self.records[s.name] for s in self.steps if s.name in self.records]
        summary = {
            "mode": self.ctx.mode,
            "ok": len(done) == len(self.steps) and all(r["status"] in ("ok", "skipped") for r in done),
            "started": self.started.isoformat(timespec="seconds"),
            "seconds": round(time.monotonic() - self.start, 1),
            "budget_s": BUDGET_S[self.ctx.mode],
            "versions": results.get("gate", {}).get("versions") or package_versions(),
            "gate": {"passed": self.records.get("gate", {}).get("status") == "ok", "stopped": self.stopped},
            "plan": [self.plan_row(s) for s in self.steps],
            "plan_limit_s": sum(s.limit_s for s in self.steps),
            "steps": done,
            "targets": evaluate_targets(results, self.ctx.mode),
        }
        if self.ctx.mode != "gpu":
            summary["note"] = "a dry run: tiny models on the CPU check the check, not the numbers"
        return clean(summary)

    def plan_row(self, step: Step) -> dict[str, Any]:
        row = {"name": step.name, "limit_s": step.limit_s, "process": step.process, "what": step.what}
        row |= {"command": shlex.join(command(step, self.ctx)), "params": step.params}
        return row | ({"skip": step.skip} if step.skip else {})

    def write_summary(self) -> dict[str, Any]:
        summary = self.summary()
        tmp = self.out / ".device-check.json.tmp"
        tmp.write_text(json.dumps(summary, indent=2) + "\n")
        os.replace(tmp, self.out / "device-check.json")
        return summary


def package_versions() -> dict[str, str | None]:
    versions = {}
    for dist in ("torch", "timm"):
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            versions[dist] = None
    return versions


# --------------------------------------------------------------------------- the in-process side
class StepTimeout(BaseException):
    """A step past its time limit (a BaseException, so that no ``except Exception`` in a library swallows it)."""


@contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    def expire(signum: int, frame: Any) -> None:
        raise StepTimeout

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def step_functions() -> dict[str, Any]:
    """Each in-process step's function ``(params, context) -> results``; ``results["detail"]``: one line."""
    from device_check import gate, measure, train

    return {
        "gate": lambda p, ctx: gate.gate(ctx.mode, ctx.root, ctx.work / "site"),
        "bench-b16": measure.bench,
        "reference": measure.reference,
        "bench-l16": measure.bench,
        "pretrain-resume": train.pretrain_resume,
        "torchrun-worker": train.torchrun_worker,
    }


def run_one(step: Step, ctx: Context) -> dict[str, Any]:
    """Run one in-process step under its time limit; its record (``stop``: the gate failed)."""
    from device_check import StepError
    from device_check.gate import GateError

    print(f"\n===== {step.name} (limit {step.limit_s} s): {step.what}", flush=True)
    start, rec = time.monotonic(), {"name": step.name, "status": "ok", "detail": "", "results": {}}
    try:
        with time_limit(step.limit_s):
            rec["results"] = step_functions()[step.name](step.params, ctx)
        rec["detail"] = rec["results"].pop("detail", "")
    except StepTimeout:
        rec.update(status="timeout", detail=f"stopped at its {step.limit_s} s time limit")
    except GateError as err:
        rec.update(status="failed", detail=str(err), results={"versions": err.versions}, stop=True)
    except StepError as err:
        rec.update(status="failed", detail=str(err), results=err.results)
    except Exception as err:
        traceback.print_exc()
        first = (str(err).strip().splitlines() or [""])[0][:300]
        rec.update(status="failed", detail=f"{type(err).__name__}: {first}".rstrip(": "))
    finally:
        release_memory()
    print(f"===== {step.name}: {rec['status']} {rec['detail']}", flush=True)
    return {**rec, "seconds": round(time.monotonic() - start, 1)}


def release_memory() -> None:
    import gc

    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        with suppress(RuntimeError):  # a broken CUDA context: cuda_broken() says so next
            torch.cuda.empty_cache()


def cuda_broken() -> bool:
    """Whether this process's CUDA context is lost (an illegal address, a device-side assert): every later
    step here would fail too, so the rest go to a fresh process."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_initialized():
        return False
    try:
        torch.cuda.synchronize()
    except RuntimeError:
        return True
    return False


def run_steps(names: list[str], ctx: Context) -> int:
    """The in-process steps ``names`` one after another, each recorded to ``WORK/records.jsonl`` as it starts
    and ends (so the runner knows where a process that died was)."""
    steps = {s.name: s for s in plan(ctx.mode, ctx.reference_dir)}
    with open(ctx.work / "records.jsonl", "a") as records:
        for name in names:
            records.write(json.dumps({"name": name, "event": "start"}) + "\n")
            records.flush()
            rec = run_one(steps[name], ctx)
            records.write(json.dumps(clean(rec), default=str) + "\n")
            records.flush()
            if rec.get("stop"):
                return 3
            if rec["status"] != "ok" and cuda_broken():
                print("the CUDA context is lost: the remaining steps go to a new process", flush=True)
                return 4
    return 0


def torchrun_worker(ctx: Context) -> int:
    """The torchrun step's process: its results go to ``WORK/torchrun.json`` (rank 0)."""
    step = next(s for s in plan(ctx.mode) if s.name == "torchrun")
    rec = run_one(replace(step, name="torchrun-worker"), ctx)
    if int(os.environ.get("RANK", "0")) == 0:
        (ctx.work / "torchrun.json").write_text(
            json.dumps(clean({**rec["results"], "detail": rec["detail"]}))
        )
    return 0 if rec["status"] == "ok" else 1


# --------------------------------------------------------------------------- command line
def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    for name in ("run", "steps", "torchrun-worker", "plan"):
        q = sub.add_parser(name)
        q.add_argument("--mode", choices=sorted(BUDGET_S), default="gpu")
        if name != "plan":
            q.add_argument("--work", type=Path, required=True, help="the scratch folder")
    sub.choices["run"].add_argument("--out", type=Path, required=True)
    sub.choices["run"].add_argument("--python", default=sys.executable, help="the Python the steps run in")
    sub.choices["run"].add_argument("--reference-dir", default=os.environ.get("SEMAIM_REFERENCE_DIR"))
    sub.choices["steps"].add_argument("names", nargs="+")
    args = p.parse_args()
    if args.command == "plan":
        print(
            json.dumps(
                [s.__dict__ for s in plan(args.mode, os.environ.get("SEMAIM_REFERENCE_DIR"))], indent=2
            )
        )
        return 0
    reference = getattr(args, "reference_dir", None) or os.environ.get("SEMAIM_REFERENCE_DIR")
    reference = str(Path(reference).resolve()) if reference else None
    ctx = Context(args.mode, args.work.resolve(), getattr(args, "python", sys.executable), reference)
    if args.command == "steps":
        return run_steps(args.names, ctx)
    if args.command == "torchrun-worker":
        return torchrun_worker(ctx)
    args.out.mkdir(parents=True, exist_ok=True)
    return Runner(ctx, plan(args.mode, reference), args.out.resolve()).run()


if __name__ == "__main__":
    sys.exit(main())
