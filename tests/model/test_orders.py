"""Orders (Eq. 2-6): similarity map, semantic centre, centerness of every kind."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from semaim import ORDERS, orders


def blob_map(grid, centers, spike=None, spike_value=1.0, blob_value=0.9, background=0.01):
    """(h, w) map: 3x3 blobs of `blob_value` (peak +0.05) at `centers`, optionally a one-cell spike."""
    h, w = grid
    s = torch.full((h, w), background)
    for cy, cx in centers:
        s[max(cy - 1, 0) : cy + 2, max(cx - 1, 0) : cx + 2] = blob_value
        s[cy, cx] = blob_value + 0.05
    if spike is not None:
        s[spike] = spike_value
    return s


def test_similarity_map_is_softmax_of_cosine_to_cls():
    tokens = torch.randn(3, 1 + 20, 16)
    s = orders.similarity_map(tokens)
    assert s.shape == (3, 20)
    torch.testing.assert_close(s.sum(-1), torch.ones(3))
    cos = F.cosine_similarity(tokens[:, :1], tokens[:, 1:], dim=-1)
    torch.testing.assert_close(s, cos.softmax(-1))
    # A patch identical to (a positive multiple of) cls is the most similar one.
    tokens[1, 1 + 7] = 3.0 * tokens[1, 0]
    assert orders.similarity_map(tokens)[1].argmax() == 7


def test_similarity_map_rejects_bad_shape():
    with pytest.raises(ValueError, match="tokens"):
        orders.similarity_map(torch.randn(4, 16))


def test_semantic_center_prefers_smoothed_blob_over_isolated_spike():
    grid = (8, 8)
    s = blob_map(grid, centers=[(5, 5)], spike=(1, 1), spike_value=1.0, blob_value=0.9)
    assert s.flatten().argmax() == 1 * 8 + 1  # the raw argmax is the spike ...
    center = orders.semantic_center(s[None], grid)
    assert center.tolist() == [[5, 5]]  # ... the 3x3-filtered argmax is the blob (Eq. 3)


def test_smoothing_averages_borders_over_existing_cells():
    s = torch.zeros(1, 4, 4)
    s[0, 0, 0] = 4.0
    smoothed = orders.smooth_map(s, (4, 4))
    assert smoothed[0, 0, 0].item() == pytest.approx(1.0)  # corner: 4 cells exist, not 9
    assert smoothed[0, 1, 1].item() == pytest.approx(4.0 / 9)


def test_semantic_center_is_batched_per_image():
    grid = (6, 9)
    centers = [(2, 2), (3, 6), (2, 4)]
    s = torch.stack([blob_map(grid, [c]) for c in centers])
    assert orders.semantic_center(s, grid).tolist() == [list(c) for c in centers]
    # (B, N) input works the same as (B, h, w).
    assert orders.semantic_center(s.flatten(1), grid).tolist() == [list(c) for c in centers]


@pytest.mark.parametrize("grid", [(4, 4), (6, 6), (8, 8), (14, 14), (5, 9)])
def test_semantic_centerness_grows_with_distance_and_lambda_never_reorders(grid):
    h, w = grid
    g = torch.Generator().manual_seed(1)
    b = 16
    s = torch.rand(b, h * w, generator=g)
    c = orders.centerness("semantic", b, grid, similarity=s, generator=g)
    centre = orders.semantic_center(s, grid).float()
    coords = orders.patch_coordinates(grid)
    dist = (coords[None] - centre[:, None]).pow(2).sum(-1).sqrt()
    noise = c - dist
    assert noise.min() >= 0 and noise.max() <= 0.01 + 1e-6  # Eq. 5 with λ = 0.01
    assert noise.std() > 1e-4  # the noise is really there
    order = c.argsort(dim=1)
    sorted_dist = dist.gather(1, order)
    assert (sorted_dist.diff(dim=1) >= -1e-6).all()  # patches at different distances keep their order
    # The centre itself is predicted first.
    first = order[:, 0]
    assert torch.equal(first, (centre[:, 0] * w + centre[:, 1]).long())


def test_lambda_noise_permutes_patches_at_equal_distance():
    grid = (8, 8)
    s = blob_map(grid, [(4, 4)]).flatten()[None].expand(64, -1)
    g = torch.Generator().manual_seed(0)
    c = orders.centerness("semantic", 64, grid, similarity=s, generator=g)
    # The four neighbours at distance 1 come right after the centre, in varying order.
    seconds = set(c.argsort(dim=1)[:, 1].tolist())
    assert seconds == {3 * 8 + 4, 5 * 8 + 4, 4 * 8 + 3, 4 * 8 + 5}


def test_raster_stochastic_similarity_center():
    grid = (5, 7)
    n = 35
    c = orders.centerness("raster", 2, grid)
    assert torch.equal(c.argsort(1), torch.arange(n).expand(2, n))
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    s1 = orders.centerness("stochastic", 4, grid, generator=g1)
    assert torch.equal(s1, orders.centerness("stochastic", 4, grid, generator=g2))
    assert len({tuple(r) for r in s1.argsort(1).tolist()}) == 4  # different permutations per image
    sim = torch.rand(3, n)
    c = orders.centerness("similarity", 3, grid, similarity=sim)
    assert torch.equal(c.argsort(1)[:, 0], sim.argmax(1))  # most similar first
    c = orders.centerness("center", 3, grid)
    assert (c.argsort(1)[:, 0] == 2 * 7 + 3).all()  # odd grid: the exact image centre first
    c = orders.centerness("center", 50, (4, 4))
    assert set(c.argsort(1)[:, 0].tolist()) == {5, 6, 9, 10}  # even grid: one of the 4 central cells


def test_multi_center_finds_two_separated_blobs():
    grid = (14, 14)
    s = torch.stack([blob_map(grid, [(2, 3), (10, 11)]), blob_map(grid, [(11, 2), (3, 9)])])
    peaks = orders.find_peaks(s.flatten(1), grid, k=2, radius=3)
    assert {tuple(p) for p in peaks[0].long().tolist()} == {(2, 3), (10, 11)}
    assert {tuple(p) for p in peaks[1].long().tolist()} == {(11, 2), (3, 9)}
    c = orders.centerness("multi-center", 2, grid, similarity=s, num_centers=2)
    # Both blob centres are at distance 0, so both come before everything else.
    first_two = c.argsort(1)[:, :2]
    assert {int(i) for i in first_two[0]} == {2 * 14 + 3, 10 * 14 + 11}
    assert {int(i) for i in first_two[1]} == {11 * 14 + 2, 3 * 14 + 9}
    # Single centre: multi-center degenerates to the semantic order's distances.
    one = orders.centerness("multi-center", 2, grid, similarity=s, num_centers=1, lam=0)
    sem = orders.centerness("semantic", 2, grid, similarity=s, lam=0)
    torch.testing.assert_close(one, sem)


def test_max_safe_lambda():
    assert orders.max_safe_lambda((14, 14)) == pytest.approx(math.sqrt(338) - math.sqrt(337))
    assert orders.max_safe_lambda((14, 14)) > 0.01  # the paper's 14x14 grid is safe with λ = 0.01
    with pytest.warns(UserWarning, match="reorder"):
        orders.centerness("semantic", 1, (64, 64), similarity=torch.rand(1, 64 * 64))


@pytest.mark.parametrize("kind", ORDERS)
def test_every_kind_has_shape_b_n(kind):
    grid = (6, 4)
    c = orders.centerness(kind, 3, grid, similarity=torch.rand(3, 6, 4))
    assert c.shape == (3, 24) and c.dtype == torch.float32
    assert len(set(c[0].tolist())) == 24 or kind == "raster"  # no ties


def test_bad_arguments_name_the_problem():
    with pytest.raises(ValueError, match="kind.*'spiral'"):
        orders.centerness("spiral", 2, 4)
    with pytest.raises(ValueError, match="similarity.*None"):
        orders.centerness("semantic", 2, 4)
    with pytest.raises(ValueError, match=r"similarity: expected \(2, 16\)"):
        orders.centerness("semantic", 2, 4, similarity=torch.rand(2, 15))


def test_a_registered_order_reaches_the_config_the_model_and_the_cli(monkeypatch):
    """A new order is one function and one registry line: config validation, the model and ``--order``
    read the registry, nothing else lists the orders."""
    from semaim import ModelConfig, SemAIM
    from semaim.cli import build_parser
    from semaim.errors import ConfigError

    def reverse_raster(x: orders.OrderInputs) -> torch.Tensor:
        return -orders.raster(x)

    shape = dict(img_size=16, patch_size=4, embed_dim=16, depth=2, num_heads=2, decoder_depth=2)
    with pytest.raises(ConfigError, match="order"):
        ModelConfig(**shape, order="reverse").validate()
    monkeypatch.setitem(orders.ORDERS, "reverse", orders.Order(reverse_raster, needs_map=False))
    model = SemAIM(ModelConfig(**shape, order="reverse").validate())
    out = model(torch.rand(2, 3, 16, 16))
    assert torch.isfinite(out.loss)
    first = orders.centerness("reverse", 1, 4).argsort(dim=1)[0, 0]
    assert int(first) == 15  # the last patch in raster order is predicted first
    args = build_parser().parse_args(["pretrain", "--order", "reverse"])
    assert args.order == "reverse"
