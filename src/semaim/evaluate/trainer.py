"""The supervised trainer that ``semaim finetune`` and ``semaim segment`` share.

A :class:`SupervisedTask` says what is the task's own (data, model, loss, metric, messages); this module
runs it the same way for both: the run folder (locked, resumable), AdamW steps under warmup + cosine with
per-group lr scales (layer-wise decay), a ``metrics.jsonl`` record per step, ``checkpoint-last.pt``
every ``save_every_steps`` and after every epoch, validation every ``eval_every`` epochs and after the
last (``eval.jsonl``; a new best of the selection metric saved as ``checkpoint-best.pt``), and the test
split scored once, at the end, with the last or the best-validation weights (``select``), into
``result.json``. Evaluation-level because the starting encoder comes from
:func:`~semaim.evaluate.encoders.starting_weights`.

``--resume`` continues only the run the folder holds: every checkpoint records the run's identity (its
settings but :data:`RESUMABLE`, a hash of the starting weights, the data's ``fingerprint()`` and the images
drawn from it), and a resume that would build another run is refused before anything is written. A kill at
any moment leaves files that a resume makes exact: the metric and validation lines after the resumed
checkpoint's step are dropped, and a validation line is written only once the best checkpoint it may
select is in place.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import sys
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from ..config import FinetuneRunConfig, SegmentRunConfig
from ..data.sampler import EpochSampler
from ..engine.checkpoint import load_checkpoint, save_atomic
from ..engine.distributed import resolve_device
from ..engine.optim import lr_at
from ..engine.run import LAST, RunFolder, append_record, check_finite, resolve_precision, write_text_atomic
from ..engine.runlog import Interval, RunLog, truncate_metrics
from ..errors import CheckpointError, RunDirError
from .encoders import require_starting_encoder, starting_weights, state_fingerprint

BEST = "checkpoint-best.pt"
EVAL = "eval.jsonl"
RESUMABLE = ("device", "workers", "save_every_steps", "log_every_steps")
"""The task section's settings a resume may change: they decide where and how fast the same steps are
computed and how often they are saved, not which steps; every other setting defines the run."""

RunConfig = FinetuneRunConfig | SegmentRunConfig


def image_size(args: dict[str, Any]) -> tuple[int, int]:
    """The encoder's input size as ``(height, width)`` from its ``VisionTransformer`` args."""
    return tuple(args["img_size"]) if isinstance(args["img_size"], list) else (args["img_size"],) * 2


@dataclass
class Splits:
    """What a run learns from (a subset of the training split) and selects on (a validation split carved
    from it). The test split is opened only by :func:`final_test`."""

    train: DataLoader
    val: DataLoader | None
    sampler: EpochSampler
    num_images: int
    num_val: int
    num_classes: int
    img_size: tuple[int, int]
    stats: tuple[tuple[float, ...], tuple[float, ...]]  # the training split's mean and std, for every split
    data: dict[str, str]  # what the run learns from and is scored on, by name (:func:`data_identity`)


def data_identity(*, train: Any, test: Any, subset: torch.Tensor, val: torch.Tensor) -> dict[str, str]:
    """The data a run's results depend on, as a resume compares it: both splits' content (their
    ``fingerprint()``) and which images of the train split it learns from and validates on."""

    def indices(idx: torch.Tensor) -> str:
        return hashlib.sha1(idx.to(torch.int64).numpy().tobytes()).hexdigest()[:16]

    return {
        "train split": f"{len(train)} images, {train.fingerprint()[:16]}",
        "test split": f"{len(test)} images, {test.fingerprint()[:16]}",
        "training images": f"{len(subset)} of the train split, {indices(subset)}",
        "validation images": f"{len(val)} of the train split, {indices(val)}",
    }


