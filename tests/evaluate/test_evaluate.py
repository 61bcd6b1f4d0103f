"""Evaluation: eval-mode features, k-NN against brute force, linear probe, export -> timm, fine-tuning."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from timm.models.vision_transformer import VisionTransformer

from semaim import SemAIM, load_encoder
from semaim.cli import main
from semaim.config import LinProbeConfig
from semaim.encoder import build_vit, random_encoder
from semaim.engine.optim import layer_decay_groups
from semaim.evaluate.features import extract_features, extract_pooled_features
from semaim.evaluate.knn import knn_accuracy, knn_scores
from semaim.evaluate.linear import train_linear_probe
from semaim.export import export_encoder
from tests.conftest import make_image_folder


def test_features_are_extracted_in_eval_mode(fmnist):
    vit = build_vit(
        {"img_size": 32, "patch_size": 8, "in_chans": 3, "embed_dim": 32, "depth": 2, "num_heads": 2},
        drop_path_rate=0.5,
        drop_rate=0.5,
    )
    vit.train()
    a, labels = extract_features(vit, fmnist, "test", (32, 32), batch_size=7, workers=0, progress=False)
    b, _ = extract_features(vit, fmnist, "test", (32, 32), batch_size=5, workers=0, progress=False)
    assert a.shape == (20, 32) and labels.tolist() == [i % 10 for i in range(20)]
    torch.testing.assert_close(a, b)  # dropout / drop path off: the same image gives the same features
    assert vit.training  # the caller's mode is restored
    avg, _ = extract_features(vit, fmnist, "test", (32, 32), pool="avg", workers=0, progress=False)
    assert not torch.allclose(avg, a)


def test_feature_cache(tmp_path, fmnist):
    vit = build_vit(
        {"img_size": 32, "patch_size": 8, "in_chans": 3, "embed_dim": 32, "depth": 2, "num_heads": 2}
    )
    kwargs = dict(workers=0, progress=False, cache=tmp_path, cache_key="k")
    a, _ = extract_features(vit, fmnist, "train", (32, 32), **kwargs)
    assert len(list(tmp_path.glob("features-*.pt"))) == 1
    torch.nn.init.zeros_(vit.blocks[0].mlp.fc2.weight)  # a cached result does not recompute
    b, _ = extract_features(vit, fmnist, "train", (32, 32), **kwargs)
    assert torch.equal(a, b)


def test_one_pass_gives_every_pool_and_fills_their_caches(tmp_path, fmnist):
    vit = build_vit(
        {"img_size": 32, "patch_size": 8, "in_chans": 3, "embed_dim": 32, "depth": 2, "num_heads": 2}
    )
    both = extract_pooled_features(
        vit, fmnist, "test", (32, 32), workers=0, progress=False, limit=12, cache=tmp_path, cache_key="k"
    )
    for pool in ("cls", "avg"):
        single, labels = extract_features(
            vit, fmnist, "test", (32, 32), pool=pool, workers=0, progress=False, limit=12
        )
        assert (
            single.shape == (12, 32)
            and torch.allclose(both[pool][0], single)
            and torch.equal(both[pool][1], labels)
        )
    assert not torch.allclose(both["cls"][0], both["avg"][0])
    torch.nn.init.zeros_(vit.blocks[0].mlp.fc2.weight)  # the per-pool cache files answer the single-pool call
    cached, _ = extract_features(
        vit,
        fmnist,
        "test",
        (32, 32),
        pool="avg",
        workers=0,
        progress=False,
        limit=12,
        cache=tmp_path,
        cache_key="k",
    )
    assert torch.equal(cached, both["avg"][0])


def brute_force_knn(train_f, train_y, test_f, k, num_classes, t):
    scores = []
    for x in test_f:
        sims = [
            (float(torch.dot(x / x.norm(), f / f.norm())), int(y))
            for f, y in zip(train_f, train_y, strict=True)
        ]
        sims.sort(key=lambda s: -s[0])
        votes = [0.0] * num_classes
        for sim, y in sims[:k]:
            votes[y] += float(torch.exp(torch.tensor(sim / t)))
        scores.append(votes)
    return torch.tensor(scores)


def test_knn_agrees_with_brute_force():
    g = torch.Generator().manual_seed(0)
    train_f, test_f = torch.randn(60, 8, generator=g), torch.randn(15, 8, generator=g)
    train_y, test_y = torch.randint(0, 4, (60,), generator=g), torch.randint(0, 4, (15,), generator=g)
    for k in (1, 5, 20):
        fast = knn_scores(train_f, train_y, test_f, k, num_classes=4, temperature=0.07, chunk=4)
        torch.testing.assert_close(
            fast, brute_force_knn(train_f, train_y, test_f, k, 4, 0.07), rtol=1e-4, atol=1e-4
        )
    acc = knn_accuracy(train_f, train_y, test_f, test_y, ks=(5,))
    expected = (
        brute_force_knn(train_f, train_y, test_f, 5, 4, 0.07).argmax(1) == test_y
    ).float().mean() * 100
    assert acc["top1"]["5"] == pytest.approx(expected.item())
    assert acc["top5"]["5"] == 100.0  # 4 classes: always in the top 5


def test_linear_probe_separates_separable_features():
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(5, 16, generator=g) * 3
    y = torch.randint(0, 5, (500,), generator=g)
    x = centers[y] + torch.randn(500, 16, generator=g)
    # LARS steps are trust (0.001) x lr relative to |w|: a large lr stands in for the paper's large batch.
    cfg = LinProbeConfig(epochs=20, batch_size=64, blr=100.0, warmup_epochs=2, optimizer="lars")
    result = train_linear_probe(x[:400], y[:400], x[400:], y[400:], cfg, progress=False)
    assert result["top1"] > 95 and result["history"][-1]["loss"] < result["history"][0]["loss"]
    sgd = train_linear_probe(
        x[:400],
        y[:400],
        x[400:],
        y[400:],
        LinProbeConfig(epochs=20, batch_size=64, optimizer="sgd", warmup_epochs=2),
        progress=False,
    )
    assert sgd["top1"] > 95


def test_export_loads_into_timm_with_identical_features(tmp_path, pretrained):
    weights, meta = export_encoder(pretrained, tmp_path / "enc")
    args = json.loads(meta.read_text())["model_args"]
    assert (
        args.items()
        >= {
            "img_size": 32,
            "patch_size": 8,
            "in_chans": 3,
            "embed_dim": 32,
            "depth": 2,
            "num_heads": 2,
            "mlp_ratio": 4.0,
        }.items()
    )
    vit = VisionTransformer(**args, num_classes=0)  # the README's plain-timm recipe
    vit.load_state_dict(load_file(str(weights)), strict=True)
    ours = load_encoder(weights).eval()
    ckpt = torch.load(pretrained, weights_only=False)
    from semaim.config import PretrainConfig

    model = SemAIM(PretrainConfig.from_dict(ckpt["config"]).model)
    model.load_state_dict(ckpt["model"])
    model.eval()
    vit.eval()
    images = torch.randn(3, 3, 32, 32)
    expected = model.forward_features(images)
    torch.testing.assert_close(vit.forward_features(images), expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(ours.forward_features(images), expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(load_encoder(pretrained).forward_features(images), expected, atol=1e-5, rtol=0)


def test_wrong_kind_of_file_is_a_clear_error(tmp_path, capsys):
    junk = tmp_path / "weights.pt"
    torch.save({"blocks.0.norm1.weight": torch.ones(3)}, junk)
    with pytest.raises(ValueError, match="not a semaim checkpoint"):
        load_encoder(junk)
    other = tmp_path / "other.pt"
    torch.save({"kind": "something-else"}, other)
    with pytest.raises(ValueError, match="expected a semaim pretraining or fine-tuning checkpoint"):
        load_encoder(other)
    lonely = tmp_path / "lonely.safetensors"
    lonely.write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="lonely.json"):
        load_encoder(lonely)
    assert main(["knn", "--checkpoint", str(junk), "--no-progress"]) == 2
    assert "not a semaim checkpoint" in capsys.readouterr().err


def test_random_encoder_is_the_pretraining_starting_point():
    from semaim.presets import load_preset

    cfg = load_preset("cpu-tiny").model
    vit = random_encoder(cfg, seed=3)
    torch.manual_seed(3)
    init = SemAIM(cfg)
    torch.testing.assert_close(vit.pos_embed, init.pos_embed)  # fixed sin-cos, not timm's random init
    torch.testing.assert_close(vit.blocks[0].attn.qkv.weight, init.blocks[0].attn.qkv.weight)


def test_knn_and_linprobe_commands(tmp_path, fmnist, pretrained, capsys):
    out = tmp_path / "knn.json"
    common = ["--data", fmnist, "--workers", "0", "--no-progress"]
    assert main(["knn", "--checkpoint", str(pretrained), *common, "--ks", "3", "10", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert set(result["top1"]) == {"3", "10"} and 0 <= result["top1"]["10"] <= 100
    assert "k-NN" in capsys.readouterr().out
    assert (
        main(["knn", "--pixels", "--model-config", "cpu-tiny", *common, "--out", str(tmp_path / "p.json")])
        == 0
    )
    assert (
        main(
            [
                "linprobe",
                "--random",
                *common,
                "--epochs",
                "2",
                "--batch-size",
                "16",
                "--out",
                str(tmp_path / "lp.json"),
            ]
        )
        == 0
    )
    lp = json.loads((tmp_path / "lp.json").read_text())
    assert 0 <= lp["top1"] <= 100 and len(lp["history"]) == 2


def test_layer_decay_groups():
    vit = build_vit(
        {"img_size": 32, "patch_size": 8, "in_chans": 3, "embed_dim": 32, "depth": 4, "num_heads": 2},
        num_classes=10,
    )
    groups = layer_decay_groups(vit, 0.05, 0.5, 4)
    scale = {id(p): g["lr_scale"] for g in groups for p in g["params"]}
    decay = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
    assert scale[id(vit.head.weight)] == 1.0
    assert scale[id(vit.blocks[3].mlp.fc1.weight)] == 0.5
    assert scale[id(vit.blocks[0].mlp.fc1.weight)] == 0.5**4
    assert scale[id(vit.patch_embed.proj.weight)] == 0.5**5 and scale[id(vit.cls_token)] == 0.5**5
    assert decay[id(vit.cls_token)] == 0.0 and decay[id(vit.blocks[0].norm1.weight)] == 0.0
    assert decay[id(vit.blocks[0].attn.qkv.weight)] == 0.05


def test_finetune_command(tmp_path, pretrained, capsys):
    data = tmp_path / "data"
    make_image_folder(data / "train", classes=("a", "b", "c"), per_class=6)
    make_image_folder(data / "val", classes=("a", "b", "c"), per_class=2, seed=1)
    out = tmp_path / "ft"
    args = [
        "finetune",
        "--checkpoint",
        str(pretrained),
        "--data",
        str(data),
        "--out",
        str(out),
        "--no-progress",
        "--set",
        "budget_steps=0",
        "--set",
        "epochs=2",
        "--set",
        "batch_size=6",
        "--set",
        "workers=0",
        "--set",
        "val_size=3",
    ]
    assert main(args) == 0
    assert "semaim finetune done: test top-1" in capsys.readouterr().out
    evals = [json.loads(line) for line in (out / "eval.jsonl").read_text().splitlines()]
    assert [e["epoch"] for e in evals] == [1, 2] and all(0 <= e["val_top1"] <= 100 for e in evals)
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 4  # 15 training images, batch 6
    result = json.loads((out / "result.json").read_text())
    assert result["train_images"] == 15 and result["val_images"] == 3 and 0 <= result["test_top1"] <= 100
    # The fine-tuned encoder loads back (head dropped) and the run refuses to be overwritten.
    assert load_encoder(out / "checkpoint-last.pt").num_classes == 0
    assert main(args) == 2
    assert main([*args[:-8], "--set", "epohcs=2"]) == 2
    assert "unknown field 'epohcs'" in capsys.readouterr().err


def test_finetune_resumes_exactly(tmp_path, pretrained, monkeypatch):
    import semaim.evaluate.trainer as sup

    data = tmp_path / "data"
    make_image_folder(data / "train", classes=("a", "b"), per_class=8)
    make_image_folder(data / "val", classes=("a", "b"), per_class=2, seed=1)
    base = [
        "finetune",
        "--checkpoint",
        str(pretrained),
        "--data",
        str(data),
        "--no-progress",
        "--set",
        "budget_steps=0",
        "--set",
        "epochs=2",
        "--set",
        "batch_size=4",
        "--set",
        "workers=0",
        "--set",
        "save_every_steps=1",
        "--set",
        "val_size=0",
    ]
    assert main([*base, "--out", str(tmp_path / "whole")]) == 0

    real_save, calls = sup.save_atomic, {"n": 0}

    def save_then_die(obj, path):
        real_save(obj, path)
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # a kill right after the third checkpoint (mid-epoch: 4 steps per epoch)

    monkeypatch.setattr(sup, "save_atomic", save_then_die)
    assert main([*base, "--out", str(tmp_path / "cut")]) == 130
    monkeypatch.setattr(sup, "save_atomic", real_save)
    assert main([*base, "--out", str(tmp_path / "cut"), "--resume"]) == 0

    def losses(run):
        return [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]

    assert len(losses(tmp_path / "whole")) == 8
    assert losses(tmp_path / "cut") == pytest.approx(losses(tmp_path / "whole"), rel=1e-5)


def test_randaugment_posterize_survives_full_magnitude_without_patching_timm():
    from PIL import Image
    from timm.data import auto_augment
    from timm.data.auto_augment import RandAugment

    from semaim.config import FinetuneConfig
    from semaim.evaluate.finetune import train_transform

    ft = FinetuneConfig(randaug="rand-n1-m10-inc1", reprob=0.0)
    transform = train_transform(ft, 3, (8, 8), (0.5,) * 3, (0.5,) * 3)
    (randaug,) = [t for t in transform.transforms if isinstance(t, RandAugment)]
    randaug.ops = [o for o in randaug.ops if o.name == "PosterizeIncreasing"]
    for o in randaug.ops:
        o.prob, o.magnitude_std = 1.0, 0
    img = Image.new("RGB", (8, 8), (200, 100, 50))
    assert randaug(img).size == (8, 8)  # 0 bits asked for at magnitude 10: clamped to 1 in this transform
    assert auto_augment.NAME_TO_OP["PosterizeIncreasing"] is auto_augment.posterize  # timm itself untouched
