"""The model: fast causal path == explicit-mask oracle, no leakage, wiring, timm format, bad input."""

from __future__ import annotations

import pytest
import timm
import torch
from timm.models.vision_transformer import VisionTransformer

from semaim import ORDERS, ModelConfig, SemAIM
from semaim.encoder import model_args
from tests.conftest import TINY, tiny_model

# (img_size, patch_size) -> grid: 4x4, 6x6, 8x8, 14x14, and a non-square 6x8.
GRIDS = {"4x4": (16, 4), "6x6": (24, 4), "8x8": (32, 4), "14x14": (56, 4), "6x8": ((24, 32), 4)}


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("grid", list(GRIDS))
def test_fast_path_equals_explicit_mask_oracle(order, grid):
    img_size, patch = GRIDS[grid]
    model = tiny_model(img_size=img_size, patch_size=patch, order=order, decoder_depth=1)
    images = torch.randn(3, 3, *((img_size, img_size) if isinstance(img_size, int) else img_size))
    c = model.compute_centerness(images, generator=torch.Generator().manual_seed(0))
    fast = model(images, centerness=c)
    ref = model.forward_reference(images, c)
    assert fast.pred.shape == (3, model.num_patches, 4 * 4 * 3)
    assert (fast.pred - ref.pred).abs().max() < 1e-4
    assert torch.equal(fast.order, ref.order)
    torch.testing.assert_close(fast.loss, ref.loss, atol=1e-5, rtol=1e-5)


def test_fast_and_oracle_gradients_agree():
    model = tiny_model(depth=4, decoder_depth=2, order="semantic")
    images = torch.randn(2, 3, 32, 32)
    c = model.compute_centerness(images)
    grads = []
    for forward in (lambda: model(images, c), lambda: model.forward_reference(images, c)):
        model.zero_grad()
        forward().loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 20
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize("path", ["fast", "reference"])
def test_no_prediction_depends_on_its_own_or_a_later_patch(path):
    """Perturb the patch at order position k: predictions at positions <= k must not move."""
    model = tiny_model(img_size=24, patch_size=4, depth=4, decoder_depth=2, order="stochastic")
    model.eval()
    images = torch.randn(2, 3, 24, 24)
    c = model.compute_centerness(images)
    run = model if path == "fast" else model.forward_reference
    base = run(images, c)
    order = base.order
    n, p, w = model.num_patches, model.patch_size, model.grid[1]
    for k in (0, 5, n // 2, n - 2):
        perturbed = images.clone()
        for b in range(2):
            idx = int(order[b, k])
            r, col = divmod(idx, w)
            perturbed[b, :, r * p : (r + 1) * p, col * p : (col + 1) * p] += 3 * torch.randn(3, p, p)
        out = run(perturbed, c)
        pred_in_order = out.pred.gather(1, order[..., None].expand_as(out.pred))
        base_in_order = base.pred.gather(1, order[..., None].expand_as(base.pred))
        change = (pred_in_order - base_in_order).abs().amax(dim=-1)  # (B, N) by order position
        assert change[:, : k + 1].max() < 1e-6, f"position <= {k} saw the perturbed patch"
        assert change[:, k + 1 :].max() > 1e-3, f"no later position used patch at position {k}"


def test_decoder_blocks_read_uniformly_spaced_encoder_blocks():
    model = tiny_model(depth=4, decoder_depth=2)
    assert model.decoder_sources == {1: 0, 3: 1}
    enc_out, dec_in = {}, {}
    for i, block in enumerate(model.blocks):
        block.register_forward_hook(lambda m, a, out, i=i: enc_out.__setitem__(i, out))
    for m, block in enumerate(model.decoder_blocks):
        block.register_forward_hook(lambda mod, a, out, m=m: dec_in.__setitem__(m, a[1]))
    model(torch.randn(2, 3, 32, 32))
    # Fast path: decoder block m reads cls + the first N-1 content tokens of encoder block (m+1)*L/L'-1.
    assert torch.equal(dec_in[0], enc_out[1][:, :-1])
    assert torch.equal(dec_in[1], enc_out[3][:, :-1])


def test_order_pass_is_no_grad_eval_and_matches_the_orders_module():
    from semaim import orders

    model = tiny_model(order="semantic")
    model.train()
    images = torch.randn(4, 3, 32, 32)
    similarity = model.order_map(images)
    assert model.training  # restored
    assert not similarity.requires_grad
    torch.testing.assert_close(similarity, orders.similarity_map(model.forward_features(images)))
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    expected = orders.centerness("semantic", 4, (8, 8), similarity=similarity, generator=g1)
    torch.testing.assert_close(model.compute_centerness(images, generator=g2), expected)
    out = model(images)  # centerness=None: computed internally
    assert out.centerness.shape == (4, 64) and not out.centerness.requires_grad


def test_encoder_loads_into_timm_strict_and_gives_the_same_features():
    model = tiny_model(depth=4, decoder_depth=2, embed_dim=48, num_heads=3)
    state = model.encoder_state_dict()
    assert not any(k.startswith("decoder") for k in state)
    vit = VisionTransformer(img_size=32, patch_size=4, embed_dim=48, depth=4, num_heads=3, num_classes=0)
    vit.load_state_dict(state, strict=True)
    vit.eval()
    model.eval()
    images = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(
        vit.forward_features(images), model.forward_features(images), atol=1e-5, rtol=0
    )
    vit2 = timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, **model_args(model.config), num_classes=0
    )
    vit2.load_state_dict(state, strict=True)


