"""The evaluation commands: ``knn`` and ``linprobe`` on frozen features, ``finetune`` and ``segment`` end to end."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..config import (
    POOLS,
    PROBE_OPTIMIZERS,
    SELECTIONS,
    EncoderConfig,
    FeaturesConfig,
    FinetuneConfig,
    FinetuneRunConfig,
    KnnConfig,
    KnnRunConfig,
    LinprobeRunConfig,
    SegmentConfig,
    SegmentRunConfig,
)
from ..presets import build_config, load_preset, preset_names
from .vocabulary import (
    Deprecated,
    add_config,
    add_data,
    add_hardware,
    add_output_file,
    add_progress,
    add_run_folder,
    add_seed,
    add_set,
    add_training,
    check_output_file,
    flag_values,
    helped,
    run_folder,
    starting_config,
)

ENCODER_FLAGS = {
    "checkpoint": "encoder.checkpoint",
    "random": "encoder.random",
    "pixels": "encoder.pixels",
    "model_config": "encoder.preset",
    "init_seed": "encoder.init_seed",
}
FEATURE_FLAGS = {
    "data": "features.data",
    "pool": "features.pool",
    "extract_batch_size": "features.batch_size",
    "workers": "features.workers",
    "device": "features.device",
    "precision": "features.precision",
    "cache": "features.cache",
    "labels_per_class": "features.labels_per_class",
    "label_fraction": "features.label_fraction",
}
KNN_FLAGS = {**ENCODER_FLAGS, **FEATURE_FLAGS, "seed": "features.subset_seed", "ks": "knn.ks"}
KNN_FLAGS |= {"temperature": "knn.temperature"}
LINPROBE_FLAGS = {**ENCODER_FLAGS, **FEATURE_FLAGS, "seed": ("probe.seed", "features.subset_seed")}
LINPROBE_FLAGS |= {f: f"probe.{f}" for f in ("epochs", "batch_size", "blr", "weight_decay", "warmup_epochs")}
LINPROBE_FLAGS |= {"optimizer": "probe.optimizer"}
TRAINED = ("epochs", "batch_size", "lr", "blr", "weight_decay", "warmup_epochs", "seed")
TRAINED += ("data", "limit", "val_size", "select", "device", "precision", "workers")
"""The flags a finetune or segment run maps onto the same-named field of its task section."""
FINETUNE_FLAGS = {k: v for k, v in ENCODER_FLAGS.items() if k != "pixels"}
FINETUNE_FLAGS |= {f: f"finetune.{f}" for f in TRAINED if f != "lr"}
FINETUNE_FLAGS |= {f: f"finetune.{f}" for f in ("labels_per_class", "label_fraction", "pool")}
SEGMENT_FLAGS = {k: v for k, v in ENCODER_FLAGS.items() if k != "pixels"}
SEGMENT_FLAGS |= {f: f"segment.{f}" for f in TRAINED if f != "blr"}
SEGMENT_FLAGS |= {f: f"segment.{f}" for f in ("mode", "num_classes")}


def add_encoder_source(g: argparse._ActionsContainer, checkpoint_help: str, pixels: bool) -> None:
    """Which encoder: a checkpoint, the pretraining initialisation (``--random``) or raw pixels."""
    e = EncoderConfig()
    one = g.add_mutually_exclusive_group(required=pixels)
    one.add_argument("--checkpoint", help=checkpoint_help)
    one.add_argument(
        "--random",
        action="store_const",
        const=True,
        help="floor: the encoder as pretraining initialises it (--model-config, --init-seed)",
    )
    if pixels:
        one.add_argument(
            "--pixels", action="store_const", const=True, help="floor: raw pixels, flattened and normalised"
        )
    g.add_argument("--model-config", help=helped("--model-config", default=e.preset))
    g.add_argument("--preset", dest="model_config", action=Deprecated, instead="--model-config")
    g.add_argument("--init-seed", type=int, help=helped("--init-seed", default=e.init_seed))


def add_features(p: argparse.ArgumentParser, old_batch_size: bool) -> None:
    """The frozen features ``knn`` and ``linprobe`` read, and where the result goes."""
    f = FeaturesConfig()
    g = p.add_argument_group("features")
    add_data(g, "with train/ and val/ sub-folders for a folder", f.data)
    g.add_argument("--pool", choices=POOLS, help=f"cls token or mean of patch tokens [default: {f.pool}]")
    g.add_argument(
        "--extract-batch-size", type=int, help=helped("--extract-batch-size", default=f.batch_size)
    )
    if old_batch_size:
        g.add_argument(
            "--batch-size",
            dest="extract_batch_size",
            type=int,
            action=Deprecated,
            instead="--extract-batch-size",
        )
    add_hardware(g, f, precisions=("auto", "fp32", "bf16"))
    g.add_argument("--cache", help="folder to cache extracted features in")
    g.add_argument(
        "--labels-per-class",
        type=int,
        help="learn from K labelled images per class: the subset `finetune --labels-per-class K --seed S` "
        "trains on, with the same --seed",
    )
    g.add_argument("--label-fraction", type=float, help="... or from this fraction of every class")
    g = p.add_argument_group("output")
    add_output_file(g, "a JSON file of the scores")
    add_progress(g)


def add_parsers(sub: argparse._SubParsersAction) -> None:
    add_knn_parser(sub)
    add_linprobe_parser(sub)
    add_finetune_parser(sub)
    add_segment_parser(sub)


def add_knn_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("knn", help="weighted k-NN accuracy of frozen features")
    k = KnnConfig()
    g = p.add_argument_group("encoder (one of --checkpoint, --random, --pixels)")
    add_encoder_source(g, "pretraining / fine-tuning checkpoint or an exported encoder", pixels=True)
    g = p.add_argument_group("k-NN")
    g.add_argument(
        "--ks", type=int, nargs="+", help=f"numbers of neighbours [default: {' '.join(map(str, k.ks))}]"
    )
    g.add_argument(
        "--temperature", type=float, help=f"softmax temperature of the vote [default: {k.temperature}]"
    )
    add_seed(g, "here: which labelled subset with --labels-per-class", FeaturesConfig().subset_seed)
    add_set(g, "knn.temperature=0.1")
    add_features(p, old_batch_size=True)


def add_linprobe_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("linprobe", help="linear probe on frozen features")
    g = p.add_argument_group("encoder (one of --checkpoint, --random, --pixels)")
    add_encoder_source(g, "pretraining / fine-tuning checkpoint or an exported encoder", pixels=True)
    g = p.add_argument_group("probe")
    add_config(g, preset_names(LinprobeRunConfig), "cpu", old="--recipe")
    probe = load_preset("cpu", LinprobeRunConfig).probe  # the defaults a run without --config gets
    add_training(g, probe, ("--epochs", "--batch-size", "--blr", "--weight-decay", "--warmup-epochs"))
    g.add_argument(
        "--probe-batch-size", dest="batch_size", type=int, action=Deprecated, instead="--batch-size"
    )
    g.add_argument("--optimizer", choices=PROBE_OPTIMIZERS, help=f"[default: {probe.optimizer}]")
    add_seed(g, "here: the probe's and the labelled subset's", probe.seed)
    add_set(g, "probe.epochs=10")
    add_features(p, old_batch_size=False)


def add_finetune_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("finetune", help="end-to-end fine-tuning (Table S2)")
    ft = load_preset("cpu", FinetuneRunConfig).finetune  # the defaults a run without --config gets
    g = p.add_argument_group("encoder (one of --checkpoint, --random)")
    add_encoder_source(g, "pretraining checkpoint or an exported encoder", pixels=False)
    g = p.add_argument_group("configuration")
    add_config(g, preset_names(FinetuneRunConfig), "cpu", old="--recipe")
    add_set(g, "finetune.mixup=0 (or mixup=0)")
    g = p.add_argument_group("data and selection")
    add_data(g, "with train/ and val/ sub-folders for a folder", ft.data)
    add_split(g, ft)
    g.add_argument(
        "--labels-per-class", type=int, help="train on K labelled images per class (stratified, seeded)"
    )
    g.add_argument("--label-fraction", type=float, help="... or on this fraction of every class, in (0, 1]")
    g.add_argument(
        "--pool",
        choices=POOLS,
        help=f"avg: mean of patch tokens + fc_norm (the official fine-tuning); cls: cls token [default: {ft.pool}]",
    )
    add_trained(p, ft, "--blr", "finetune")


def add_split(g: argparse._ActionsContainer, section: FinetuneConfig | SegmentConfig) -> None:
    """Which training images, the validation split carved from them, which weights meet the test split."""
    g.add_argument("--limit", type=int, help="only the first N training images")
    g.add_argument(
        "--val-size",
        type=int,
        help="validation images carved from the training split [default: "
        + ("10 %%, at most 5000]" if section.val_size is None else f"{section.val_size}]"),
    )
    g.add_argument(
        "--select",
        choices=SELECTIONS,
        help=f"weights scored on the test split, once [default: {section.select}]",
    )


def add_trained(
    p: argparse.ArgumentParser, section: FinetuneConfig | SegmentConfig, lr: str, command: str
) -> None:
    """The training flags of an end-to-end run (its learning-rate flag: ``lr``) and its run folder."""
    g = p.add_argument_group("training")
    add_training(g, section, ("--epochs", "--batch-size", lr, "--weight-decay", "--warmup-epochs"))
    add_seed(g, default=section.seed)
    add_hardware(g, section)
    add_run_folder(p.add_argument_group("run folder"), command)


def add_segment_parser(sub: argparse._SubParsersAction) -> None:
    sg = load_preset("cpu", SegmentRunConfig).segment  # the defaults a run without --config gets
    p = sub.add_parser("segment", help="semantic segmentation: the encoder as a ViTDet backbone (mIoU)")
    g = p.add_argument_group("encoder (one of --checkpoint, --random)")
    add_encoder_source(g, "pretraining / fine-tuning checkpoint or an exported encoder", pixels=False)
    g = p.add_argument_group("configuration")
    add_config(g, preset_names(SegmentRunConfig), "cpu", old="--recipe")
    add_set(g, "segment.epochs=5 (or epochs=5)")
    g = p.add_argument_group("task")
    add_data(
        g, "cluttered-fashion-mnist, or a folder with train/ and val/, each with images/ and masks/", sg.data
    )
    g.add_argument(
        "--num-classes", type=int, help="classes of a mask folder (ids 0..K-1) [default: the data's own]"
    )
    g.add_argument(
        "--linear",
        dest="mode",
        action="store_const",
        const="linear",
        help="frozen-encoder linear probe (BN + 1x1 conv on the patch tokens) instead of fine-tuning the "
        "pyramid + Semantic FPN head end to end; its lr is segment.linear_lr when the config gives one",
    )
    add_split(g, sg)
    add_trained(p, sg, "--lr", "segment")


def note_seed_meaning(args: argparse.Namespace) -> None:
    """``--seed`` with ``--random`` and no ``--init-seed``: say that the initialisation seed has its own name."""
    if getattr(args, "random", None) and args.seed is not None and args.init_seed is None:
        print(
            "semaim: note: --seed is this run's seed; the --random encoder's is --init-seed (it was --seed "
            "in knn / linprobe before semaim 0.2)",
            file=sys.stderr,
        )


def print_results(title: str, rows: dict[str, dict[str, float]]) -> None:
    print(title)
    for metric, values in rows.items():
        print(f"  {metric:5s} " + "  ".join(f"k={k}: {v:6.2f}%" for k, v in values.items()))


def write_json(path: str | None, result: dict) -> None:
    """``result`` into ``path`` atomically (nothing when no path was given)."""
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(path).with_name(f".{Path(path).name}.tmp")
        tmp.write_text(json.dumps(result, indent=2) + "\n")
        tmp.replace(path)


def features_inputs(cfg: KnnRunConfig | LinprobeRunConfig) -> list[str | None]:
    """What a frozen-feature command reads: the encoder's file, the data folder, the feature cache."""
    return [cfg.encoder.checkpoint, cfg.encoder.preset, cfg.features.data, cfg.features.cache]


