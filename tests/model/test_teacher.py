"""Teacher-feature targets: a timm ViT loaded from a local file gives the targets and the order."""

from __future__ import annotations

import pytest
import timm
import torch
from safetensors.torch import save_file

from semaim import SemAIM, orders
from semaim.errors import CheckpointError
from semaim.model.targets import feature_loss, resample_token_grid
from semaim.model.teacher import load_teacher
from semaim.weights import read_state_dict
from tests.conftest import TINY

ARCH = "vit_tiny_patch16_224"


@pytest.fixture(scope="module")
def teacher_file(tmp_path_factory):
    torch.manual_seed(1)
    vit = timm.create_model(ARCH, pretrained=False, num_classes=10, img_size=64)
    path = tmp_path_factory.mktemp("teacher") / "teacher.pth"
    # Wrapped the way training scripts save, with a DDP prefix and a classifier head.
    torch.save({"model": {f"module.{k}": v for k, v in vit.state_dict().items()}, "epoch": 3}, path)
    vit.reset_classifier(0)
    return path, vit.eval()


def test_teacher_features_are_the_targets_and_give_the_order(teacher_file):
    path, vit = teacher_file
    model = SemAIM(**TINY, target="features", teacher_arch=ARCH, teacher_path=str(path), teacher_img_size=64)
    assert model.target_dim == 192
    images = torch.randn(2, 3, 32, 32)
    # Teacher: 64 px input, 4x4 grid; student: 8x8 grid -> the token map is resampled.
    tokens = vit.forward_features(torch.nn.functional.interpolate(images, size=64, mode="bicubic"))
    patches = resample_token_grid(tokens[:, 1:], (4, 4), (8, 8))
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    out = model(images, generator=g1)
    torch.testing.assert_close(out.target, patches, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.loss, feature_loss(out.pred, patches))
    expected_c = orders.centerness(
        "semantic",
        2,
        (8, 8),
        similarity=orders.similarity_map(torch.cat([tokens[:, :1], patches], 1)),
        generator=g2,
    )
    torch.testing.assert_close(out.centerness, expected_c, atol=1e-5, rtol=0)
    out.loss.backward()
    assert all(p.grad is None for p in model.teacher.parameters())  # frozen
    model.train()
    assert not model.teacher.training  # stays in eval mode


def test_teacher_is_left_out_of_checkpoints(teacher_file):
    path, _ = teacher_file
    kwargs = dict(**TINY, target="features", teacher_arch=ARCH, teacher_path=str(path), teacher_img_size=64)
    model = SemAIM(**kwargs)
    state = model.state_dict()
    assert not any(k.startswith("teacher") for k in state)
    SemAIM(**kwargs).load_state_dict(state, strict=True)


def test_safetensors_teacher(tmp_path, teacher_file):
    _, vit = teacher_file
    path = tmp_path / "t.safetensors"
    save_file({k: v.contiguous() for k, v in vit.state_dict().items()}, str(path))
    assert read_state_dict(path).keys() == vit.state_dict().keys()
    loaded = load_teacher(ARCH, path, img_size=64)
    torch.testing.assert_close(loaded.pos_embed, vit.pos_embed)


def test_bad_teacher_files(tmp_path, teacher_file):
    path, _ = teacher_file
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        load_teacher(ARCH, tmp_path / "nope.pth")
    with pytest.raises(ValueError, match="teacher_arch .vit_small_patch16_224.. does not fit"):
        load_teacher("vit_small_patch16_224", path, img_size=64)
    with pytest.raises(ValueError, match="not a timm model name"):
        load_teacher("vit_imaginary", path)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.pth"):
        load_teacher(ARCH, junk)


def test_dino_teacher_loads_exactly_and_another_resolution_is_an_error(tmp_path, teacher_file):
    # The two cases timm's own file loader gets wrong: it would leave this file's weights random
    # (non-strict once the head is dropped) and resample the 4x4 pos_embed to 224 px without a word.
    _, vit = teacher_file
    path = tmp_path / "dino.pth"
    torch.save({"teacher": {f"backbone.{k}": v for k, v in vit.state_dict().items()}, "epoch": 1}, path)
    loaded = load_teacher(ARCH, path, img_size=64)
    for key, value in vit.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value, rtol=0, atol=0)
    with pytest.raises(CheckpointError, match=r"pos_embed: file \(1, 17, 192\), model \(1, 197, 192\)"):
        load_teacher(ARCH, path)