def test_state_dict_round_trip_rebuilds_the_model_from_its_config():
    model = tiny_model(order="multi-center", blur_sigma=1.0)
    clone = SemAIM(ModelConfig.from_dict(model.config.to_dict()))
    clone.load_state_dict(model.state_dict(), strict=True)
    images = torch.randn(2, 3, 32, 32)
    c = model.compute_centerness(images)
    torch.testing.assert_close(clone(images, c).pred, model(images, c).pred)


def test_overfits_one_batch():
    model = tiny_model(depth=2, decoder_depth=2, embed_dim=64, num_heads=4, order="semantic")
    # Smooth images, so that a patch is predictable from the patches before it.
    images = torch.nn.functional.interpolate(torch.randn(8, 3, 4, 4), size=32, mode="bilinear")
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(40):
        loss = model(images).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]


def test_bf16_autocast_runs_and_agrees_with_fp32():
    model = tiny_model(order="semantic")
    images = torch.randn(4, 3, 32, 32)
    c = model.compute_centerness(images)
    fp32 = model(images, c).loss
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf16 = model(images, c).loss
    assert bf16.dtype == torch.float32 and torch.isfinite(bf16)
    assert abs(bf16.item() - fp32.item()) < 0.05 * fp32.item()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(img_size=30), "patch_size: 4 must divide img_size"),
        (dict(order="spiral"), "order: expected one of"),
        (dict(target="depth"), "target: expected one of"),
        (dict(decoder_depth=3, depth=4), "decoder_depth: must divide depth 4"),
        (dict(num_heads=3), "num_heads: 3 must divide embed_dim 32"),
        (dict(target="features"), "teacher_arch/teacher_path"),
        (dict(decoder_widht=2), "unknown field"),
    ],
)
def test_bad_config_is_a_value_error_naming_the_argument(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SemAIM(**{**TINY, **kwargs})


def test_bad_inputs_name_what_was_expected():
    model = tiny_model()
    with pytest.raises(ValueError, match=r"images: expected \(B, 3, 32, 32\), got \(2, 3, 64, 64\)"):
        model(torch.randn(2, 3, 64, 64))
    with pytest.raises(ValueError, match=r"centerness: expected \(2, 64\).*got \(2, 63\)"):
        model(torch.randn(2, 3, 32, 32), centerness=torch.rand(2, 63))


def test_ties_in_a_hand_made_centerness_break_by_raster_index_in_both_paths():
    """λ = 0 and integer distances tie many patches: the stable sort (fast path) and the ranks of the
    masks (oracle) must break them the same way, by raster index (docs/design.md §2)."""
    model = tiny_model(decoder_depth=1)
    images = torch.randn(2, 3, 32, 32)
    c = torch.randint(0, 4, (2, model.num_patches)).float()  # 64 patches, 4 values: ties everywhere
    fast, ref = model(images, centerness=c), model.forward_reference(images, c)
    assert torch.equal(fast.order, ref.order)
    first_tied = (c[0] == c[0].min()).nonzero().flatten()
    assert fast.order[0, : len(first_tied)].tolist() == first_tied.tolist()  # raster order within a tie
    assert (fast.pred - ref.pred).abs().max() < 1e-4
