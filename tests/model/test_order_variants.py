"""Variants of the semantic order: the official code's centre rule, the cls-attention centre, and the
order taken from an EMA copy or a frozen order-source encoder (targets and gradients untouched)."""

from __future__ import annotations

import hashlib

import pytest
import torch

from semaim import orders
from semaim.cli import main
from semaim.config import PretrainConfig
from semaim.data.sampler import sample_seed
from semaim.encoder import build_vit, load_encoder
from semaim.engine.distributed import DistInfo
from semaim.engine.pretrain import build_state, forward_backward, order_from_source
from semaim.errors import ConfigError
from semaim.model.semaim import ENCODER_KEYS
from semaim.model.targets import pixel_targets
from tests.conftest import TINY_RUN, tiny_model
from tests.model.test_orders import blob_map


def test_official_variant_takes_the_raw_argmax_with_a_small_noise():
    grid = (8, 8)
    s = blob_map(grid, centers=[(5, 5)], spike=(1, 1), spike_value=1.0, blob_value=0.9)[None]
    g = torch.Generator().manual_seed(0)
    paper = orders.centerness("semantic", 1, grid, similarity=s, lam=0.01, generator=g)
    official = orders.centerness(
        "semantic", 1, grid, similarity=s, lam=1e-3, center_filter="none", generator=g
    )
    assert paper.argmin().item() == 5 * 8 + 5  # the paper: the 3x3-filtered peak (the blob)
    assert official.argmin().item() == 1 * 8 + 1  # the official code: the raw argmax (the spike)
    noise = official - orders.distance_to_centers(torch.tensor([[1, 1]]), grid)
    assert noise.min() >= 0 and noise.max() < 1e-3 and noise.max() > 5e-4  # λ·U(0,1) with λ = 1e-3
    assert orders.smooth_map(s, grid, "none").equal(s)


def test_unknown_center_filter_and_map_are_config_errors():
    with pytest.raises(ConfigError, match="center_filter"):
        orders.smooth_map(torch.rand(1, 16), (4, 4), "gauss")
    with pytest.raises(ConfigError, match="center_map"):
        tiny_model(center_map="gradcam")
    with pytest.raises(ConfigError, match="center_map"):  # a teacher orders by its own similarity map
        tiny_model(
            center_map="attention",
            target="features",
            teacher_arch="vit_tiny_patch16_224",
            teacher_path="t.pth",
        )


@torch.no_grad()
def test_attention_centre_reads_the_last_blocks_cls_attention():
    model = tiny_model(order="semantic", center_map="attention", depth=2, decoder_depth=1).eval()
    vit = build_vit(
        {"img_size": 32, "patch_size": 4, "in_chans": 3, "embed_dim": 32, "depth": 2, "num_heads": 2}
    )
    vit.load_state_dict(model.encoder_state_dict(), strict=True)
    vit.eval()
    images = torch.randn(3, 3, 32, 32)
    attention = model.order_map(images)
    # The same weights as timm computes them on its explicit path (softmax before attn_drop).
    last = vit.blocks[-1].attn
    last.fused_attn, seen = False, {}
    last.attn_drop.register_forward_hook(lambda m, a, out: seen.setdefault("attn", a[0]))
    vit.forward_features(images)
    expected = seen["attn"][:, :, 0, 1:].mean(1)
    torch.testing.assert_close(attention, expected / expected.sum(-1, keepdim=True))
    similarity = orders.encoder_map(model, images, "similarity")
    assert not torch.allclose(attention, similarity)
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    expected_c = orders.centerness("semantic", 3, (8, 8), similarity=attention, generator=g1)
    torch.testing.assert_close(model.compute_centerness(images, g2), expected_c)


