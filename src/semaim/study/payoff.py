"""Does pretraining with semaim pay off? Fine-tuning (the paper's metric) from a semaim encoder against
the same ViT trained from scratch, at several label budgets, with raw-pixel floors.

For every seed, ``orders`` pretrainings of the ``preset`` ViT (semantic and raster by default); then, for
every label budget (K labelled images per class; 0 = all) and seed: fine-tuning from scratch (the
initialisation pretraining starts from) and from each pretrained encoder, with one recipe for all, and
the raw-pixel k-NN@20 and linear-probe floors on exactly the same labelled images. Every choice is made on
the validation split fine-tuning carves from the training split; each run scores the test split once.
Every finished run is a line of ``results.jsonl``; a rerun skips them and resumes a cut run.

The same plan runs the order study (:mod:`semaim.study.orders`): more pretrained encoders (every order and
the plan's named :class:`Variant` pretrainings), each also scored frozen (``frozen``) and by segmentation
(``segment``). The encoders of ``every_budget`` are fine-tuned at every label budget and run first, seed
by seed; then the other orders, then the variants, at the first label budget.
"""

from __future__ import annotations

import json
import re
import statistics
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import yaml

from ..config import (
    SEGMENT_MODES,
    EncoderConfig,
    FeaturesConfig,
    FinetuneRunConfig,
    LinprobeRunConfig,
    PretrainConfig,
    Sections,
    SegmentRunConfig,
    parse_assignment,
    require,
    require_choice,
)
from ..data import open_dataset
from ..engine.pretrain import pretrain
from ..engine.run import LAST, resolve_precision, write_text_atomic
from ..engine.runlog import read_records
from ..evaluate.encoders import choose_encoder, split_features
from ..evaluate.finetune import finetune
from ..evaluate.knn import knn_accuracy
from ..evaluate.linear import train_linear_probe
from ..evaluate.segmentation.segment import segment
from ..model.orders import ORDERS
from ..presets import load_preset
from .runner import StudyRunner
from .stats import cell, how_it_was_run, mean_std, paired, seeds_counted, write_markdown

PLACEHOLDER = re.compile(r"\{(pretrained:[\w.-]+|half_depth|decoder_depth)\}")
"""What a variant's assignment may name: ``{pretrained:NAME}`` (encoder ``NAME``'s checkpoint for the same seed,
pretrained just before the variant), ``{half_depth}`` (half the encoder's depth, at least 1) and
``{decoder_depth}`` (the plan's decoder depth, before the variant's own assignments)."""


@dataclass(frozen=True)
class Variant:
    """A named pretraining beside the registry's orders, written ``"NAME: ORDER [ASSIGNMENT ...]"`` in the
    plan's ``variants``: ``ORDER`` with ``--set`` assignments on top of the plan's pretraining."""

    name: str
    order: str
    assignments: tuple[str, ...] = ()

    @classmethod
    def parse(cls, text: str, field_name: str = "study.variants") -> Variant:
        name, colon, rest = text.partition(":")
        words = rest.split()
        ok = bool(colon and name.strip() and words and words[0] in ORDERS)
        require(ok, field_name, f"'NAME: ORDER [ASSIGNMENT ...]' with ORDER one of {tuple(ORDERS)}", text)
        for assignment in words[1:]:
            parse_assignment(PLACEHOLDER.sub("0", assignment))  # a bad key or value fails here, by name
        return cls(name.strip(), words[0], tuple(words[1:]))

    @property
    def source(self) -> str | None:
        """The encoder whose checkpoint this variant reads (``{pretrained:NAME}``), pretrained first."""
        keys = [key for a in self.assignments for key in PLACEHOLDER.findall(a)]
        return next((k[len("pretrained:") :] for k in keys if k.startswith("pretrained:")), None)


