"""``finetune`` / ``segment`` resume only the run they continue: changed settings, starting weights or data
are refused (exit 2, nothing written); a kill at any moment leaves files a resume makes exact; input that
cannot train says so by name."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

import semaim.evaluate.trainer as sup
from semaim.cli import main
from semaim.config import FinetuneRunConfig, SegmentRunConfig
from semaim.errors import ConfigError
from semaim.evaluate.finetune import finetune as finetune_run
from semaim.evaluate.segmentation.segment import segment as segment_run
from tests.conftest import TINY_RUN, make_image_folder
from tests.data.test_masks import write_pair

TINY_PRESET = (
    "model: {img_size: 32, patch_size: 8, embed_dim: 32, depth: 2, num_heads: 2, decoder_depth: 2}\n"
)
SHORT = [
    "--no-progress",
    "--set",
    "budget_steps=0",
    "--set",
    "epochs=2",
    "--batch-size",
    "4",
    "--workers",
    "0",
]
SEGMENT = [
    "--no-progress",
    "--set",
    "epochs=1",
    "--batch-size",
    "4",
    "--workers",
    "0",
    "--set",
    "pyramid_dim=8",
    "--set",
    "head_dim=8",
    "--limit",
    "8",
    "--val-size",
    "4",
]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("folder")
    make_image_folder(root / "train", classes=("a", "b"), per_class=8)
    make_image_folder(root / "val", classes=("a", "b"), per_class=2, seed=1)
    return root


@pytest.fixture(scope="module")
def preset(tmp_path_factory):
    path = tmp_path_factory.mktemp("preset") / "tiny.yaml"
    path.write_text(TINY_PRESET)
    return str(path)


@pytest.fixture(scope="module")
def narrow(tmp_path_factory, fmnist):
    """A pretraining checkpoint of another shape (width 16) than ``pretrained`` (width 32)."""
    out = tmp_path_factory.mktemp("narrow") / "run"
    args = ["pretrain", "--data", fmnist, "--out", str(out), "--batch-size", "8", "--epochs", "1", *TINY_RUN]
    assert main([*args, "--set", "model.embed_dim=16"]) == 0
    return out / "checkpoint-last.pt"


@pytest.fixture(scope="module")
def cluttered(fmnist):
    return fmnist.replace("fashion-mnist", "cluttered-fashion-mnist", 1)


def finetune(data, out, *extra) -> int:
    return main(["finetune", "--data", str(data), "--out", str(out), "--set", "val_size=4", *SHORT, *extra])


def segment(data, out, *extra) -> int:
    return main(["segment", "--data", data, "--out", str(out), *SEGMENT, *extra])


def snapshot(folder) -> dict[str, bytes]:
    """Every file of a run folder and its bytes (TensorBoard's events included)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def finished(tmp_path_factory, data, preset):
    """A finished fine-tuning run from a random encoder (6 steps)."""
    out = tmp_path_factory.mktemp("finished") / "run"
    assert finetune(data, out, "--random", "--model-config", preset) == 0
    return out


# --------------------------------------------------------------------------- changed settings
@pytest.mark.parametrize(
    "extra, changed",
    [
        (["--labels-per-class", "2"], "finetune.labels_per_class: None in the run, now 2"),
        (["--seed", "3"], "finetune.seed: 0 in the run, now 3"),
        (["--set", "blr=0.5"], "finetune.blr"),
        (["--set", "pool=cls"], "finetune.pool: 'avg' in the run, now 'cls'"),
        (["--precision", "bf16"], "finetune.precision"),
    ],
)
def test_resume_refuses_changed_settings_and_writes_nothing(tmp_path, finished, capsys, extra, changed):
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    before = snapshot(out)
    assert main(["finetune", "--resume", str(out), *extra, "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert changed in err and "--force" in err and "new --out" in err
    assert snapshot(out) == before


def test_resume_may_change_where_and_how_often_it_saves(tmp_path, finished):
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    args = ["--device", "cpu", "--workers", "1", "--set", "save_every_steps=7", "--no-progress"]
    assert main(["finetune", "--resume", str(out), *args]) == 0
    assert json.loads((out / "result.json").read_text()) == json.loads((finished / "result.json").read_text())


def test_resume_refuses_another_starting_checkpoint(tmp_path, data, pretrained, narrow, capsys):
    out = tmp_path / "run"
    assert finetune(data, out, "--checkpoint", str(pretrained)) == 0
    before = snapshot(out)
    assert main(["finetune", "--resume", str(out), "--checkpoint", str(narrow), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"encoder.checkpoint: '{pretrained}' in the run, now '{narrow}'" in err
    assert "starting weights" in err and snapshot(out) == before


def test_resume_refuses_a_starting_checkpoint_whose_content_changed(
    tmp_path, data, pretrained, narrow, capsys
):
    encoder = tmp_path / "encoder.pt"
    shutil.copy(pretrained, encoder)
    out = tmp_path / "run"
    assert finetune(data, out, "--checkpoint", str(encoder)) == 0
    shutil.copy(narrow, encoder)  # the same path, other weights
    assert main(["finetune", "--resume", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "starting weights:" in err and "encoder.checkpoint" not in err


def test_resume_refuses_changed_data(tmp_path, preset, capsys):
    root = tmp_path / "data"
    make_image_folder(root / "train", classes=("a", "b"), per_class=8)
    make_image_folder(root / "val", classes=("a", "b"), per_class=2, seed=1)
    out = tmp_path / "run"
    assert finetune(root, out, "--random", "--model-config", preset) == 0
    before = snapshot(out)
    next((root / "train" / "b").iterdir()).unlink()
    assert main(["finetune", "--resume", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "train split: 16 images" in err and ", now 15 images" in err and snapshot(out) == before


def test_segment_resume_refuses_another_checkpoint_and_another_mode(
    tmp_path, cluttered, pretrained, narrow, capsys
):
    out = tmp_path / "run"
    assert segment(cluttered, out, "--checkpoint", str(pretrained)) == 0
    before = snapshot(out)
    assert main(["segment", "--resume", str(out), "--checkpoint", str(narrow), "--no-progress"]) == 2
    assert "encoder.checkpoint" in capsys.readouterr().err
    assert main(["segment", "--resume", str(out), "--linear", "--no-progress"]) == 2
    assert "segment.mode: 'finetune' in the run, now 'linear'" in capsys.readouterr().err
    assert snapshot(out) == before


def test_a_checkpoint_that_does_not_fit_is_a_named_error(tmp_path, data, pretrained, narrow, capsys):
    """A run folder without the record of what it started from (written before resumes were checked):
    weights of another shape are a :class:`CheckpointError`, not a traceback."""
    encoder = tmp_path / "encoder.pt"
    shutil.copy(pretrained, encoder)
    out = tmp_path / "run"
    assert finetune(data, out, "--checkpoint", str(encoder)) == 0
    ckpt = torch.load(out / "checkpoint-last.pt", weights_only=False)
    ckpt.pop("identity", None)
    torch.save(ckpt, out / "checkpoint-last.pt")
    shutil.copy(narrow, encoder)
    assert main(["finetune", "--resume", str(out), "--no-progress"]) == 2
    assert "does not fit the model" in capsys.readouterr().err


# --------------------------------------------------------------------------- a kill at any moment
@pytest.mark.parametrize("command", ["finetune", "segment"])
def test_a_kill_while_saving_the_best_checkpoint_resumes_exactly(
    tmp_path, data, cluttered, preset, monkeypatch, command
):
    def start(out):
        args = ["--random", "--model-config", preset, "--set", "save_every_steps=1", "--select", "best"]
        return finetune(data, out, *args) if command == "finetune" else segment(cluttered, out, *args)

    assert start(tmp_path / "whole") == 0
    real_save = sup.save_atomic

    def die_saving_best(obj, path):
        if path.name == sup.BEST:
            raise KeyboardInterrupt  # a kill while checkpoint-best.pt is being written
        real_save(obj, path)

    monkeypatch.setattr(sup, "save_atomic", die_saving_best)
    assert start(tmp_path / "cut") == 130
    monkeypatch.setattr(sup, "save_atomic", real_save)
    assert main([command, "--resume", str(tmp_path / "cut"), "--no-progress"]) == 0
    for name in ("eval.jsonl", "result.json"):
        assert (tmp_path / "cut" / name).read_text() == (tmp_path / "whole" / name).read_text()


# --------------------------------------------------------------------------- messages
def test_a_preset_val_size_that_does_not_fit_says_how_to_set_it(tmp_path, preset, capsys):
    root = tmp_path / "masks"
    for i in range(10):
        write_pair(root / "train", f"t{i}")
    write_pair(root / "val", "v0")
    out = tmp_path / "run"
    args = ["segment", "--random", "--model-config", preset, "--data", str(root), "--num-classes", "3"]
    assert main([*args, "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "segment.val_size: 1000" in err and "--val-size" in err and "10 training images" in err
    assert not out.exists()


def test_finetune_starts_from_a_finetuning_checkpoint(tmp_path, data, finished, capsys):
    source = str(finished / "checkpoint-last.pt")
    assert finetune(data, tmp_path / "avg", "--checkpoint", source) == 0
    assert finetune(data, tmp_path / "cls", "--checkpoint", source, "--pool", "cls") == 2
    assert "--pool avg" in capsys.readouterr().err and not (tmp_path / "cls").exists()


@pytest.mark.parametrize(
    "train, config", [(finetune_run, FinetuneRunConfig), (segment_run, SegmentRunConfig)]
)
def test_no_encoder_names_what_the_command_offers(tmp_path, train, config):
    with pytest.raises(ConfigError) as err:
        train(config(), tmp_path / "run", progress=False)
    message = str(err.value)
    assert "--checkpoint" in message and "--random" in message and "pixels" not in message
    assert not (tmp_path / "run").exists()


def test_one_class_is_refused_before_training(tmp_path, preset, capsys):
    root = tmp_path / "data"
    make_image_folder(root / "train", classes=("a",), per_class=8)
    make_image_folder(root / "val", classes=("a",), per_class=2, seed=1)
    out = tmp_path / "run"
    assert finetune(root, out, "--random", "--model-config", preset) == 2
    assert "at least two classes" in capsys.readouterr().err and not out.exists()


def test_an_empty_class_folder_is_named(tmp_path, preset, capsys):
    root = tmp_path / "data"
    make_image_folder(root / "train", classes=("a",), per_class=8)
    (root / "train" / "b").mkdir()
    make_image_folder(root / "val", classes=("a", "b"), per_class=2, seed=1)
    out = tmp_path / "run"
    assert finetune(root, out, "--random", "--model-config", preset) == 2
    err = capsys.readouterr().err
    assert f"{root / 'train' / 'b'} has no images" in err and not out.exists()