@torch.no_grad()
def test_order_maps_stay_fp32_under_bf16_autocast():
    """bf16 keeps 8 bits: the ~1/N values of a map would tie, and argmax would favour the first patch."""
    tokens = torch.randn(2, 17, 32)
    model = tiny_model(order="semantic", center_map="attention", depth=2, decoder_depth=1).eval()
    images = torch.randn(2, 3, 32, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        similarity, attention = orders.similarity_map(tokens), model.order_map(images)
    assert similarity.dtype == attention.dtype == torch.float32
    assert similarity.equal(orders.similarity_map(tokens))


def test_decoder_depth_ablation_starts_from_the_same_encoder():
    def initial(decoder_depth, init_depth=None):
        model = {
            "img_size": 32,
            "patch_size": 8,
            "embed_dim": 32,
            "depth": 2,
            "num_heads": 2,
            "decoder_depth": decoder_depth,
        }
        train = {"seed": 5, "device": "cpu", "encoder_init_depth": init_depth}
        cfg = PretrainConfig.from_dict({"model": model, "train": train}).validate()
        return build_state(cfg, torch.device("cpu"), DistInfo()).model.state_dict()

    full, unpaired, paired = initial(2), initial(1), initial(1, init_depth=2)
    encoder = [k for k in full if k.split(".")[0] in ENCODER_KEYS]
    assert any(not full[k].equal(unpaired[k]) for k in encoder)  # the decoder's draws move the encoder's init
    assert all(full[k].equal(paired[k]) for k in encoder)
    assert "decoder_blocks.1.attn.q.weight" in full and "decoder_blocks.1.attn.q.weight" not in paired
    assert all(paired[k].equal(unpaired[k]) for k in paired if k.split(".")[0] not in ENCODER_KEYS)


def pretrain_args(out, *extra):
    return [
        "pretrain",
        "--out",
        str(out),
        "--limit",
        "16",
        "--batch-size",
        "8",
        "--epochs",
        "1",
        *TINY_RUN,
        *extra,
    ]


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A pretrained 4x4-grid checkpoint (TINY_RUN: 32 px, patch 8) to take the order from."""
    out = tmp_path_factory.mktemp("source") / "run"
    assert main(pretrain_args(out, "--set", "train.seed=7")) == 0
    return out / "checkpoint-last.pt"


def test_order_source_gives_the_order_and_nothing_else(tmp_path, source):
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    assert main(pretrain_args(tmp_path / "run", "--set", f"train.order_source={source}")) == 0
    assert hashlib.sha256(source.read_bytes()).hexdigest() == digest  # the source is only read
    cfg = PretrainConfig.from_dict(
        {
            "model": {
                "img_size": 32,
                "patch_size": 8,
                "embed_dim": 32,
                "depth": 2,
                "num_heads": 2,
                "decoder_depth": 2,
            },
            "train": {"order_source": str(source), "device": "cpu", "precision": "fp32"},
        }  # as the check below recomputes it
    ).validate()
    state = build_state(cfg, torch.device("cpu"), DistInfo())
    images = torch.randn(4, 3, 32, 32)
    g1, g2, g3 = (torch.Generator().manual_seed(3) for _ in range(3))
    from_source = order_from_source(cfg, state, images, g1)
    source_map = orders.encoder_map(load_encoder(source), images)
    torch.testing.assert_close(from_source, state.model.compute_centerness(images, g2, source_map))
    assert not torch.equal(from_source.argmin(1), state.model.compute_centerness(images, g3).argmin(1))
    # Targets and gradients: the model's own, for the order the source gave; the source gets none.
    forward_backward(
        cfg,
        state,
        micro_batches=[(images, None, None)],
        generator=torch.Generator(),
        device=torch.device("cpu"),
        info=DistInfo(),
        out=tmp_path,
    )
    grads = {n: p.grad.clone() for n, p in state.model.named_parameters() if p.grad is not None}
    assert all(p.grad is None and not p.requires_grad for p in state.order_source.parameters())
    state.model.zero_grad()
    step_generator = torch.Generator().manual_seed(sample_seed(0, 0, 0))  # as forward_backward seeds it
    out = state.model(images, centerness=order_from_source(cfg, state, images, step_generator))
    torch.testing.assert_close(out.target, pixel_targets(images, 8, True, None, 9))
    out.loss.backward()
    for name, p in state.model.named_parameters():
        if name in grads:
            torch.testing.assert_close(p.grad, grads[name])


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--set", "model.center_filter=gauss"], "model.center_filter: expected one of"),
        (["--set", "model.center_map=gradcam"], "model.center_map: expected one of"),
        (["--set", "model.lam=-0.01"], "model.lam"),
        (["--set", "train.order_source=/no/such.pt"], "/no/such.pt"),
        (["--set", "train.ema_decay=0.99", "--set", "train.order_source=x.pt"], "train.order_source"),
        (
            ["--set", "model.order=raster", "--set", "train.order_source=x.pt"],
            "train.order_source: expected unset",
        ),
        (
            ["--set", "train.encoder_init_depth=3"],
            "train.encoder_init_depth: expected a decoder depth that divides",
        ),
        (["--set", "train.encoder_init_depth=0"], "train.encoder_init_depth: expected a positive int"),
    ],
)
def test_bad_order_settings_exit_2_and_write_nothing(tmp_path, capsys, extra, message):
    assert main(pretrain_args(tmp_path / "run", *extra)) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            ["--set", "model.patch_size=4"],
            "a 4x4 patch grid; the model reads 32x32 px, 3 channels, a 8x8 grid",
        ),
        (
            ["--set", "model.img_size=64", "--set", "model.patch_size=16"],
            "is an encoder of 32x32 px",
        ),  # same grid
    ],
)
def test_order_source_for_another_input_exits_2(tmp_path, capsys, source, extra, message):
    assert main(pretrain_args(tmp_path / "run", *extra, "--set", f"train.order_source={source}")) == 2
    err = capsys.readouterr().err
    assert "train.order_source" in err and message in err
    assert not (tmp_path / "run").exists()