@dataclass
class PayoffPlan:
    """Everything the runs of one payoff study share (the ``study`` section of its ``config.yaml``)."""

    data: str = "fashion-mnist"
    preset: str = "cpu-tiny"  # the pretraining preset (and the scratch ViT's shape)
    pretrain: tuple[str, ...] = ()  # --set overrides of the pretraining config, e.g. "train.epochs=2"
    orders: tuple[str, ...] = ("semantic", "raster")
    labels_per_class: tuple[int, ...] = (60, 600, 0)  # label budgets; 0 = every training label
    seeds: tuple[int, ...] = (0, 1, 2)
    recipe: str = "cpu"  # the fine-tuning recipe, the same for scratch and pretrained
    finetune: tuple[str, ...] = ()  # --set overrides of the fine-tuning recipe
    epochs: tuple[
        int, ...
    ] = ()  # fine-tuning epochs per label budget (as labels_per_class; warmup scaled alike)
    val_size: int = 5000
    workers: int = 1
    # Curve (b), quality against pretraining compute: the first seed's pretraining with `curve_order`
    # keeps its checkpoints at `curve_steps`; each (with the initialisation and the last) is scored.
    curve_order: str = "semantic"
    curve_steps: tuple[int, ...] = (117, 468)  # a quarter and one epoch of cpu-tiny; (): no curve
    curve_labels: int = 60  # the label budget of the curve's fine-tuning
    # The order study (semaim study orders): more encoders, more metrics.
    every_budget: tuple[
        str, ...
    ] = ()  # encoders fine-tuned at every label budget (others: the first); (): all
    frozen: bool = False  # k-NN@20 and linear probe of every encoder (and of the initialisation)
    segment: tuple[
        str, ...
    ] = ()  # segmentation of every encoder: "finetune" and/or "linear" (data with masks)
    segment_recipe: str = "cpu"
    segment_set: tuple[str, ...] = ()  # --set overrides of the segmentation recipe
    # Every pretraining, fine-tuning and segmentation run of the study (frozen features: fp32 always). `auto`
    # is settled when the study starts (settle_precision) and recorded, so all its runs compute alike.
    precision: str = "auto"
    # Named pretrainings beside the registry's orders, "NAME: ORDER [ASSIGNMENT ...]" (Variant): an encoder of
    # `orders` by its NAME, or another variant's order source ({pretrained:NAME}).
    variants: tuple[str, ...] = ()

    def variant(self, name: str) -> Variant | None:
        """The named variant ``name``, or ``None`` for an order of the registry."""
        return next((v for v in map(Variant.parse, self.variants) if v.name == name), None)

    def validate(self, prefix: str = "study.") -> PayoffPlan:
        named = [Variant.parse(text, f"{prefix}variants") for text in self.variants]
        names = [v.name for v in named]
        require(len(set(names)) == len(names), f"{prefix}variants", "distinct names", names)
        for variant in named:
            ok = variant.source is None or variant.source in (*ORDERS, *names)
            require(ok, f"{prefix}variants", "{pretrained:NAME} naming an order or a variant", variant.source)
        for order in self.orders:
            require_choice(order, f"{prefix}orders", (*ORDERS, *names))
        for encoder in self.every_budget:
            require_choice(encoder, f"{prefix}every_budget", ("scratch", *self.orders))
        ok = (
            not self.every_budget
            or "scratch" in self.every_budget
            and (not self.curve_steps or self.curve_order in self.every_budget)
        )
        require(
            ok,
            f"{prefix}every_budget",
            "empty, or with 'scratch' (every gain is over it) and curve_order",
            list(self.every_budget),
        )
        for mode in self.segment:
            require_choice(mode, f"{prefix}segment", SEGMENT_MODES)
        ok = not self.segment or self.data != "fashion-mnist"
        require(
            ok,
            f"{prefix}segment",
            "empty for fashion-mnist (no masks; cluttered-fashion-mnist has them)",
            list(self.segment),
        )
        require_choice(self.precision, f"{prefix}precision", ("auto", "fp32", "bf16"))
        require(len(self.seeds) > 0, f"{prefix}seeds", "at least one seed", list(self.seeds))
        ok = all(k >= 0 for k in self.labels_per_class) and self.labels_per_class
        require(
            bool(ok), f"{prefix}labels_per_class", "ints >= 0 (0: every label)", list(self.labels_per_class)
        )
        ok = not self.epochs or (len(self.epochs) == len(self.labels_per_class) and min(self.epochs) >= 1)
        require(ok, f"{prefix}epochs", "one positive int per label budget (or empty)", list(self.epochs))
        ok = not self.curve_steps or self.curve_order in self.orders
        require(
            ok, f"{prefix}curve_order", f"one of the study's orders {list(self.orders)}", self.curve_order
        )
        ok = not self.curve_steps or self.curve_labels in self.labels_per_class
        require(
            ok,
            f"{prefix}curve_labels",
            f"one of the label budgets {list(self.labels_per_class)}",
            self.curve_labels,
        )
        require(self.curve_labels >= 0, f"{prefix}curve_labels", "an int >= 0", self.curve_labels)
        for order in dict.fromkeys((*self.orders, *names)):  # every pretraining the plan may run
            pretrain_config(self, order, self.seeds[0], Path("study"))
        finetune_config(self, EncoderConfig(random=True), 0, self.seeds[0])
        if self.segment:
            segment_config(self, EncoderConfig(random=True), self.segment[0], self.seeds[0])
        return self


