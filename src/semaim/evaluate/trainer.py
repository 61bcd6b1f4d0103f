"""The supervised trainer that ``semaim finetune`` and ``semaim segment`` share.

A :class:`SupervisedTask` says what is the task's own (data, model, loss, metric, messages); this module
runs it the same way for both: the run folder (locked, resumable), AdamW steps under warmup + cosine with
per-group lr scales (layer-wise decay), a ``metrics.jsonl`` record per step, ``checkpoint-last.pt``
every ``save_every_steps`` and after every epoch, validation every ``eval_every`` epochs and after the
last (``eval.jsonl``; a new best of the selection metric saved as ``checkpoint-best.pt``), and the test
split scored once, at the end, with the last or the best-validation weights (``select``), into
``result.json``. Evaluation-level because the starting encoder comes from
:func:`~semaim.evaluate.encoders.starting_weights`.
"""

from __future__ import annotations

import copy
import json
import math
import sys
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
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
from ..engine.runlog import RunLog
from .encoders import starting_weights

BEST = "checkpoint-best.pt"

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
            },
            path,
        )

    def restore(self, ckpt: dict[str, Any]) -> None:
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.step, self.best = ckpt["step"], ckpt[self.best_key]


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
    cfg.validate()
    section = getattr(cfg, task.name)
    device = resolve_device(section.device)
    with RunFolder(Path(out_dir), resume, force) as folder:
        weights, args, source = starting_weights(cfg.encoder)
        ckpt = load_checkpoint(folder.path / LAST, task.kind) if resume else None
        splits, model, optimizer = task.prepare(section, args, weights, source, device)
        precision = resolve_precision(section.precision, device)
        state = SupervisedState(task, model, optimizer, cfg, args, splits.num_classes, precision)
        if ckpt is not None:
            state.restore(ckpt)
        folder.start(cfg.to_dict(), inputs=[cfg.encoder.checkpoint])
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
    state: SupervisedState, loss: torch.Tensor, params: Any, clip_grad: float | None, out: Path
) -> tuple[float, float]:
    """Backward ``loss`` (a non-finite one stops the run) and step, the gradients of ``params`` clipped to
    ``clip_grad`` (``None``: only measured): ``-> (loss, grad norm)``."""
    check_finite(loss.item(), state.step, out / LAST)
    state.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(params, clip_grad or math.inf).item()
    state.optimizer.step()
    state.step += 1
    return loss.item(), grad_norm


def train(state: SupervisedState, splits: Splits, *, out: Path, log: RunLog, device: torch.device) -> None:
    """Epochs from ``state.step`` on: validate and save after each, ``checkpoint-last.pt`` as configured."""
    section = state.section
    steps_per_epoch = splits.sampler.steps_per_epoch
    total, warmup = steps_per_epoch * section.epochs, round(section.warmup_epochs * steps_per_epoch)
    base_lr = state.task.base_lr(section)
    state.model.train()
    while state.step < total:
        epoch, in_epoch = divmod(state.step, steps_per_epoch)
        splits.sampler.set_epoch(epoch, in_epoch)
        for batch in splits.train:
            t0, lr = time.perf_counter(), lr_at(state.step, total, warmup, base_lr, section.min_lr)
            loss, grad_norm = state.task.train_step(state, batch, lr, device, out)
            record = {
                "step": state.step,
                "epoch": epoch,
                "loss": loss,
                "lr": lr,
                "grad_norm": grad_norm,
                "images_per_s": section.batch_size / (time.perf_counter() - t0),
                "time": time.time(),
            }
            log.log(record, f"epoch {epoch + 1}/{section.epochs}", loss=f"{loss:.4f}", lr=f"{lr:.2e}")
            if state.step % steps_per_epoch == 0:
                end_of_epoch(state, splits, out, log, device, epoch)
            elif state.step % section.save_every_steps == 0:
                state.save(out / LAST)


def end_of_epoch(
    state: SupervisedState, splits: Splits, out: Path, log: RunLog, device: torch.device, epoch: int
) -> None:
    """Validate every ``eval_every`` epochs and after the last (append to ``eval.jsonl``; a new best of the
    selection metric is saved as ``checkpoint-best.pt``), then save ``checkpoint-last.pt``."""
    task, section = state.task, state.section
    due = (epoch + 1) % section.eval_every == 0 or epoch + 1 == section.epochs
    if splits.val is not None and due:
        scores = task.score(state, state.model, splits.val, device)
        for name in task.plotted:
            log.scalar(f"val_{name}", scores[name], state.step)
        append_record(
            out / "eval.jsonl",
            {
                "step": state.step,
                "epoch": epoch + 1,
                **{f"val_{name}": scores[name] for name in task.recorded},
            },
        )
        if scores[task.metric] > state.best:
            state.best = scores[task.metric]
            state.save(out / BEST)
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
