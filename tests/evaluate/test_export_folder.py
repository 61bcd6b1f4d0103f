"""``semaim export --out DIR``: a folder that timm alone loads (``local-dir:``), that never replaces an
input, that is replaced only with ``--force`` and then whole, with the modes of any shared file; and the
encoder readers' answers to export folders, 0.2's ``X.safetensors`` / ``X.pth`` + ``X.json`` pairs, and
weights whose description is missing or does not fit them."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import subprocess
import sys

import pytest
import safetensors.torch
import timm
import torch

from semaim.cli import main
from semaim.data import open_dataset
from semaim.encoder import KIND_FINETUNE, _dataset_stats, build_vit, encoder_from_checkpoint, load_encoder
from semaim.errors import CheckpointError, ConfigError, MissingFileError, RunDirError, SemAIMWarning
from semaim.export import export_encoder
from tests.conftest import make_fmnist_dir, make_image_folder

FMNIST_MEAN, FMNIST_STD = [0.286] * 3, [0.353] * 3  # the tiny pretraining: Fashion-MNIST as 3 channels

TIMM_ALONE = """
import sys, timm, torch
torch.set_num_threads(1)
images, out, folders = sys.argv[1], sys.argv[2], sys.argv[3:]
found = {}
for folder in folders:
    vit = timm.create_model("local-dir:" + folder, pretrained=True).eval()  # strict by default
    with torch.no_grad():
        features = vit.forward_features(torch.load(images))
    data = timm.data.resolve_data_config({}, model=vit)
    found[folder] = {"features": features, "state": vit.state_dict(), "data": data, "class": type(vit).__name__}
found["semaim imported"] = any(m == "semaim" or m.startswith("semaim.") for m in sys.modules)
torch.save(found, out)
"""


def snapshot(folder):
    """Every file under ``folder`` (links not followed) and the hash of its bytes."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
        for p in sorted(folder.rglob("*"))
    }


@pytest.fixture
def run_copy(tmp_path, pretrained):
    """A private copy of the pretraining run folder (the shared one must stay as it is)."""
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(pretrained, run / pretrained.name)
    (run / "config.yaml").write_text("kept: true\n")
    return run / pretrained.name


