"""Bad evaluation input found by fuzzing: split class maps, stale caches, broken encoder files, bad flags."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch
from safetensors.torch import save_file

from semaim.cli import main
from semaim.config import EncoderConfig
from semaim.encoder import build_vit, load_encoder
from semaim.errors import CheckpointError
from semaim.evaluate.encoders import choose_encoder
from semaim.evaluate.features import RawPixels, extract_features
from tests.conftest import make_fmnist_dir, make_image_folder

ARGS = {"img_size": 32, "patch_size": 8, "in_chans": 3, "embed_dim": 32, "depth": 2, "num_heads": 2}
QUIET = ["--workers", "0", "--no-progress", "--device", "cpu"]


@pytest.fixture(scope="module")
def fmnist(tmp_path_factory):
    root = tmp_path_factory.mktemp("fmnist")
    make_fmnist_dir(root)
    return f"fashion-mnist:{root}"


def write_encoder(path, seed=0, args=ARGS):
    """An exported encoder (``.safetensors`` + ``.json``) with weights drawn from ``seed``."""
    torch.manual_seed(seed)
    state = build_vit(args).state_dict()
    save_file({k: v.contiguous() for k, v in state.items()}, str(path), metadata={"format": "pt"})
    path.with_suffix(".json").write_text(json.dumps({"model_args": args}))
    return path


def run_error(capsys, argv):
    """``(exit status, stderr)`` of the CLI."""
    code = main(argv)
    return code, capsys.readouterr().err


# --------------------------------------------------------------------------- one class map for both splits
def test_knn_on_a_val_folder_without_every_train_class(tmp_path):
    make_image_folder(tmp_path / "train", classes=("a", "b", "c"), per_class=2)
    for name in ("b", "c"):  # val holds exact copies of two train classes: 1-NN must be perfect
        shutil.copytree(tmp_path / "train" / name, tmp_path / "val" / name)
    out = tmp_path / "knn.json"
    assert main(["knn", "--pixels", "--data", str(tmp_path), "--ks", "1", "--out", str(out), *QUIET]) == 0
    assert json.loads(out.read_text())["top1"]["1"] == 100.0


# --------------------------------------------------------------------------- the feature cache
def test_cache_sees_a_changed_image_folder(tmp_path):
    make_image_folder(tmp_path / "data", per_class=2)
    kwargs = dict(workers=0, progress=False, cache=tmp_path / "cache", cache_key="pixels")
    extract = lambda: extract_features(RawPixels(), str(tmp_path / "data"), "train", (16, 16), **kwargs)  # noqa: E731
    first, _ = extract()
    make_image_folder(tmp_path / "data", classes=("cat",), per_class=3, seed=1)  # cat_2.jpg is new
    second, _ = extract()
    assert len(second) == len(first) + 1
    changed = tmp_path / "data" / "dog" / "dog_0.jpg"
    shutil.copy(tmp_path / "data" / "cat" / "cat_0.jpg", changed)  # replaced in place: same path
    third, _ = extract()
    assert not torch.equal(third[-2], second[-2])
    assert len(list((tmp_path / "cache").glob("features-*.pt"))) == 3


def test_cache_sees_changed_idx_files(tmp_path):
    (tmp_path / "data").mkdir()
    make_fmnist_dir(tmp_path / "data")
    kwargs = dict(workers=0, progress=False, cache=tmp_path / "cache", cache_key="pixels")
    spec = f"fashion-mnist:{tmp_path / 'data'}"
    first, _ = extract_features(RawPixels(), spec, "test", (16, 16), **kwargs)
    make_fmnist_dir(tmp_path / "data", n_test=7)
    second, _ = extract_features(RawPixels(), spec, "test", (16, 16), **kwargs)
    assert len(first) == 6 and len(second) == 7


def test_a_checkpoint_replaced_with_the_same_size_and_mtime_is_not_served_from_cache(tmp_path, fmnist):
    path = write_encoder(tmp_path / "encoder.safetensors", seed=0)
    other = write_encoder(tmp_path / "other.safetensors", seed=1)
    assert path.stat().st_size == other.stat().st_size
    cache = tmp_path / "cache"
    argv = ["knn", "--checkpoint", str(path), "--data", fmnist, "--cache", str(cache), "--ks", "1", *QUIET]
    assert main(argv) == 0
    key = choose_encoder(EncoderConfig(checkpoint=str(path))).cache_key
    stat = path.stat()
    shutil.copyfile(other, path)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert choose_encoder(EncoderConfig(checkpoint=str(path))).cache_key != key
    assert main(argv) == 0
    assert len(list(cache.glob("features-*.pt"))) == 4  # train and test, for each set of weights


# --------------------------------------------------------------------------- broken encoder files
def truncated(path):
    path.write_bytes(path.read_bytes()[:100])


def wider(path):
    path.with_suffix(".json").write_text(json.dumps({"model_args": {**ARGS, "embed_dim": 48}}))


def not_json(path):
    path.with_suffix(".json").write_text("{model_args: oops")


def no_model_args(path):
    path.with_suffix(".json").write_text(json.dumps({"source": "somewhere"}))


@pytest.mark.parametrize(
    "damage, file, words",
    [
        (truncated, ".safetensors", ["cannot read"]),
        (wider, ".safetensors", ["cls_token", "(1, 1, 32)", "(1, 1, 48)"]),
        (not_json, ".json", ["not valid JSON"]),
        (no_model_args, ".json", ["model_args"]),
    ],
)
def test_broken_encoder_files_are_named(tmp_path, capsys, fmnist, damage, file, words):
    path = write_encoder(tmp_path / "encoder.safetensors")
    damage(path)
    with pytest.raises(CheckpointError):
        load_encoder(path)
    code, err = run_error(capsys, ["knn", "--checkpoint", str(path), "--data", fmnist, *QUIET])
    assert code == 2 and "semaim knn: error:" in err and str(path.with_suffix(file)) in err
    for word in words:
        assert word in err


# --------------------------------------------------------------------------- bad flags
@pytest.mark.parametrize(
    "flags, name",
    [
        (["--temperature", "0"], "knn.temperature"),
        (["--temperature", "nan"], "knn.temperature"),
        (["--ks", "0"], "knn.ks"),
        (["--ks", "-3"], "knn.ks"),
        (["--device", "tpu"], "device"),
        (["--out", "/proc/nope/x.json"], "--out"),
    ],
)
def test_bad_knn_flags_exit_2_before_extracting_features(capsys, monkeypatch, fmnist, flags, name):
    def no_extraction(*args, **kwargs):
        raise AssertionError("features were extracted before the bad flag was reported")

    monkeypatch.setattr("semaim.evaluate.encoders.extract_features", no_extraction)
    code, err = run_error(capsys, ["knn", "--pixels", "--data", fmnist, *QUIET, *flags])
    assert code == 2 and f"semaim knn: error: {name}" in err
