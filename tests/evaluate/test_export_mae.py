"""``semaim export --format mae``: MAE's checkpoint layout (``DIR/model.pth``), checked against the key names
detectron2's ViTDet and mmsegmentation's MAE backbone load, and bad input that must leave existing files alone.

The expected names are written out here from those projects' code and configs (not imported: neither is
a dependency):

- MAE's released ``mae_pretrain_vit_base.pth`` is ``{"model": state_dict}`` of its encoder, a timm
  ``VisionTransformer`` without head: ``cls_token``, ``pos_embed``, ``patch_embed.proj.*``,
  ``blocks.N.{norm1, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2}.*``, ``norm.*``.
- detectron2's ``ViT`` (``detectron2/modeling/backbone/vit.py``, used by ``projects/ViTDet/configs``
  with ``train.init_checkpoint = ".../mae_pretrain_vit_base.pth?matching_heuristics=True"``) has
  ``patch_embed.proj.*``, ``pos_embed`` of shape ``(1, 1 + h·w, D)`` (``pretrain_use_cls_token=True``;
  ``get_abs_pos`` drops the cls row and needs a square grid) and ``blocks.N.{norm1, attn.qkv, attn.proj,
  norm2, mlp.fc1, mlp.fc2}.*``; its ``attn.rel_pos_h/w`` start from zero (not in MAE files); the file's
  ``cls_token`` and ``norm.*`` are reported unused.
- mmsegmentation's ``MAE`` backbone (``mmseg/models/backbones/mae.py`` on ``beit.py``) loads MAE files
  after ``tools/model_converters/beit2mmseg.py``, whose renaming is :func:`beit2mmseg` below; with
  ``qv_bias=False`` its ``attn.qkv`` has no bias (the file's is dropped by its non-strict load), and
  ``gamma_1/2`` and ``relative_position_bias_table`` are its own (initialised, not in MAE files).
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from timm.models.vision_transformer import VisionTransformer

from semaim import load_encoder
from semaim.cli import main
from semaim.export import export_encoder

BLOCK_PARTS = ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2")


def mae_keys(depth: int) -> set[str]:
    """The keys of MAE's ``mae_pretrain_vit_*.pth`` for an encoder of ``depth`` blocks."""
    keys = {
        "cls_token",
        "pos_embed",
        "patch_embed.proj.weight",
        "patch_embed.proj.bias",
        "norm.weight",
        "norm.bias",
    }
    return keys | {
        f"blocks.{i}.{part}.{kind}"
        for i in range(depth)
        for part in BLOCK_PARTS
        for kind in ("weight", "bias")
    }


def vitdet_keys(depth: int) -> set[str]:
    """The parameters of detectron2's ViTDet ``ViT`` that an MAE checkpoint fills (all but ``rel_pos_h/w``)."""
    blocks = {
        f"blocks.{i}.{part}.{kind}"
        for i in range(depth)
        for part in BLOCK_PARTS
        for kind in ("weight", "bias")
    }
    return blocks | {"patch_embed.proj.weight", "patch_embed.proj.bias", "pos_embed"}


def mmseg_mae_keys(depth: int) -> set[str]:
    """The parameters of mmsegmentation's ``MAE`` backbone that a converted MAE checkpoint fills."""
    keys = {
        "backbone.cls_token",
        "backbone.pos_embed",
        "backbone.patch_embed.projection.weight",
        "backbone.patch_embed.projection.bias",
    }
    for i in range(depth):
        layer = f"backbone.layers.{i}"
        keys |= {f"{layer}.attn.qkv.weight", f"{layer}.attn.proj.weight", f"{layer}.attn.proj.bias"}
        for part in ("ln1", "ln2", "ffn.layers.0.0", "ffn.layers.1"):
            keys |= {f"{layer}.{part}.weight", f"{layer}.{part}.bias"}
    return keys


def beit2mmseg(keys: set[str]) -> set[str]:
    """mmsegmentation's ``beit2mmseg.py`` renaming (the documented way to load MAE files there)."""
    out = set()
    for key in keys:
        if key.startswith(("fc_norm", "head")):
            continue
        new = key
        if key.startswith("blocks"):
            new = key.replace("blocks", "layers")
            if "norm" in new:
                new = new.replace("norm", "ln")
            elif "mlp.fc1" in new:
                new = new.replace("mlp.fc1", "ffn.layers.0.0")
            elif "mlp.fc2" in new:
                new = new.replace("mlp.fc2", "ffn.layers.1")
        elif key.startswith("patch_embed"):
            new = key.replace("patch_embed.proj", "patch_embed.projection")
        out.add("backbone." + new)
    return out


