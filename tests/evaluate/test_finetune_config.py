"""Fine-tuning shares the one config mechanism: its config.yaml rebuilds the run; a bad loss stops it."""

from __future__ import annotations

import json

import pytest
import yaml

import semaim.evaluate.finetune as ft
from semaim.cli import main
from semaim.config import FinetuneRunConfig
from tests.conftest import make_image_folder


def losses(run) -> list[float]:
    return [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_a_runs_config_yaml_rebuilds_it(tmp_path, pretrained):
    data = tmp_path / "data"
    make_image_folder(data / "train", classes=("a", "b"), per_class=8)
    make_image_folder(data / "val", classes=("a", "b"), per_class=2, seed=1)
    first = tmp_path / "first"
    args = [
        "finetune",
        "--checkpoint",
        str(pretrained),
        "--data",
        str(data),
        "--no-progress",
        "--set",
        "budget_steps=0",
        "--set",
        "epochs=2",
        "--set",
        "batch_size=4",
        "--set",
        "finetune.workers=0",
        "--set",
        "seed=3",
    ]
    assert main([*args, "--out", str(first)]) == 0
    saved = FinetuneRunConfig.from_dict(yaml.safe_load((first / "config.yaml").read_text()))
    assert saved.encoder.checkpoint == str(pretrained) and saved.finetune.seed == 3
    assert saved.finetune.epochs == 2 and saved.finetune.blr == 1e-2  # the cpu recipe under the --set values
    again = tmp_path / "again"
    assert (
        main(["finetune", "--config", str(first / "config.yaml"), "--out", str(again), "--no-progress"]) == 0
    )
    assert losses(again) == losses(first)


def test_a_non_finite_fine_tuning_loss_stops_the_run(tmp_path, pretrained, monkeypatch, capsys):
    data = tmp_path / "data"
    make_image_folder(data / "train", classes=("a", "b"), per_class=8)
    make_image_folder(data / "val", classes=("a", "b"), per_class=2, seed=1)
    real = ft.build_objective

    def exploding(cfg, num_classes):
        mixup, criterion = real(cfg, num_classes)
        return mixup, lambda logits, targets: criterion(logits, targets) * float("nan")

    monkeypatch.setattr(ft, "build_objective", exploding)
    out = tmp_path / "ft"
    args = [
        "finetune",
        "--checkpoint",
        str(pretrained),
        "--data",
        str(data),
        "--out",
        str(out),
        "--no-progress",
        "--set",
        "budget_steps=0",
        "--set",
        "batch_size=4",
        "--set",
        "finetune.workers=0",
    ]
    assert main(args) == 1
    assert "stopped: loss is nan at step 1" in capsys.readouterr().err  # the first step went bad
    assert not (out / "checkpoint-last.pt").exists()


def test_crop_scale_reaches_the_training_transform_and_is_checked():
    from semaim.config import FinetuneConfig
    from semaim.errors import ConfigError

    transform = ft.train_transform(FinetuneConfig(crop_scale=(0.5, 1.0)), 1, (32, 32), (0.5,), (0.5,))
    crops = [step for step in transform.transforms if hasattr(step, "scale")]
    assert len(crops) == 1 and tuple(crops[0].scale) == (0.5, 1.0)
    for bad in [(0.5, 1.2), (0.0, 1.0), (0.9, 0.5)]:
        with pytest.raises(ConfigError, match="finetune.crop_scale"):
            FinetuneConfig(crop_scale=bad).validate()


def test_budget_steps_stretches_the_schedule_of_a_small_labelled_set():
    from semaim.config import FinetuneConfig

    small = FinetuneConfig(epochs=1, budget_steps=1800, warmup_epochs=0.1)
    ft.stretch_schedule(small, steps_per_epoch=18)  # 600 images at batch 32
    assert (small.epochs, small.warmup_epochs, small.eval_every) == (
        100,
        10.0,
        100,
    )  # validated once, at the end
    twice = FinetuneConfig(epochs=2, budget_steps=1800, warmup_epochs=0.1, eval_every=1)
    ft.stretch_schedule(twice, steps_per_epoch=18)
    assert (twice.epochs, twice.eval_every) == (100, 50)
    mid = FinetuneConfig(epochs=1, budget_steps=1800, warmup_epochs=0.1)
    ft.stretch_schedule(mid, steps_per_epoch=187)  # 6000 images: the nearest whole number of epochs
    assert mid.epochs == 10
    large = FinetuneConfig(epochs=1, budget_steps=1800, warmup_epochs=0.1)
    ft.stretch_schedule(large, steps_per_epoch=1718)  # every label: one epoch is about the budget
    assert (large.epochs, large.warmup_epochs) == (1, 0.1)
    ft.stretch_schedule(small, steps_per_epoch=18)  # a resumed run's config stays as it ran
    assert (small.epochs, small.warmup_epochs, small.eval_every) == (100, 10.0, 100)
