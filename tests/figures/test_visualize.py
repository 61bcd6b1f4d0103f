"""Figures: files decode as images of the expected size; the semantic map starts at the semantic centre."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from semaim import orders
from semaim.cli import main
from semaim.encoder import build_vit
from semaim.figures.order_maps import encoder_maps, order_ranks
from tests.conftest import make_fmnist_dir, make_image_folder

ROWS, COLUMNS, DPI = 3, 9, 110  # image + 6 orders + attention + similarity


def tiny_vit():
    torch.manual_seed(0)
    return build_vit(
        {"img_size": 32, "patch_size": 4, "in_chans": 3, "embed_dim": 32, "depth": 2, "num_heads": 2}
    )


def test_semantic_order_map_starts_at_the_semantic_centre():
    vit = tiny_vit()
    similarity, attention = encoder_maps(vit, torch.randn(4, 3, 32, 32))
    assert similarity.shape == attention.shape == (4, 64)
    torch.testing.assert_close(attention.sum(-1), torch.ones(4))
    ranks = order_ranks("semantic", similarity, (8, 8))
    centre = orders.semantic_center(similarity, (8, 8))
    for b in range(4):
        assert ranks[b, centre[b, 0], centre[b, 1]] == 0
        assert sorted(ranks[b].flatten().tolist()) == list(range(64))
    assert (order_ranks("raster", similarity, (8, 8))[0].flatten() == torch.arange(64)).all()


def test_cls_attention_is_the_one_the_last_block_computes():
    vit = tiny_vit().eval()
    x = torch.randn(2, 3, 32, 32)
    _, attention = encoder_maps(vit, x)
    last = vit.blocks[-1].attn
    last.fused_attn = False  # timm's explicit path passes the attention matrix through attn_drop
    seen = {}
    last.attn_drop.register_forward_hook(lambda m, a, out: seen.setdefault("attn", a[0]))
    vit.forward_features(x)
    expected = seen["attn"][:, :, 0, 1:].mean(1)
    torch.testing.assert_close(attention, expected / expected.sum(-1, keepdim=True))


def direct_maps(vit, x):
    """(S, A) written out: the blocks by hand, the last block's attention from its q and k."""
    tokens = vit.norm_pre(vit._pos_embed(vit.patch_embed(x)))
    for block in vit.blocks[:-1]:
        tokens = block(tokens)
    last = vit.blocks[-1]
    b, t, d = tokens.shape
    heads = last.attn.num_heads
    q, k, _ = last.attn.qkv(last.norm1(tokens)).reshape(b, t, 3, heads, d // heads).permute(2, 0, 3, 1, 4)
    weights = (q[:, :, :1] @ k.transpose(-2, -1) * last.attn.scale).softmax(-1)[:, :, 0, 1:].mean(1)
    out = vit.norm(last(tokens))
    return orders.similarity_map(out), weights / weights.sum(-1, keepdim=True)


@torch.no_grad()
def test_encoder_maps_match_a_direct_computation():
    vit = tiny_vit().eval()
    assert len(vit.blocks) == 2 and vit.embed_dim == 32 and vit.num_prefix_tokens == 1
    fused = vit.blocks[-1].attn.fused_attn
    x = torch.randn(3, 3, 32, 32)
    similarity, attention = encoder_maps(vit, x)
    expected_s, expected_a = direct_maps(vit, x)
    torch.testing.assert_close(similarity, expected_s, rtol=0, atol=1e-6)
    torch.testing.assert_close(attention, expected_a, rtol=0, atol=1e-6)
    assert vit.blocks[-1].attn.fused_attn == fused  # the model is left as it was


def test_visualize_writes_a_png_and_pdf_of_the_expected_size(tmp_path, capsys):
    folder = tmp_path / "imgs"
    make_image_folder(folder, classes=("x",), per_class=ROWS, nested=False)
    (folder / "notes.txt").write_text("ignored")
    out = tmp_path / "fig.png"
    assert main(["visualize", str(folder), "--out", str(out), "--pdf"]) == 0
    with Image.open(out) as img:
        width, height = img.size
    assert (width, height) == (int(1.55 * COLUMNS * DPI), int((1.55 * ROWS + 0.9) * DPI))
    assert out.with_suffix(".pdf").read_bytes()[:4] == b"%PDF"


def test_visualize_from_a_dataset_and_from_samples(tmp_path):
    (tmp_path / "fm").mkdir()
    make_fmnist_dir(tmp_path / "fm")
    out = tmp_path / "fm.png"
    assert (
        main(["visualize", "--data", f"fashion-mnist:{tmp_path / 'fm'}", "--count", "2", "--out", str(out)])
        == 0
    )
    with Image.open(out) as figure:
        assert figure.size[1] == int((1.55 * 2 + 0.9) * DPI)
    assert main(["visualize", "--samples", "chelsea", "--out", str(tmp_path / "s.png")]) == 0


def test_visualize_bad_input(tmp_path, capsys):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"nope")
    assert main(["visualize", str(bad), "--out", str(tmp_path / "f.png")]) == 2
    assert "broken.png" in capsys.readouterr().err
    assert main(["visualize", str(tmp_path / "missing.jpg")]) == 2
    assert "image not found" in capsys.readouterr().err
    assert main(["visualize", "--samples", "--checkpoint", str(tmp_path / "none.pt")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
    assert main(["visualize", "--samples", "--data", "fashion-mnist"]) == 2
    assert "exactly one of" in capsys.readouterr().err
    assert not (tmp_path / "f.png").exists()


def test_plot_metrics_overlays_runs(tmp_path, capsys):
    runs = []
    for name, scale in (("a", 1.0), ("b", 0.5)):
        run = tmp_path / name
        run.mkdir()
        lines = [{"step": s, "loss": scale / s, "lr": 1e-3, "images_per_s": 100.0 + s} for s in range(1, 40)]
        (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
        runs.append(str(run))
    out = tmp_path / "curves.png"
    assert main(["plot-metrics", *runs, "--out", str(out)]) == 0
    with Image.open(out) as figure:
        assert figure.size == (13 * DPI, int(3.6 * DPI))
    assert main(["plot-metrics", str(tmp_path / "nothing"), "--out", str(tmp_path / "none.png")]) == 2
    assert "no metrics.jsonl" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["astronaut", "coffee"])
def test_samples_load_offline(name):
    from semaim.figures.order_maps import sample_images

    (img,) = sample_images([name])
    assert img.mode == "RGB" and min(img.size) > 100