def test_mae_export_has_the_keys_vitdet_and_mmseg_load(tmp_path, pretrained):
    weights, meta = export_encoder(pretrained, tmp_path / "mae", "mae")
    assert (weights, meta) == (tmp_path / "mae" / "model.pth", tmp_path / "mae" / "config.json")
    ckpt = torch.load(weights, map_location="cpu", weights_only=True)
    assert set(ckpt) == {"model"}  # MAE's wrapper, which both loaders unwrap
    state = ckpt["model"]
    args = json.loads(meta.read_text())["model_args"]
    depth, grid = args["depth"], args["img_size"] // args["patch_size"]
    assert set(state) == mae_keys(depth)
    assert vitdet_keys(depth) <= set(state)
    assert state["pos_embed"].shape == (
        1,
        1 + grid * grid,
        args["embed_dim"],
    )  # with the cls row, square grid
    assert torch.equal(state["pos_embed"][0, 0], torch.zeros(args["embed_dim"]))  # MAE's zero cls position
    converted = beit2mmseg(set(state))
    assert mmseg_mae_keys(depth) <= converted
    assert converted - mmseg_mae_keys(depth) == {
        f"backbone.layers.{i}.attn.qkv.bias" for i in range(depth)
    } | {"backbone.norm.weight", "backbone.norm.bias"}
    # The same tensors as the timm export, and they load strictly into a plain timm ViT.
    safetensors, _ = export_encoder(pretrained, tmp_path / "timm")
    reference = load_file(str(safetensors))
    assert set(reference) == set(state) and all(torch.equal(state[k], reference[k]) for k in reference)
    vit = VisionTransformer(**args, num_classes=0).eval()
    vit.load_state_dict(state, strict=True)
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = load_encoder(pretrained).eval().forward_features(images)
        assert torch.equal(vit.forward_features(images), expected)
        for source in (weights, weights.parent):  # semaim reads it back: the file, or its folder
            assert torch.equal(load_encoder(source).eval().forward_features(images), expected)


def test_export_command_formats_and_default_names(tmp_path, pretrained, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["export", "--checkpoint", str(pretrained)]) == 0
    assert sorted(p.name for p in (tmp_path / "encoder").iterdir()) == ["config.json", "model.safetensors"]
    assert "wrote encoder/model.safetensors and encoder/config.json" in capsys.readouterr().out
    assert main(["export", "--checkpoint", str(pretrained), "--format", "mae", "--out", "mae"]) == 0
    assert sorted(p.name for p in (tmp_path / "mae").iterdir()) == ["config.json", "model.pth"]
    assert json.loads((tmp_path / "mae" / "config.json").read_text())["semaim"]["format"] == "mae"
    assert main(["export", "--checkpoint", str(pretrained), "--format", "safetensors", "--out", "old"]) == 0
    err = capsys.readouterr().err
    assert (
        err.count("\n") == 1
        and "semaim: warning: --format safetensors is deprecated and goes in semaim 0.3" in err
    )
    assert (tmp_path / "old" / "model.safetensors").is_file()


@pytest.mark.parametrize(
    "extra, names",
    [
        (["--format", "onnx", "--out", "enc"], "--format"),
        (["--format", "mae", "--out", "encoder.pth"], "--out"),  # an existing file
        (["--format", "mae", "--out", "new.pth"], "--out"),  # a file name: --out is a folder
        (["--out", "encoder.safetensors"], "--out"),
        (["--out", "encoder.json", "--force"], "--out"),
    ],
)
def test_bad_export_exits_2_and_overwrites_nothing(tmp_path, pretrained, monkeypatch, capsys, extra, names):
    monkeypatch.chdir(tmp_path)
    kept = ("encoder.pth", "encoder.safetensors", "encoder.json")
    for name in kept:
        (tmp_path / name).write_text("keep me")
    assert main(["export", "--checkpoint", str(pretrained), *extra]) == 2
    assert names in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(kept)  # nothing new, not even a folder
    assert all((tmp_path / n).read_text() == "keep me" for n in kept)
    missing = ["export", "--checkpoint", str(tmp_path / "missing.pt"), "--format", "mae", "--out", "enc"]
    assert main(missing) == 2 and "missing.pt" in capsys.readouterr().err
    assert not (tmp_path / "enc").exists()