class SupervisedTask(ABC):
    """What differs between the supervised runs: the config section, the checkpoint kind, the selection
    metric and the validation scores recorded, and the hooks below."""

    name: str  # "finetune" | "segment": the run config's section, the run log's and the messages' name
    kind: str  # the checkpoints' kind
    metric: str  # the validation score that selects the best weights (saved as ``best_val_<metric>``)
    recorded: tuple[str, ...]  # validation scores in eval.jsonl (as ``val_<name>``)
    plotted: tuple[str, ...]  # ... and in TensorBoard

    @abstractmethod
    def prepare(
        self,
        section: Any,
        args: dict[str, Any],
        weights: dict[str, torch.Tensor],
        source: str,
        device: torch.device,
    ) -> tuple[Splits, nn.Module, torch.optim.Optimizer]:
        """Open the splits, build the model (on ``device``) and its optimizer."""

    @abstractmethod
    def base_lr(self, section: Any) -> float:
        """The peak of the warmup + cosine schedule."""

    @abstractmethod
    def header_notes(self, section: Any) -> tuple[str, str]:
        """The run's own settings in the opening line: after the source, and before the precision."""

    @abstractmethod
    def train_step(
        self, state: SupervisedState, batch: Any, lr: float, device: torch.device, out: Path
    ) -> tuple[float, float]:
        """One optimizer step on a training batch: ``-> (loss, grad norm)``."""

    @abstractmethod
    def score(
        self, state: SupervisedState, model: nn.Module, loader: DataLoader, device: torch.device
    ) -> dict[str, Any]:
        """``model``'s scores over ``loader`` (eval mode, restored afterwards), keyed by score name."""

    @abstractmethod
    def test_loader(self, state: SupervisedState, splits: Splits) -> DataLoader:
        """The test split, opened only now, with the evaluation transform and the training split's stats."""

    @abstractmethod
    def result(
        self, state: SupervisedState, splits: Splits, scores: dict[str, Any], test: DataLoader
    ) -> dict[str, Any]:
        """The fields of ``result.json`` from the test scores."""

    def model_args(self, state: SupervisedState) -> dict[str, Any]:
        """The ``model_args`` a checkpoint stores."""
        return state.args


@dataclass
class SupervisedState:
    """Everything a checkpoint saves and a resumed run restores."""

    task: SupervisedTask
    model: nn.Module
    optimizer: torch.optim.Optimizer
    cfg: RunConfig
    args: dict[str, Any]
    num_classes: int
    precision: str
    step: int = 0
    best: float = -1.0  # the best validation value of ``task.metric``
    identity: dict[str, dict[str, Any]] = field(default_factory=dict)  # :func:`run_identity`

    @property
    def section(self) -> Any:
        """The run config's section of this task (``cfg.finetune`` or ``cfg.segment``)."""
        return getattr(self.cfg, self.task.name)

    @property
    def best_key(self) -> str:
        return f"best_val_{self.task.metric}"

    def save(self, path: Path) -> None:
        save_atomic(
            {
                "kind": self.task.kind,
                "model": self.model.state_dict(),
                "model_args": self.task.model_args(self),
                "num_classes": self.num_classes,
                "config": self.cfg.to_dict(),
                "optimizer": self.optimizer.state_dict(),
                "step": self.step,
                self.best_key: self.best,
                "identity": self.identity,
            },
            path,
        )

    def restore(self, ckpt: dict[str, Any], path: Path) -> None:
        """Continue from ``ckpt`` (read from ``path``); weights or an optimizer state that do not fit the
        model built are a :class:`CheckpointError` (its first mismatch), not torch's list of every tensor."""
        try:
            self.model.load_state_dict(ckpt["model"])
            self.optimizer.load_state_dict(ckpt["optimizer"])
        except (RuntimeError, ValueError, KeyError) as err:
            lines = [line.strip() for line in str(err).splitlines() if line.strip()] or [type(err).__name__]
            detail = lines[1] if len(lines) > 1 else lines[0]
            more = f", and {len(lines) - 2} more" if len(lines) > 2 else ""
            raise CheckpointError(
                f"--resume: {path} does not fit the model this run builds ({detail}{more}); it holds another "
                "model: resume with the settings it was trained with, or start afresh in a new --out"
            ) from err
        self.step, self.best = ckpt["step"], ckpt[self.best_key]


def run_settings(config: dict[str, Any], section: str) -> dict[str, Any]:
    """A run config's settings as ``{"section.field": value}``, less the ``section``'s :data:`RESUMABLE`."""
    resumable = {f"{section}.{name}" for name in RESUMABLE}
    flat = {f"{name}.{key}": value for name, values in config.items() for key, value in values.items()}
    return {key: value for key, value in flat.items() if key not in resumable}


def run_identity(
    task: SupervisedTask, cfg: RunConfig, weights: dict[str, torch.Tensor], splits: Splits
) -> dict[str, dict[str, Any]]:
    """What a resume must find unchanged: ``settings`` (:func:`run_settings`, after ``task.prepare`` settled
    them) and ``inputs`` (a hash of the starting weights' content, and :attr:`Splits.data`)."""
    return {
        "settings": run_settings(cfg.to_dict(), task.name),
        "inputs": {"starting weights": state_fingerprint(weights)[:16], **splits.data},
    }


