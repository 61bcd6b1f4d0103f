"""Targets and loss (Eq. 12): patchify, blur, norm-pix, feature loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from semaim.model import targets
from tests.conftest import tiny_model


def test_patchify_round_trip_and_layout():
    images = torch.randn(2, 3, 24, 32)
    patches = targets.patchify(images, 8)
    assert patches.shape == (2, 12, 8 * 8 * 3)
    # Patch (row 1, col 2) in raster order is index 1 * 4 + 2, values ordered (row, col, channel).
    expected = images[0, :, 8:16, 16:24].permute(1, 2, 0).reshape(-1)
    assert torch.equal(patches[0, 6], expected)
    assert torch.equal(targets.unpatchify(patches, 8, (3, 4), 3), images)


def test_gaussian_blur_kernel_and_effect():
    k = targets.gaussian_kernel(9, 1.0)
    assert k.shape == (9, 9) and abs(k.sum().item() - 1) < 1e-6 and k.argmax() == 40
    images = torch.zeros(1, 3, 17, 17)
    images[0, :, 8, 8] = 1.0  # an impulse is blurred into the kernel itself
    blurred = targets.gaussian_blur(images, 1.0, 9)
    torch.testing.assert_close(blurred[0, 1, 4:13, 4:13], k)


def test_pixel_targets_norm_pix_and_blur():
    images = torch.randn(2, 3, 32, 32)
    t = targets.pixel_targets(images, 4, norm_pix=True)
    assert t.shape == (2, 64, 48)
    torch.testing.assert_close(t.mean(-1), torch.zeros(2, 64), atol=1e-5, rtol=0)
    torch.testing.assert_close(t.var(-1), torch.ones(2, 64), atol=1e-3, rtol=0)
    raw = targets.pixel_targets(images, 4, norm_pix=False)
    assert torch.equal(raw, targets.patchify(images, 4))
    blurred = targets.pixel_targets(images, 4, norm_pix=False, blur_sigma=1.0)
    assert blurred.std() < 0.6 * raw.std()  # blur removes most of white noise's variance


def test_losses():
    pred, target = torch.randn(2, 5, 7), torch.randn(2, 5, 7)
    torch.testing.assert_close(targets.pixel_loss(pred, target), ((pred - target) ** 2).mean())
    p, t = F.normalize(pred, dim=-1), F.normalize(target, dim=-1)
    torch.testing.assert_close(targets.feature_loss(pred, target), ((p - t) ** 2).sum(-1).mean())
    assert targets.feature_loss(3 * target, target) < 1e-6  # scale-free


def test_model_uses_blurred_normalised_pixel_targets():
    model = tiny_model(blur_sigma=1.0, norm_pix=True)
    images = torch.randn(2, 3, 32, 32)
    out = model(images)
    torch.testing.assert_close(out.target, targets.pixel_targets(images, 4, True, 1.0, 9))
    torch.testing.assert_close(out.loss, targets.pixel_loss(out.pred, out.target))


def test_resample_token_grid():
    tokens = torch.arange(16.0).reshape(1, 16, 1).expand(1, 16, 3)
    assert targets.resample_token_grid(tokens, (4, 4), (4, 4)) is tokens
    out = targets.resample_token_grid(tokens, (4, 4), (2, 2))
    assert out.shape == (1, 4, 3)
    assert out[0, 0, 0] < out[0, 1, 0] < out[0, 3, 0]  # the map's gradient survives


def test_pixel_targets_are_computed_in_fp32_under_autocast():
    """The targets a model is graded against do not depend on the compute precision of its forward."""
    model = tiny_model(blur_sigma=1.0)
    images = torch.randn(2, 3, 32, 32)
    exact = model.targets(images)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_autocast = model.targets(images)
        bf16_blur = targets.pixel_targets(images, 4, True, 1.0, 9)  # what autocast alone would give
    assert under_autocast.dtype == torch.float32
    torch.testing.assert_close(under_autocast, exact, rtol=0, atol=0)
    assert (bf16_blur.float() - exact).abs().max() > 1e-3  # the difference the fp32 targets avoid