@pytest.fixture
def one_thread():
    """Features compared to the last bit: the same thread count as the subprocess."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def features(source, images):
    with torch.no_grad():
        return load_encoder(source).eval().forward_features(images)


# --------------------------------------------------------------------------- timm alone
def test_timm_alone_loads_both_formats_with_the_same_features(tmp_path, pretrained, one_thread):
    folders = [tmp_path / "timm", tmp_path / "mae"]
    assert main(["export", "--checkpoint", str(pretrained), "--out", str(folders[0])]) == 0
    assert main(["export", "--checkpoint", str(pretrained), "--format", "mae", "--out", str(folders[1])]) == 0
    torch.manual_seed(0)
    images = torch.randn(3, 3, 32, 32)
    torch.save(images, tmp_path / "images.pt")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}  # a local folder: no network, whatever is installed
    argv = [sys.executable, "-c", TIMM_ALONE, str(tmp_path / "images.pt"), str(tmp_path / "out.pt")]
    subprocess.run([*argv, *map(str, folders)], check=True, env=env, cwd=tmp_path, timeout=300)
    found = torch.load(tmp_path / "out.pt", weights_only=False)
    assert found.pop("semaim imported") is False
    expected, reference = features(pretrained, images), load_encoder(pretrained).state_dict()
    for folder in map(str, folders):
        got = found[folder]
        assert got["class"] == "VisionTransformer"
        assert set(got["state"]) == set(reference)
        assert all(torch.equal(got["state"][k], reference[k]) for k in reference)
        assert (got["features"] - expected).abs().max().item() == 0
        data = got["data"]
        assert data["input_size"] == (3, 32, 32) and data["interpolation"] == "bicubic"
        assert list(data["mean"]) == FMNIST_MEAN and list(data["std"]) == FMNIST_STD


def test_config_json_is_timms_model_folder_format(tmp_path, pretrained):
    _, meta = export_encoder(pretrained, tmp_path / "enc")
    config = json.loads(meta.read_text())
    assert timm.is_model(config["architecture"]) and config["num_classes"] == 0
    args = config["model_args"]
    assert {
        k: args[k] for k in ("img_size", "patch_size", "in_chans", "embed_dim", "depth", "num_heads")
    } == {
        "img_size": 32,
        "patch_size": 8,
        "in_chans": 3,
        "embed_dim": 32,
        "depth": 2,
        "num_heads": 2,
    }
    assert (args["global_pool"], args["class_token"], args["no_embed_class"]) == ("token", True, False)
    cfg = config["pretrained_cfg"]
    assert cfg["input_size"] == [3, 32, 32] and cfg["num_classes"] == 0
    assert (cfg["mean"], cfg["std"]) == (FMNIST_MEAN, FMNIST_STD)
    from timm.models._hub import load_model_config_from_path

    pretrained_cfg, name, model_args = load_model_config_from_path(tmp_path / "enc")
    assert name == config["architecture"] and model_args == args
    assert pretrained_cfg["source"] == "local-dir" and pretrained_cfg["input_size"] == (3, 32, 32)


def test_a_finetuned_encoder_with_an_average_pool_exports_its_fc_norm(tmp_path):
    args = {"img_size": 32, "patch_size": 8, "in_chans": 1, "embed_dim": 32, "depth": 2, "num_heads": 2}
    torch.manual_seed(0)
    classifier = build_vit(args, num_classes=11, global_pool="avg")
    ckpt = tmp_path / "finetune.pt"
    torch.save(
        {
            "kind": KIND_FINETUNE,
            "model": classifier.state_dict(),
            "model_args": {**args, "global_pool": "avg"},
            "config": {"finetune": {"data": "cluttered-fashion-mnist"}},
        },
        ckpt,
    )
    weights, meta = export_encoder(ckpt, tmp_path / "enc")
    assert {"fc_norm.weight", "fc_norm.bias"} <= set(safetensors.torch.load_file(weights))
    cfg = json.loads(meta.read_text())["pretrained_cfg"]
    assert (cfg["input_size"], cfg["mean"], cfg["std"]) == ([1, 32, 32], [0.153], [0.184])
    vit = timm.create_model(f"local-dir:{tmp_path / 'enc'}", pretrained=True).eval()
    images = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(
            vit.forward_head(vit.forward_features(images), pre_logits=True),
            classifier.eval().forward_head(classifier.forward_features(images), pre_logits=True),
        )
    assert torch.equal(features(tmp_path / "enc", images), features(ckpt, images))


def test_the_recorded_normalisation_is_the_one_the_data_gives(tmp_path):
    make_fmnist_dir(tmp_path)
    make_image_folder(tmp_path / "photos", per_class=1)
    for spec, in_chans in (
        (f"fashion-mnist:{tmp_path}", 1),
        (str(tmp_path / "photos"), 3),
        (str(tmp_path / "photos"), 1),
    ):
        base = open_dataset(spec, "train", in_chans)
        assert _dataset_stats(spec, in_chans) == (tuple(base.mean), tuple(base.std)), spec


# --------------------------------------------------------------------------- never over an input
@pytest.mark.parametrize("fmt", ["mae", "timm"])
@pytest.mark.parametrize(
    "where", ["the checkpoint", "its folder", "a link to its folder", "above its folder"]
)
@pytest.mark.parametrize("force", [False, True])
def test_out_that_is_or_holds_the_checkpoint_exits_2_and_changes_nothing(
    tmp_path, run_copy, capsys, fmt, where, force
):
    run = run_copy.parent
    (tmp_path / "link").symlink_to(run, target_is_directory=True)
    out = {
        "the checkpoint": run_copy,
        "its folder": run,
        "a link to its folder": tmp_path / "link",
        "above its folder": tmp_path,
    }[where]
    before = snapshot(tmp_path)
    argv = ["export", "--checkpoint", str(run_copy), "--format", fmt, "--out", str(out)]
    assert main(argv + ["--force"] * force) == 2
    err = capsys.readouterr().err
    assert "semaim export: error: --out:" in err and "input" in err and str(run_copy) in err
    assert snapshot(tmp_path) == before


def test_out_over_an_old_pairs_description_is_refused(tmp_path, pretrained, capsys):
    pair = write_old_pair(pretrained, tmp_path / "old" / "enc.safetensors")
    before = snapshot(tmp_path)
    for out, named in ((pair.with_suffix(".json"), "is an input"), (pair.parent, "holds an input")):
        assert main(["export", "--checkpoint", str(pair), "--out", str(out), "--force"]) == 2
        assert f"--out: {out} {named}" in capsys.readouterr().err
    assert snapshot(tmp_path) == before


def test_an_existing_folder_needs_force_and_force_replaces_only_exports_files(tmp_path, pretrained, capsys):
    out = tmp_path / "enc"
    assert main(["export", "--checkpoint", str(pretrained), "--out", str(out)]) == 0
    (out / "README.md").write_text("mine\n")
    before = snapshot(out)
    assert main(["export", "--checkpoint", str(pretrained), "--format", "mae", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"--out: {out} is not empty (it holds README.md, config.json, model.safetensors)" in err
    assert "--force" in err
    assert snapshot(out) == before
    assert (
        main(["export", "--checkpoint", str(pretrained), "--format", "mae", "--out", str(out), "--force"])
        == 0
    )
    assert sorted(p.name for p in out.iterdir()) == [
        "README.md",
        "config.json",
        "model.pth",
    ]  # one weights file
    assert (out / "README.md").read_text() == "mine\n"
    assert json.loads((out / "config.json").read_text())["semaim"]["format"] == "mae"
    images = torch.randn(2, 3, 32, 32)
    assert torch.equal(features(out, images), features(pretrained, images))


def test_a_failed_forced_export_leaves_the_folder_as_it_was(tmp_path, pretrained, monkeypatch):
    out = tmp_path / "enc"
    export_encoder(pretrained, out)
    before = snapshot(out)

    def full_disk(tensors, path, metadata=None):
        with open(path, "wb") as f:
            f.write(b"half a file")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("semaim.export.save_file", full_disk)
    with pytest.raises(RunDirError, match="the disk is full"):
        export_encoder(pretrained, out, force=True)
    assert snapshot(out) == before  # no temporary file left either
    with pytest.raises(RunDirError):
        export_encoder(pretrained, tmp_path / "new" / "enc")
    assert not (tmp_path / "new").exists()


def test_out_that_is_a_file_or_holds_a_folder_where_a_file_goes(tmp_path, pretrained, capsys):
    (tmp_path / "notes").write_text("keep me")
    (tmp_path / "d3" / "config.json").mkdir(parents=True)
    before = snapshot(tmp_path)
    assert main(["export", "--checkpoint", str(pretrained), "--out", str(tmp_path / "notes"), "--force"]) == 2
    assert "is a file" in capsys.readouterr().err
    assert main(["export", "--checkpoint", str(pretrained), "--out", str(tmp_path / "d3"), "--force"]) == 2
    assert f"{tmp_path / 'd3' / 'config.json'} is not a file" in capsys.readouterr().err
    assert main(["export", "--checkpoint", str(pretrained), "--out", str(tmp_path / "d4.pth")]) == 2
    assert "--out: " in capsys.readouterr().err  # a file name: export writes a folder
    assert snapshot(tmp_path) == before
    with pytest.raises(ConfigError, match="--format"):
        export_encoder(pretrained, tmp_path / "x", "onnx")


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_files_get_the_mode_open_gives(tmp_path, pretrained, umask, mode):
    old = os.umask(umask)
    try:
        for fmt in ("timm", "mae"):
            weights, meta = export_encoder(pretrained, tmp_path / fmt, fmt)
            assert (weights.stat().st_mode & 0o777, meta.stat().st_mode & 0o777) == (mode, mode)
    finally:
        os.umask(old)


# --------------------------------------------------------------------------- reading exports back
def write_old_pair(checkpoint, path):
    """What ``semaim export`` wrote in 0.2: ``X.safetensors`` or ``X.pth`` with ``X.json`` beside it."""
    state, args = encoder_from_checkpoint(checkpoint)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".safetensors":
        safetensors.torch.save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save({"model": state}, path)
    described = {"model_args": args, "source": str(checkpoint), "format": path.suffix[1:]}
    path.with_suffix(".json").write_text(json.dumps(described))
    return path


@pytest.mark.parametrize("name", ["enc.safetensors", "enc.pth"])
def test_old_pairs_still_load_and_export_to_a_folder(tmp_path, pretrained, name):
    pair = write_old_pair(pretrained, tmp_path / name)
    images = torch.randn(2, 3, 32, 32)
    assert torch.equal(features(pair, images), features(pretrained, images))
    with pytest.warns(SemAIMWarning, match="mean/std"):  # 0.2's .json does not record it
        export_encoder(pair, tmp_path / "folder")
    assert "mean" not in json.loads((tmp_path / "folder" / "config.json").read_text())["pretrained_cfg"]
    assert torch.equal(features(tmp_path / "folder", images), features(pretrained, images))


def test_an_mae_pth_without_its_description_says_which_file_is_missing(tmp_path, pretrained, capsys):
    weights, _ = export_encoder(pretrained, tmp_path / "enc", "mae")
    alone = tmp_path / "semaim_vit.pth"
    shutil.copy(weights, alone)
    with pytest.raises(MissingFileError, match="semaim_vit.json.*config.json"):
        load_encoder(alone)
    assert main(["export", "--checkpoint", str(alone), "--out", str(tmp_path / "again")]) == 2
    assert str(tmp_path / "semaim_vit.json") in capsys.readouterr().err
    (tmp_path / "enc" / "config.json").unlink()
    with pytest.raises(MissingFileError, match="config.json"):
        load_encoder(tmp_path / "enc")
    with pytest.raises(MissingFileError, match="model.json.*config.json"):
        load_encoder(weights)


def test_a_description_that_does_not_fit_the_weights_names_both(tmp_path, pretrained):
    weights, meta = export_encoder(pretrained, tmp_path / "enc")
    config = json.loads(meta.read_text())
    config["model_args"]["embed_dim"] = 48
    meta.write_text(json.dumps(config))
    for source in (tmp_path / "enc", weights):
        with pytest.raises(
            CheckpointError, match=f"{weights}.*{meta}.*cls_token: file .1, 1, 32., model .1, 1, 48."
        ):
            encoder_from_checkpoint(source)
    # 0.2's shared stem: enc.safetensors from one run, enc.json from a run of another shape.
    pair = write_old_pair(pretrained, tmp_path / "old" / "enc.safetensors")
    other = json.loads(pair.with_suffix(".json").read_text())
    other["model_args"]["depth"] = 3
    pair.with_suffix(".json").write_text(json.dumps(other))
    with pytest.raises(CheckpointError, match=f"{pair}.*{pair.with_suffix('.json')}.*missing blocks.2"):
        encoder_from_checkpoint(pair)
    config["model_args"]["bogus"] = 1
    config["model_args"]["embed_dim"] = 32
    meta.write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=f"{meta}.*bogus"):
        load_encoder(tmp_path / "enc")


def test_a_folder_that_is_not_an_export_is_named(tmp_path, pretrained):
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(pretrained, run / "checkpoint-last.pt")
    with pytest.raises(MissingFileError, match=f"give the file: {run / 'checkpoint-last.pt'}"):
        load_encoder(run)
    export_encoder(pretrained, tmp_path / "enc")
    torch.save({"model": load_encoder(pretrained).state_dict()}, tmp_path / "enc" / "model.pth")
    with pytest.raises(CheckpointError, match="both model.safetensors and model.pth"):
        load_encoder(tmp_path / "enc")