def resume_changes(saved: dict[str, dict[str, Any]], now: dict[str, dict[str, Any]]) -> list[str]:
    """``"name: old in the run, now new"`` for every setting (shown as Python values) and input that
    differs. A name only one side has (a field a newer semaim added) is not compared."""
    changes = []
    weights = "starting weights"  # the same weights found at another path (a moved run folder) are no change
    moved = saved.get("inputs", {}).get(weights, "") == now["inputs"].get(weights)
    for kind, show in (("settings", repr), ("inputs", str)):
        old, new = saved.get(kind, {}), now[kind]
        changes += [
            f"{name}: {show(old[name])} in the run, now {show(new[name])}"
            for name in old
            if name in new and old[name] != new[name] and not (moved and name == "encoder.checkpoint")
        ]
    return changes


def check_resume(
    ckpt: dict[str, Any], identity: dict[str, dict[str, Any]], *, task: SupervisedTask, out: Path
) -> None:
    """Refuse to resume the run in ``out`` as another one: a :class:`RunDirError` naming every change. A
    checkpoint written before runs recorded their identity is compared by its settings alone."""
    saved = ckpt.get("identity") or {"settings": run_settings(ckpt["config"], task.name)}
    changes = resume_changes(saved, identity)
    if changes:
        allowed = ", ".join(f"{task.name}.{name}" for name in RESUMABLE)
        raise RunDirError(
            f"--resume: {out} holds a run that these settings, starting weights or data would not "
            "continue:\n  " + "\n  ".join(changes) + "\nResume it as it was (without --config, --resume "
            f"reads the run's own config.yaml; only {allowed} may change), or start afresh with --force into "
            "a new --out."
        )


def build(
    task: SupervisedTask, cfg: RunConfig, device: torch.device, resume_from: Path | None
) -> tuple[SupervisedState, Splits, str]:
    """The run's state, splits and source description, all checked before the run folder is written; with
    ``resume_from`` (a run folder), its last checkpoint restored, refused when it is of another run."""
    section = getattr(cfg, task.name)
    weights, args, source = starting_weights(cfg.encoder)
    ckpt = load_checkpoint(resume_from / LAST, task.kind) if resume_from else None
    splits, model, optimizer = task.prepare(section, args, weights, source, device)
    precision = resolve_precision(section.precision, device)
    state = SupervisedState(task, model, optimizer, cfg, args, splits.num_classes, precision)
    state.identity = run_identity(task, cfg, weights, splits)
    if ckpt is not None:
        check_resume(ckpt, state.identity, task=task, out=resume_from)
        state.restore(ckpt, resume_from / LAST)
    return state, splits, source