@dataclass
class PayoffConfig(Sections):
    """``semaim study payoff``: the plan, stored as the study folder's ``config.yaml``."""

    study: PayoffPlan = field(default_factory=PayoffPlan)


def payoff_plan(data: str, quick: bool = False, seeds: int | None = None) -> PayoffPlan:
    """The plan for ``data``: 64 px / patch 8 on the cluttered canvas; ``quick``: a tiny smoke test."""
    plan = PayoffPlan(data=data, pretrain=("train.epochs=2",))  # about 30 minutes on 2 CPU cores
    if data.startswith("cluttered"):
        plan = replace(plan, pretrain=(*plan.pretrain, "model.img_size=64", "model.patch_size=8"))
    if quick:
        tiny = (
            "model.embed_dim=32",
            "model.depth=2",
            "model.num_heads=2",
            "model.decoder_depth=2",
            "data.limit=512",
            "train.batch_size=64",
        )
        plan = replace(
            plan,
            pretrain=plan.pretrain + tiny,
            labels_per_class=(4, 0),
            seeds=(0, 1),
            val_size=100,
            finetune=("batch_size=32", "limit=400", "budget_steps=0"),
            epochs=(3, 1),
            workers=0,
            curve_steps=(4,),
            curve_labels=4,
            segment_set=(
                "limit=40",
                "val_size=10",
                "epochs=1",
                "batch_size=8",
                "pyramid_dim=8",
                "head_dim=8",
            ),
        )
    return replace(plan, seeds=tuple(range(seeds))) if seeds is not None else plan