def run_knn(args: argparse.Namespace) -> int:
    from ..evaluate.encoders import choose_encoder, split_features
    from ..evaluate.knn import knn_accuracy

    note_seed_meaning(args)
    cfg = build_config(KnnRunConfig, None, flag_values(args, KNN_FLAGS), args.set)
    check_output_file(args.out, inputs=features_inputs(cfg), force=args.force, suffixes=(".json",))
    enc = choose_encoder(cfg.encoder)
    train_f, train_y, test_f, test_y = split_features(cfg.features, enc, not args.no_progress)
    result = knn_accuracy(train_f, train_y, test_f, test_y, cfg.knn.ks, cfg.knn.temperature)
    f = cfg.features
    print_results(f"k-NN ({enc.description}, {f.pool}, T={cfg.knn.temperature}) on {f.data}", result)
    described = {"encoder": enc.description, "data": f.data, "pool": f.pool, "config": cfg.to_dict()}
    write_json(args.out, {**result, **described})
    return 0


def run_linprobe(args: argparse.Namespace) -> int:
    from ..evaluate.encoders import choose_encoder, split_features
    from ..evaluate.linear import train_linear_probe

    note_seed_meaning(args)
    cfg = build_config(LinprobeRunConfig, args.config or "cpu", flag_values(args, LINPROBE_FLAGS), args.set)
    check_output_file(args.out, inputs=features_inputs(cfg), force=args.force, suffixes=(".json",))
    enc = choose_encoder(cfg.encoder)
    train_f, train_y, test_f, test_y = split_features(cfg.features, enc, not args.no_progress)
    result = train_linear_probe(train_f, train_y, test_f, test_y, cfg.probe, progress=not args.no_progress)
    f = cfg.features
    print(
        f"linear probe ({enc.description}, {f.pool}) on {f.data}: top-1 {result['top1']:.2f}%, "
        f"top-5 {result['top5']:.2f}%"
    )
    described = {"encoder": enc.description, "data": f.data, "recipe": cfg.to_dict()["probe"]}
    write_json(args.out, {**result, **described, "config": cfg.to_dict()})
    return 0


def run_trained(args: argparse.Namespace, command: str, config_class: type, flags: dict) -> int:
    """``finetune`` / ``segment``: the config from ``--config`` (when resuming, the run's own), the flags and
    ``--set``, then the run in its folder."""
    if command == "finetune":
        from ..evaluate.finetune import finetune as train
    else:
        from ..evaluate.segmentation.segment import segment as train
    folder, resume = run_folder(args, command)
    preset = starting_config(args, folder, resume, "cpu")
    values = flag_values(args, flags)
    if (
        command == "finetune" and args.epochs is not None
    ):  # the epochs asked for, not the recipe's step budget
        values["finetune.budget_steps"] = 0
    cfg = build_config(config_class, preset, values, args.set)
    train(cfg, folder, resume, args.force, progress=not args.no_progress)
    return 0


def run_finetune(args: argparse.Namespace) -> int:
    return run_trained(args, "finetune", FinetuneRunConfig, FINETUNE_FLAGS)


def run_segment(args: argparse.Namespace) -> int:
    return run_trained(args, "segment", SegmentRunConfig, SEGMENT_FLAGS)