def run(
    task: SupervisedTask,
    cfg: RunConfig,
    out_dir: str | Path,
    resume: bool = False,
    force: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Train ``cfg.encoder`` on ``task`` in the run folder ``out_dir``, validating as configured, and score
    the test split once at the end. Returns ``result.json``'s fields, the steps run and the wall time."""
    require_starting_encoder(cfg.encoder, task.name)
    cfg.validate()
    section = getattr(cfg, task.name)
    device = resolve_device(section.device)
    with RunFolder(Path(out_dir), resume, force) as folder:
        state, splits, source = build(task, cfg, device, folder.path if resume else None)
        folder.start(cfg.to_dict(), inputs=[cfg.encoder.checkpoint])
        if resume:  # a kill after a validation and before the next checkpoint-last.pt left its line
            truncate_metrics(folder.path / EVAL, state.step)
        total = splits.sampler.steps_per_epoch * section.epochs
        print(header(state, splits, source, device), file=sys.stderr)  # before the progress starts
        log = RunLog(folder.path, task.name, total=total, step=state.step, resume=resume, progress=progress)
        start = time.perf_counter()
        try:
            train(state, splits, out=folder.path, log=log, device=device)
        finally:
            log.close()
        return {
            **final_test(state, splits, folder.path, device),
            "steps": state.step,
            "wall_s": time.perf_counter() - start,
        }


def header(state: SupervisedState, splits: Splits, source: str, device: torch.device) -> str:
    """The run's opening line: what it trains, on how much, for how long."""
    section, (lead, tail) = state.section, state.task.header_notes(state.section)
    return (
        f"semaim {state.task.name}: {source}, {lead}{splits.num_images} training images ({splits.num_val} held "
        f"out for validation), {splits.num_classes} classes, {splits.sampler.steps_per_epoch} steps/epoch × "
        f"{section.epochs} epochs, batch {section.batch_size}, lr {state.task.base_lr(section):.3g}, "
        f"{tail}{state.precision} on {device}"
    )


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Every group at ``lr`` times its ``lr_scale`` (layer-wise lr decay)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group["lr_scale"]


def optimizer_step(
    state: SupervisedState, loss: torch.Tensor, params: Any, clip_grad: float | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Backward ``loss`` and step, the gradients of ``params`` clipped to ``clip_grad`` (``None``: only
    measured): ``-> (loss, grad norm)`` as device tensors, read by :func:`train` once per logged step."""
    state.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(params, clip_grad or math.inf)
    state.optimizer.step()
    state.step += 1
    return loss.detach().float(), grad_norm


def train(state: SupervisedState, splits: Splits, *, out: Path, log: RunLog, device: torch.device) -> None:
    """Epochs from ``state.step`` on: validate and save after each, ``checkpoint-last.pt`` as configured."""
    section = state.section
    steps_per_epoch = splits.sampler.steps_per_epoch
    total, warmup = steps_per_epoch * section.epochs, round(section.warmup_epochs * steps_per_epoch)
    base_lr = state.task.base_lr(section)
    state.model.train()
    interval = Interval(device)
    while state.step < total:
        epoch, in_epoch = divmod(state.step, steps_per_epoch)
        splits.sampler.set_epoch(epoch, in_epoch)
        for batch in splits.train:
            lr = lr_at(state.step, total, warmup, base_lr, section.min_lr)
            interval.add(*state.task.train_step(state, batch, lr, device, out))
            end = state.step % steps_per_epoch == 0
            save = not end and state.step % section.save_every_steps == 0
            if end or save or state.step % section.log_every_steps == 0:  # read the device, then save
                log_steps(state, interval, log, out=out, epoch=epoch, lr=lr)
            if end:
                end_of_epoch(state, splits, out, log, device, epoch)
            elif save:
                state.save(out / LAST)


def log_steps(
    state: SupervisedState, interval: Interval, log: RunLog, *, out: Path, epoch: int, lr: float
) -> None:
    """Read the steps since the last read (stopping on a non-finite loss before anything is saved) and log them."""
    section = state.section
    loss, grad_norm = interval.read()
    check_finite(loss, state.step, out / LAST, first=state.step - interval.steps + 1)
    images_per_s = section.batch_size * interval.steps / (time.perf_counter() - interval.start)
    record = {"step": state.step, "epoch": epoch, "loss": loss, "lr": lr, "grad_norm": grad_norm}
    record |= {"images_per_s": images_per_s, "time": time.time()}
    description = f"epoch {epoch + 1}/{section.epochs}"
    log.log(record, description, steps=interval.steps, loss=f"{loss:.4f}", lr=f"{lr:.2e}")
    interval.reset()


def end_of_epoch(
    state: SupervisedState, splits: Splits, out: Path, log: RunLog, device: torch.device, epoch: int
) -> None:
    """Validate every ``eval_every`` epochs and after the last (a new best of the selection metric saved as
    ``checkpoint-best.pt``, then the scores appended to ``eval.jsonl``), then save ``checkpoint-last.pt``.

    The line comes after the best checkpoint, so a kill never leaves a line whose checkpoint is missing; a
    kill before ``checkpoint-last.pt`` leaves a line that the resume drops and writes again."""
    task, section = state.task, state.section
    due = (epoch + 1) % section.eval_every == 0 or epoch + 1 == section.epochs
    if splits.val is not None and due:
        scores = task.score(state, state.model, splits.val, device)
        if scores[task.metric] > state.best:
            state.best = scores[task.metric]
            state.save(out / BEST)
        append_record(
            out / EVAL,
            {
                "step": state.step,
                "epoch": epoch + 1,
                **{f"val_{name}": scores[name] for name in task.recorded},
            },
        )
        for name in task.plotted:
            log.scalar(f"val_{name}", scores[name], state.step)
    state.save(out / LAST)


def best_val(state: SupervisedState, splits: Splits) -> float:
    """The best validation value of the selection metric (NaN when nothing was held out)."""
    return state.best if splits.val is not None else float("nan")


def final_test(state: SupervisedState, splits: Splits, out: Path, device: torch.device) -> dict[str, Any]:
    """Score the test split once, with the last weights or the best-validation ones; write ``result.json``."""
    model = state.model
    if state.section.select == "best":
        model = copy.deepcopy(state.model)
        model.load_state_dict(load_checkpoint(out / BEST, state.task.kind)["model"])
    test = state.task.test_loader(state, splits)
    result = state.task.result(state, splits, state.task.score(state, model, test, device), test)
    write_text_atomic(out / "result.json", json.dumps(result, indent=2) + "\n")
    return result