def pretrain_config(plan: PayoffPlan, order: str, seed: int, folder: Path | None = None) -> PretrainConfig:
    """The pretraining of ``order`` (an order or a named variant) for ``seed``; ``folder``: the study's."""
    cfg = load_preset(plan.preset)
    for assignment in plan.pretrain:
        cfg.set(*parse_assignment(assignment))
    cfg.set("train.precision", plan.precision)
    cfg.set("data.data", plan.data)
    cfg.set("data.workers", plan.workers)
    variant = plan.variant(order)
    cfg.set("model.order", variant.order if variant else order)
    cfg.set("train.seed", seed)
    values = {"half_depth": str(max(1, cfg.model.depth // 2)), "decoder_depth": str(cfg.model.decoder_depth)}

    def fill(match: re.Match) -> str:
        key = match.group(1)
        if key.startswith("pretrained:"):
            return str(pretrain_folder(folder or Path("study"), key[len("pretrained:") :], seed) / LAST)
        return values[key]

    for assignment in variant.assignments if variant else ():
        cfg.set(*parse_assignment(PLACEHOLDER.sub(fill, assignment)))
    if (order, seed) == (plan.curve_order, plan.seeds[0]):  # curve (b)'s run
        cfg.set("train.keep_steps", plan.curve_steps)
    return cfg.validate()


def recipe_config(recipe: str, kind: type, encoder: EncoderConfig, overrides: tuple[str, ...]) -> Any:
    """A run config from a recipe preset, for ``encoder``, with the plan's ``--set`` overrides."""
    cfg = load_preset(recipe, kind)
    cfg.encoder = encoder
    for assignment in overrides:
        cfg.set(*parse_assignment(assignment))
    return cfg


def segment_config(plan: PayoffPlan, encoder: EncoderConfig, mode: str, seed: int) -> SegmentRunConfig:
    cfg = recipe_config(plan.segment_recipe, SegmentRunConfig, encoder, plan.segment_set)
    sg = cfg.segment
    sg.data, sg.mode, sg.seed, sg.workers, sg.precision = plan.data, mode, seed, plan.workers, plan.precision
    return cfg.validate()


def finetune_config(plan: PayoffPlan, encoder: EncoderConfig, labels: int, seed: int) -> FinetuneRunConfig:
    cfg = recipe_config(plan.recipe, FinetuneRunConfig, encoder, plan.finetune)
    ft = cfg.finetune
    ft.data, ft.seed, ft.val_size, ft.workers = plan.data, seed, plan.val_size, plan.workers
    ft.precision = plan.precision
    ft.labels_per_class = labels or None
    if plan.epochs and labels in plan.labels_per_class:  # the same schedule, shrunk or stretched
        epochs = plan.epochs[plan.labels_per_class.index(labels)]
        ft.warmup_epochs, ft.epochs = ft.warmup_epochs * epochs / ft.epochs, epochs
    return cfg.validate()


# --------------------------------------------------------------------------- runs
def pretrain_folder(folder: Path, order: str, seed: int) -> Path:
    return folder / "runs" / f"pretrain-{order}-seed{seed}"


def pretrain_run(plan: PayoffPlan, order: str, seed: int, folder: Path, progress: bool) -> dict[str, Any]:
    """One pretraining (resumed when it was cut; read when it is done): its summary."""
    out = pretrain_folder(folder, order, seed)
    if pretrained(out):
        summary = json.loads((out / "result.json").read_text())
        return {"steps": summary["steps"], "final_loss": summary["final_loss"]}
    resume = (out / LAST).is_file()
    summary = pretrain(
        pretrain_config(plan, order, seed, folder), out, resume=resume, force=not resume, progress=progress
    )
    return {"steps": summary["steps"], "final_loss": summary["final_loss"]}


def pretrained(out: Path) -> bool:
    """Whether ``out`` holds a finished pretraining (its checkpoint and ``result.json``, written last)."""
    return (out / LAST).is_file() and (out / "result.json").is_file()


def finetune_run(
    plan: PayoffPlan, encoder: EncoderConfig, labels: int, seed: int, out: Path, progress: bool
) -> dict[str, Any]:
    """One fine-tuning run (resumed when it was cut; read when it is done): its test and validation scores."""
    if (out / "result.json").is_file():
        result = json.loads((out / "result.json").read_text())
        return {k: result[k] for k in ("test_top1", "test_top5", "best_val_top1", "train_images")}
    resume = (out / LAST).is_file()
    result = finetune(
        finetune_config(plan, encoder, labels, seed), out, resume=resume, force=not resume, progress=progress
    )
    return {k: result[k] for k in ("test_top1", "test_top5", "best_val_top1", "train_images")}


def segment_run(
    plan: PayoffPlan, encoder: EncoderConfig, mode: str, seed: int, out: Path, progress: bool
) -> dict[str, Any]:
    """One segmentation run (resumed when it was cut): test mIoU / pixel accuracy, best validation mIoU."""
    resume, cfg = (out / LAST).is_file(), segment_config(plan, encoder, mode, seed)
    result = segment(cfg, out, resume=resume, force=not resume, progress=progress)
    return {
        **{k: result[k] for k in ("test_miou", "test_pixel_acc", "best_val_miou", "train_images")},
        "lr": cfg.segment.run_lr,
        "run": str(out),
    }  # the dense report's figure reads its checkpoint


def labelled_features(plan: PayoffPlan, labels: int, seed: int) -> FeaturesConfig:
    """Frozen features that learn from exactly the images the fine-tuning at ``labels`` trains on."""
    ft = finetune_config(plan, EncoderConfig(random=True), labels, seed).finetune  # its labelled images
    return FeaturesConfig(
        data=plan.data,
        workers=plan.workers,
        labels_per_class=ft.labels_per_class,
        val_size=ft.val_size,
        split_seed=ft.split_seed,
        subset_seed=ft.seed,
        limit=ft.limit,
    )


def pixel_floors(plan: PayoffPlan, labels: int, seed: int, folder: Path, progress: bool) -> dict[str, Any]:
    """Raw-pixel k-NN@20 and linear probe, learning from exactly the images fine-tuning trains on."""
    encoder = EncoderConfig(pixels=True, preset=shape_preset(plan, folder))
    return frozen_scores(encoder, labelled_features(plan, labels, seed), progress)


def frozen_scores(encoder: EncoderConfig, features: FeaturesConfig, progress: bool) -> dict[str, Any]:
    """k-NN@20 and the ``cpu`` linear probe on frozen features (test split)."""
    train_f, train_y, test_f, test_y = split_features(features, choose_encoder(encoder), progress)
    knn = knn_accuracy(train_f, train_y, test_f, test_y, ks=(20,))["top1"]["20"]
    probe = train_linear_probe(
        train_f, train_y, test_f, test_y, load_preset("cpu", LinprobeRunConfig).probe, progress=False
    )
    return {"knn_top1": knn, "linear_top1": probe["top1"], "train_images": len(train_y)}


def curve_run(plan: PayoffPlan, folder: Path) -> Path:
    return pretrain_folder(folder, plan.curve_order, plan.seeds[0])


def curve_points(plan: PayoffPlan, folder: Path) -> list[tuple[int, EncoderConfig, str]]:
    """``(pretraining step, encoder, fine-tuning folder)`` of curve (b): the initialisation (scratch), every
    kept checkpoint and the last; the first and the last fine-tunings are the main table's own runs."""
    cfg, run, seed = (
        pretrain_config(plan, plan.curve_order, plan.seeds[0]),
        curve_run(plan, folder),
        plan.seeds[0],
    )
    images = len(open_dataset(cfg.data.data, "train", cfg.model.in_chans))
    last = cfg.train.epochs * (min(images, cfg.data.limit or images) // cfg.train.batch_size)
    points = [
        (
            0,
            encoder_source(plan, "scratch", seed, folder),
            f"finetune-scratch-K{plan.curve_labels}-seed{seed}",
        )
    ]
    points += [
        (step, EncoderConfig(checkpoint=str(run / f"checkpoint-step{step}.pt")), f"curve-finetune-step{step}")
        for step in plan.curve_steps
        if step < last
    ]
    return [
        *points,
        (
            last,
            encoder_source(plan, plan.curve_order, seed, folder),
            f"finetune-{plan.curve_order}-K{plan.curve_labels}-seed{seed}",
        ),
    ]


def curve_point(
    plan: PayoffPlan,
    *,
    step: int,
    encoder: EncoderConfig,
    finetuned: str,
    folder: Path,
    progress: bool,
    frozen: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One point of curve (b): pretraining minutes so far, frozen k-NN / linear, fine-tuning at ``curve_labels``.
    ``frozen``: the same encoder's frozen scores when the study has them already."""
    steps = {
        r["step"]: r for r in read_records(curve_run(plan, folder) / "metrics.jsonl")
    }  # a resumed step once
    batch = pretrain_config(plan, plan.curve_order, plan.seeds[0]).train.batch_size
    minutes = sum(batch / r["images_per_s"] for s, r in steps.items() if s <= step) / 60
    features = FeaturesConfig(
        data=plan.data, workers=plan.workers, val_size=plan.val_size
    )  # fine-tuning's 100 %
    frozen = frozen or frozen_scores(encoder, features, progress)
    tuned = finetune_run(
        plan, encoder, plan.curve_labels, plan.seeds[0], folder / "runs" / finetuned, progress
    )
    return {
        "pretrain_minutes": minutes,
        "knn_top1": frozen["knn_top1"],
        "linear_top1": frozen["linear_top1"],
        "test_top1": tuned["test_top1"],
        "best_val_top1": tuned["best_val_top1"],
    }


def read_study(folder: str | Path) -> tuple[PayoffPlan, list[dict[str, Any]]]:
    """The plan (``config.yaml``) and the finished runs' rows (``results.jsonl``) of a study folder."""
    folder = Path(folder)
    plan = PayoffConfig.from_dict(yaml.safe_load((folder / "config.yaml").read_text())).study
    rows = read_records(folder / "results.jsonl") if (folder / "results.jsonl").is_file() else []
    return plan, rows


def settle_precision(plan: PayoffPlan, folder: str | Path) -> PayoffPlan:
    """``precision: auto`` becomes the study folder's recorded precision or, for a new study, what this machine
    computes natively (bf16 on CUDA and on CPUs with AVX512-BF16 / AMX, else fp32), recorded with the plan:
    then every process of the study, on any machine, computes alike. Else a study resumed on another kind of
    machine would compare bf16 runs with fp32 ones, and a redone pretraining could not reproduce its row."""
    if plan.precision != "auto":
        return plan
    saved = Path(folder) / "config.yaml"
    if saved.is_file():  # a study from before `precision` existed records none: it keeps `auto`, as it ran
        recorded = (yaml.safe_load(saved.read_text()) or {}).get("study", {}).get("precision", "auto")
        return replace(plan, precision=recorded)
    device = torch.device(
        "cuda" if torch.cuda.is_available() else "cpu"
    )  # where the runs' device "auto" lands
    return replace(plan, precision=resolve_precision("auto", device))


def run_payoff(
    plan: PayoffPlan,
    folder: str | Path,
    progress: bool = True,
    only_seeds: tuple[int, ...] | None = None,
    deadline: float | None = None,
) -> list[dict[str, Any]]:
    """Seed by seed: the pixel floors per label budget, then encoder by encoder (scratch and each order) its
    pretraining, fine-tuning per label budget and the frozen and segmentation scores the plan asks for (:func:
    `run_seed`); the first seed's ``curve_order`` run keeps the checkpoints of curve (b), scored after that
    seed. First the encoders of ``every_budget`` (all seeds), then the other orders, then the named variants,
    at the first label budget. Finished runs are kept in ``results.jsonl``; returns all rows (every process's)."""
    folder = Path(folder)
    plan = settle_precision(plan.validate(), folder)
    runner = StudyRunner(
        folder,
        PayoffConfig(plan).to_dict(),
        KEY,
        only_seeds=only_seeds,
        normalise=lambda saved: PayoffConfig.from_dict(saved).to_dict(),
        deadline=deadline,
        like=("kind", "labels"),
    )
    first = set(plan.every_budget or ("scratch", *plan.orders))
    rest = set(plan.orders) - first
    named = {text.partition(":")[0].strip() for text in plan.variants}
    for phase in (first, rest - named, rest & named):  # then the other orders, then the variants
        for seed in plan.seeds:  # seed by seed: a seed's runs need only its own pretrainings
            encoders = [e for e in ("scratch", *plan.orders) if e in phase]
            budgets = plan.labels_per_class if phase is first else plan.labels_per_class[:1]
            run_seed(
                plan,
                runner,
                folder,
                seed=seed,
                encoders=encoders,
                budgets=budgets,
                floors=phase is first,
                progress=progress,
            )
            if phase is first and seed == plan.seeds[0] and plan.curve_steps:
                run_curve(plan, runner, folder, progress)
    return runner.finish()


def run_seed(
    plan: PayoffPlan,
    runner: StudyRunner,
    folder: Path,
    *,
    seed: int,
    encoders: list[str],
    budgets: tuple[int, ...],
    floors: bool,
    progress: bool,
) -> None:
    """One seed's runs for ``encoders``: the floors (``floors``) per label budget, then encoder by encoder its
    pretraining, its fine-tuning per label budget and the frozen and segmentation scores the plan asks for.
    Encoder by encoder: the processes take the runs in this order, so an encoder's later runs come before
    the next pretraining, and a study cut between two sessions leaves few pretrained checkpoints unused."""
    if floors:
        for labels in budgets:
            runner.run(
                ("floor", "pixels", labels, seed),
                lambda k=labels: pixel_floors(plan, k, seed, folder, progress),
            )
    for encoder in encoders:
        needs = []
        if encoder != "scratch":  # scratch: the initialisation, from model.yaml
            needs = [("pretrain", encoder, -1, seed)]
            variant = plan.variant(encoder)
            source = variant.source if variant else None
            if (
                source
            ):  # just before its reader (a deadline counts them together); the report compares its loss
                runner.run(
                    ("pretrain", source, -1, seed),
                    lambda s=source: pretrain_run(plan, s, seed, folder, progress),
                    kept=lambda s=source: pretrained(pretrain_folder(folder, s, seed)),
                )
            runner.run(
                needs[0],
                lambda o=encoder: pretrain_run(plan, o, seed, folder, progress),
                needs=[("pretrain", source, -1, seed)] if source else [],
                kept=lambda o=encoder: pretrained(pretrain_folder(folder, o, seed)),
            )
        enc = encoder_source(plan, encoder, seed, folder)
        for labels in budgets:
            out = folder / "runs" / f"finetune-{encoder}-K{labels}-seed{seed}"
            runner.run(
                ("finetune", encoder, labels, seed),
                lambda e=enc, k=labels, o=out: finetune_run(plan, e, k, seed, o, progress),
                needs=needs,
            )
        if plan.frozen:
            features = FeaturesConfig(data=plan.data, workers=plan.workers, val_size=plan.val_size)
            runner.run(
                ("frozen", encoder, 0, seed),
                lambda e=enc, f=features: frozen_scores(e, f, progress),
                needs=needs,
            )
        for mode in plan.segment:
            out = folder / "runs" / f"segment-{mode}-{encoder}-seed{seed}"
            runner.run(
                (f"segment-{mode}", encoder, 0, seed),
                lambda e=enc, m=mode, o=out: segment_run(plan, e, m, seed, o, progress),
                needs=needs,
            )


def run_curve(plan: PayoffPlan, runner: StudyRunner, folder: Path, progress: bool) -> None:
    """Curve (b): the kept checkpoints of the first seed's ``curve_order`` pretraining, after the runs it reuses."""
    seed = plan.seeds[0]
    curve = ("pretrain", plan.curve_order, -1, seed)
    reused = [("finetune", e, plan.curve_labels, seed) for e in ("scratch", plan.curve_order)]
    points = curve_points(plan, folder)
    for i, (step, encoder, finetuned) in enumerate(points):
        end = {0: "scratch", len(points) - 1: plan.curve_order}.get(
            i
        )  # the end points' frozen rows, if scored
        frozen = [("frozen", end, 0, seed)] if plan.frozen and end else []
        runner.run(
            ("curve", plan.curve_order, plan.curve_labels, seed, step),
            lambda t=step, e=encoder, f=finetuned, k=frozen: curve_point(
                plan,
                step=t,
                encoder=e,
                finetuned=f,
                folder=folder,
                progress=progress,
                frozen=runner.row(k[0]) if k else None,
            ),
            needs=[curve, *reused, *frozen],
        )


def encoder_source(plan: PayoffPlan, encoder: str, seed: int, folder: Path) -> EncoderConfig:
    """Scratch: the pretraining initialisation of this seed; an order: that seed's pretrained checkpoint."""
    if encoder == "scratch":
        return EncoderConfig(random=True, preset=shape_preset(plan, folder), init_seed=seed)
    return EncoderConfig(checkpoint=str(pretrain_folder(folder, encoder, seed) / LAST))


def shape_preset(plan: PayoffPlan, folder: Path) -> str:
    """The model every encoder of the study shares (input size included), as a preset file in the study
    folder: the scratch encoders (``init_seed`` gives each seed's initialisation) and the pixel floors."""
    path = folder / "runs" / "model.yaml"
    if not path.is_file():
        cfg = pretrain_config(plan, plan.orders[0] if plan.orders else "semantic", plan.seeds[0], folder)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))  # other processes may read it
    return str(path)


KEY = ("kind", "encoder", "labels", "seed", "step")  # what tells the rows of results.jsonl apart


# --------------------------------------------------------------------------- report
def by_seed(rows: list[dict[str, Any]], kind: str, encoder: str, labels: int) -> dict[int, dict[str, Any]]:
    return {r["seed"]: r for r in rows if (r["kind"], r["encoder"], r["labels"]) == (kind, encoder, labels)}


def payoff_encoders(plan: PayoffPlan) -> tuple[str, ...]:
    """The encoders of the payoff report: those fine-tuned at every label budget."""
    return plan.every_budget or ("scratch", *plan.orders)


def label_text(labels: int) -> str:
    return "all labels" if labels == 0 else f"{labels} per class"


def write_payoff_report(
    rows: list[dict[str, Any]],
    plan: PayoffPlan,
    command: str,
    path: str | Path,
    chart: str | Path | None = None,
    study: str = "payoff",
) -> None:
    """Markdown: test top-1 per label budget (mean ± std over seeds), paired differences, floors, settings.
    ``study``: the name of the rows' copy beside the study's main report (``<study>-<data>.jsonl``)."""
    header = (
        "| | "
        + " | ".join(label_text(k) for k in plan.labels_per_class)
        + " |\n|---|"
        + "---|" * len(plan.labels_per_class)
    )

    def line(label: str, kind: str, encoder: str, metric: str, base: str | None = None) -> str:
        cells = []
        for k in plan.labels_per_class:
            mine = by_seed(rows, kind, encoder, k)
            stats = (
                paired(mine, by_seed(rows, "finetune", base, k), [metric])
                if base
                else mean_std({metric: [r[metric] for r in mine.values()]})
            )
            cells.append(cell(stats, metric, signed=base is not None))
        return f"| {label} | " + " | ".join(cells) + " |"

    encoders = payoff_encoders(plan)
    orders = tuple(e for e in encoders if e != "scratch")
    seeds = seeds_counted(rows, plan.seeds, ("finetune",))  # the seeds the ± stands on
    lines = [
        f"# Does pretraining pay off? Fine-tuning on `{plan.data}`",
        "",
        f"Test top-1 (%) after fine-tuning the `{plan.preset}` ViT with recipe `{plan.recipe}` "
        f"({', '.join(plan.finetune) or 'as shipped'}) from scratch (the initialisation pretraining starts "
        f"from) and from semaim encoders pretrained with each order ({', '.join(plan.pretrain) or 'preset as is'}), "
        f"mean ± sample std over {seeds}; every choice on a {plan.val_size}-image validation "
        "split carved from the training split, the test split scored once per run.",
        "",
        header,
        line("raw pixels, k-NN@20 (floor)", "floor", "pixels", "knn_top1"),
        line("raw pixels, linear probe (floor)", "floor", "pixels", "linear_top1"),
        *(line(f"fine-tuned from {e}", "finetune", e, "test_top1") for e in encoders),
        "",
        "Paired differences (points), seed by seed (a seed's runs share the initialisation and the labelled images):",
        "",
        header,
        *(line(f"`{o}` − scratch", "finetune", o, "test_top1", "scratch") for o in orders),
        *(line(f"`{o}` − `{orders[-1]}`", "finetune", o, "test_top1", orders[-1]) for o in orders[:-1]),
        "",
        *curve_lines(rows, plan),
        *how_it_was_run(command, rows, PayoffConfig(plan).to_dict()["study"], study),
    ]
    write_markdown(path, lines, chart, "payoff")


def curve_rows(rows: list[dict[str, Any]], plan: PayoffPlan) -> list[dict[str, Any]]:
    return sorted(
        (r for r in rows if r["kind"] == "curve" and r["encoder"] == plan.curve_order),
        key=lambda r: r["step"],
    )


def curve_lines(rows: list[dict[str, Any]], plan: PayoffPlan) -> list[str]:
    """Curve (b): frozen k-NN / linear (every label) and fine-tuning at ``curve_labels`` per checkpoint."""
    points = curve_rows(rows, plan)
    if not points:
        return []
    labels = label_text(plan.curve_labels)
    lines = [
        f"Quality against pretraining compute: the checkpoints kept along the `{plan.curve_order}` pretraining "
        f"of seed {plan.seeds[0]} above (one schedule, not one run per budget), scored by frozen k-NN@20 "
        f"and linear probe (cls token, every training label but the validation split) and by fine-tuning "
        f"with {labels} (seed {plan.seeds[0]}); minutes are the sum of the pretraining's step times. "
        "Step 0 is the initialisation (scratch).",
        "",
        f"| pretraining step | minutes | k-NN@20 | linear | fine-tuned, {labels}: test | validation (best) |",
        "|---|---|---|---|---|---|",
    ]
    for r in points:
        lines.append(
            f"| {r['step']} | {r['pretrain_minutes']:.1f} | {r['knn_top1']:.2f} | {r['linear_top1']:.2f} "
            f"| {r['test_top1']:.2f} | {r['best_val_top1']:.2f} |"
        )
    floors = by_seed(rows, "floor", "pixels", 0)
    if floors:
        knn = statistics.mean(r["knn_top1"] for r in floors.values())
        linear = statistics.mean(r["linear_top1"] for r in floors.values())
        lines += ["", f"Raw pixels on the same labels: k-NN@20 {knn:.2f}, linear {linear:.2f}."]
    return lines + [""]


def plot_payoff(rows: list[dict[str, Any]], plan: PayoffPlan, path: str | Path, dpi: int = 100) -> None:
    """(a) test top-1 against the label budget, one line per encoder (error bars: std over seeds), floors
    dashed; (b) when the curve has points: quality against pretraining minutes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = curve_rows(rows, plan)
    fig, axes = plt.subplots(
        1, 2 if points else 1, figsize=(11 if points else 5.5, 3.8), constrained_layout=True
    )
    axes = list(axes) if points else [axes]
    plot_labels(axes[0], rows, plan)
    if points:
        plot_curve(axes[1], rows, plan, points)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)


def plot_labels(ax: Any, rows: list[dict[str, Any]], plan: PayoffPlan) -> None:
    ticks = list(range(len(plan.labels_per_class)))
    series = [(f"fine-tuned from {e}", "finetune", e, "test_top1", "-o") for e in payoff_encoders(plan)]
    series += [
        ("pixels k-NN@20", "floor", "pixels", "knn_top1", "--"),
        ("pixels linear", "floor", "pixels", "linear_top1", ":"),
    ]
    for label, kind, encoder, metric, style in series:
        stats = [
            mean_std({metric: [r[metric] for r in by_seed(rows, kind, encoder, k).values()]}).get(metric)
            for k in plan.labels_per_class
        ]
        means = [s[0] if s else float("nan") for s in stats]
        stds = [s[1] if s else 0.0 for s in stats]
        ax.errorbar(ticks, means, yerr=stds, fmt=style, capsize=3, label=label)
    ax.set_xticks(ticks, [label_text(k) for k in plan.labels_per_class])
    ax.set_ylabel("test top-1 (%)")
    ax.set_title(f"(a) {plan.data}: fine-tuning against labels")
    ax.legend(fontsize=7)


def plot_curve(ax: Any, rows: list[dict[str, Any]], plan: PayoffPlan, points: list[dict[str, Any]]) -> None:
    minutes = [r["pretrain_minutes"] for r in points]
    labels = label_text(plan.curve_labels)
    for metric, text, colour in (
        ("knn_top1", "k-NN@20 (all labels)", "C0"),
        ("linear_top1", "linear (all labels)", "C1"),
        ("test_top1", f"fine-tuned, {labels}", "C2"),
    ):
        ax.plot(minutes, [r[metric] for r in points], "-o", color=colour, label=text)
    floors = by_seed(rows, "floor", "pixels", 0)
    for metric, colour in (("knn_top1", "C0"), ("linear_top1", "C1")):
        if floors:
            ax.axhline(statistics.mean(r[metric] for r in floors.values()), ls="--", color=colour, lw=0.8)
    ax.set_xlabel(f"pretraining minutes ({plan.curve_order}; dashed: raw pixels)")
    ax.set_ylabel("test top-1 (%)")
    ax.set_title("(b) quality against pretraining compute")
    ax.legend(fontsize=7)
