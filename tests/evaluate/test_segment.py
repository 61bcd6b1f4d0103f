"""``semaim segment``: ViTDet's simple feature pyramid, mIoU, the frozen probe, the run conventions
(validation split, one test at the end, exact resume) and bad input."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

import semaim.evaluate.segmentation.segment as seg
import semaim.evaluate.trainer as sup
from semaim.cli import main
from semaim.config import EncoderConfig, SegmentConfig, SegmentRunConfig
from semaim.data.cluttered import ClutteredFashionMNIST
from semaim.encoder import build_vit
from semaim.evaluate.encoders import starting_weights
from semaim.evaluate.segmentation.heads import Segmenter, confusion_matrix, segmentation_scores
from semaim.evaluate.segmentation.masks import IGNORE_INDEX
from tests.conftest import make_fmnist_dir
from tests.data.test_masks import write_pair

TINY_PRESET = (
    "model: {img_size: 32, patch_size: 8, embed_dim: 32, depth: 2, num_heads: 2, decoder_depth: 2}\n"
)
TINY_HEAD = ["--set", "pyramid_dim=8", "--set", "head_dim=8", "--set", "segment.workers=0"]


@pytest.fixture(scope="module")
def cluttered(tmp_path_factory):
    root = tmp_path_factory.mktemp("fmnist")
    make_fmnist_dir(root, n_train=40, n_test=10)
    return f"cluttered-fashion-mnist:{root}"


def run(tmp_path, data, *extra: str) -> int:
    preset = tmp_path / "tiny.yaml"
    preset.write_text(TINY_PRESET)
    return main(
        [
            "segment",
            "--random",
            "--model-config",
            str(preset),
            "--data",
            data,
            "--no-progress",
            *TINY_HEAD,
            "--set",
            "epochs=2",
            "--set",
            "batch_size=4",
            *extra,
        ]
    )


# --------------------------------------------------------------------------- the model
@pytest.mark.parametrize(
    "img_size, patch, grid",
    [(32, 4, (8, 8)), (64, 8, (8, 8)), ((24, 32), 4, (6, 8)), ((48, 32), 8, (6, 4)), (28, 4, (7, 7))],
)
def test_pyramid_shapes(img_size, patch, grid):
    args = {
        "img_size": list(img_size) if isinstance(img_size, tuple) else img_size,
        "patch_size": patch,
        "in_chans": 3,
        "embed_dim": 32,
        "depth": 2,
        "num_heads": 2,
    }
    model = Segmenter(build_vit(args), num_classes=5, pyramid_dim=16, head_dim=8)
    size = img_size if isinstance(img_size, tuple) else (img_size, img_size)
    images = torch.randn(2, 3, *size)
    tokens = model.patch_map(images)
    assert tokens.shape == (2, 32, *grid)
    h, w = grid
    levels = model.decoder[0](tokens)  # scales 4, 2, 1, 1/2 of the patch grid (1/2 rounds down)
    assert [tuple(x.shape) for x in levels] == [
        (2, 16, 4 * h, 4 * w),
        (2, 16, 2 * h, 2 * w),
        (2, 16, h, w),
        (2, 16, h // 2, w // 2),
    ]
    assert model.decoder[1](levels).shape == (2, 5, 4 * h, 4 * w)  # the head predicts at the finest level
    assert model(images).shape == (2, 5, *size)
    coarse = Segmenter(build_vit(args), 5, "finetune", 16, 8, scales=(2.0, 0.5))
    assert [x.shape[-2:] for x in coarse.decoder[0](tokens)] == [(2 * h, 2 * w), (h // 2, w // 2)]
    assert coarse(images).shape == (2, 5, *size)


def test_miou_and_pixel_accuracy_by_hand():
    target = torch.tensor([[0, 0, 1], [1, 2, IGNORE_INDEX]])
    pred = torch.tensor([[0, 1, 1], [1, 1, 0]])
    conf = confusion_matrix(pred, target, num_classes=4)
    assert conf.tolist() == [
        [1, 1, 0, 0],
        [0, 2, 0, 0],
        [0, 1, 0, 0],
        [0, 0, 0, 0],
    ]  # the ignored pixel left out
    scores = segmentation_scores(conf)
    # class 0: TP 1, FP 0, FN 1 -> 1/2; class 1: TP 2, FP 2, FN 0 -> 1/2; class 2: 0/1; class 3: absent
    assert scores["iou"] == [50.0, 50.0, 0.0, None]
    assert scores["miou"] == pytest.approx(100 / 3)
    assert scores["pixel_acc"] == pytest.approx(60.0)  # 3 of the 5 labelled pixels


def test_layer_decay_reaches_the_encoder_only():
    args = {"img_size": 32, "patch_size": 8, "in_chans": 3, "embed_dim": 32, "depth": 2, "num_heads": 2}
    sg = SegmentConfig(layer_decay=0.5, weight_decay=0.05, pyramid_dim=8, head_dim=8)
    model = Segmenter(build_vit(args), 3, "finetune", 8, 8)
    groups = seg.optimizer_groups(model, sg)
    scale = {id(p): g["lr_scale"] for g in groups for p in g["params"]}
    decay = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
    assert scale[id(model.encoder.blocks[1].attn.qkv.weight)] == 0.5
    assert scale[id(model.encoder.blocks[0].attn.qkv.weight)] == 0.25
    assert scale[id(model.encoder.pos_embed)] == 0.125 and decay[id(model.encoder.pos_embed)] == 0.0
    head = model.decoder[1].classifier
    assert scale[id(head.weight)] == 1.0 and decay[id(head.weight)] == 0.05 and decay[id(head.bias)] == 0.0
    assert len(scale) == sum(1 for p in model.parameters())  # every trainable parameter, once
    frozen = Segmenter(build_vit(args), 3, "linear")
    groups = seg.optimizer_groups(frozen, SegmentConfig(mode="linear"))
    assert {id(p) for g in groups for p in g["params"]} == {id(p) for p in frozen.decoder.parameters()}


@pytest.mark.parametrize(
    "mode, linear_lr, expected", [("linear", 0.3, 0.3), ("linear", None, 2e-3), ("finetune", 0.3, 2e-3)]
)
def test_the_probe_has_its_own_lr_and_fine_tuning_ignores_it(mode, linear_lr, expected):
    sg = SegmentConfig(mode=mode, lr=2e-3, linear_lr=linear_lr).validate()
    assert sg.run_lr == expected and seg.SegmentTask().base_lr(sg) == expected


def test_a_non_positive_probe_lr_is_named():
    with pytest.raises(ValueError, match=r"segment\.linear_lr: expected a number > 0, got 0"):
        SegmentConfig(linear_lr=0.0).validate()


# --------------------------------------------------------------------------- the run
def test_segment_end_to_end_with_one_test_at_the_end(tmp_path, cluttered, monkeypatch, capsys):
    events: list[str] = []
    real_load, real_final = ClutteredFashionMNIST.load_pair, sup.final_test
    monkeypatch.setattr(
        ClutteredFashionMNIST, "load_pair", lambda self, i: events.append(self.name) or real_load(self, i)
    )
    monkeypatch.setattr(sup, "final_test", lambda *a: events.append("final test") or real_final(*a))
    out = tmp_path / "seg"
    assert run(tmp_path, cluttered, "--val-size", "8", "--limit", "16", "--out", str(out)) == 0
    assert "semaim segment done: test mIoU" in capsys.readouterr().out
    test_reads = [i for i, e in enumerate(events) if e.endswith("/test")]
    assert len(test_reads) == 10 and min(test_reads) > events.index("final test")  # scored once, at the end
    result = json.loads((out / "result.json").read_text())
    assert result["train_images"] == 16 and result["val_images"] == 8 and result["test_images"] == 10
    assert 0 <= result["test_miou"] <= 100 and 0 <= result["test_pixel_acc"] <= 100
    assert list(result["test_iou"])[:2] == ["background", "T-shirt/top"] and len(result["test_iou"]) == 11
    evals = [json.loads(line) for line in (out / "eval.jsonl").read_text().splitlines()]
    assert [e["epoch"] for e in evals] == [1, 2] and "val_miou" in evals[0] and "test_miou" not in evals[0]
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 8  # 16 images, batch 4, 2 epochs
    assert any((out / "tb").iterdir())
    cfg = SegmentRunConfig.from_dict(yaml.safe_load((out / "config.yaml").read_text()))
    assert cfg.segment.limit == 16 and cfg.segment.pyramid_dim == 8 and cfg.encoder.random
    assert run(tmp_path, cluttered, "--out", str(out)) == 2  # the run is not overwritten


def test_frozen_probe_does_not_change_the_backbone(tmp_path, cluttered):
    out = tmp_path / "probe"
    assert (
        run(
            tmp_path,
            cluttered,
            "--linear",
            "--val-size",
            "8",
            "--select",
            "best",
            "--out",
            str(out),
            "--set",
            "lr=1e-3",
            "--set",
            "linear_lr=0.1",
        )
        == 0
    )
    lrs = [json.loads(line)["lr"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert 1e-3 < max(lrs) <= 0.1  # the probe's own lr, not the fine-tuning's
    preset = str(tmp_path / "tiny.yaml")
    start, _, _ = starting_weights(EncoderConfig(random=True, preset=preset))
    for name in ("checkpoint-last.pt", "checkpoint-best.pt"):
        state = torch.load(out / name, weights_only=False)["model"]
        encoder = {k.removeprefix("encoder."): v for k, v in state.items() if k.startswith("encoder.")}
        assert encoder.keys() == start.keys()  # the final norm is kept for the probe
        assert all(torch.equal(encoder[k], start[k]) for k in start)
    torch.manual_seed(0)
    fresh = Segmenter(
        build_vit(
            {"img_size": 32, "patch_size": 8, "in_chans": 3, "embed_dim": 32, "depth": 2, "num_heads": 2}
        ),
        11,
        "linear",
    )
    trained = torch.load(out / "checkpoint-last.pt", weights_only=False)["model"]
    assert not torch.equal(trained["decoder.classifier.weight"], fresh.decoder.classifier.weight)
    assert json.loads((out / "result.json").read_text())["mode"] == "linear"


def test_from_a_pretraining_checkpoint_and_its_mae_export(tmp_path, cluttered, pretrained):
    from semaim.export import export_encoder

    weights, _ = export_encoder(pretrained, tmp_path / "enc", "mae")
    common = [
        "--data",
        cluttered,
        "--no-progress",
        *TINY_HEAD,
        "--set",
        "epochs=1",
        "--set",
        "batch_size=4",
        "--val-size",
        "8",
        "--limit",
        "8",
    ]
    for source, out in ((pretrained, "from-ckpt"), (weights, "from-mae")):
        assert main(["segment", "--checkpoint", str(source), *common, "--out", str(tmp_path / out)]) == 0
    first, second = (
        json.loads((tmp_path / o / "result.json").read_text()) for o in ("from-ckpt", "from-mae")
    )
    assert first["test_miou"] == second["test_miou"]  # the same encoder either way


def test_resume_repeats_an_uninterrupted_run(tmp_path, cluttered, monkeypatch):
    extra = ["--limit", "16", "--val-size", "4", "--set", "save_every_steps=1"]
    assert run(tmp_path, cluttered, *extra, "--out", str(tmp_path / "whole")) == 0
    real_save, calls = sup.save_atomic, {"n": 0}

    def save_then_die(obj, path):
        real_save(obj, path)
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # a kill right after the third checkpoint (step 3 of 4 in epoch 1)

    monkeypatch.setattr(sup, "save_atomic", save_then_die)
    assert run(tmp_path, cluttered, *extra, "--out", str(tmp_path / "cut")) == 130
    monkeypatch.setattr(sup, "save_atomic", real_save)
    assert (
        main(["segment", "--out", str(tmp_path / "cut"), "--resume", "--no-progress"]) == 0
    )  # its own config

    def records(run_dir, name):
        return [json.loads(line) for line in (run_dir / name).read_text().splitlines()]

    whole, cut = records(tmp_path / "whole", "metrics.jsonl"), records(tmp_path / "cut", "metrics.jsonl")
    assert len(whole) == 8 and [r["loss"] for r in cut] == [r["loss"] for r in whole]
    assert records(tmp_path / "cut", "eval.jsonl") == records(tmp_path / "whole", "eval.jsonl")
    result = json.loads((tmp_path / "cut" / "result.json").read_text())
    assert result["test_miou"] == json.loads((tmp_path / "whole" / "result.json").read_text())["test_miou"]


# --------------------------------------------------------------------------- a mask folder, and bad input
@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "masks-data"
    for i in range(10):
        write_pair(root / "train", f"t{i}", values=(0, 1, 2)[i % 3 :] or (0,))
    for i in range(3):
        write_pair(root / "val", f"v{i}", values=(0, 2))
    return root


def test_a_mask_folder_runs(tmp_path, folder):
    out = tmp_path / "run"
    assert run(tmp_path, str(folder), "--num-classes", "3", "--val-size", "2", "--out", str(out)) == 0
    result = json.loads((out / "result.json").read_text())
    assert (
        result["train_images"] == 8
        and result["test_images"] == 3
        and list(result["test_iou"]) == ["0", "1", "2"]
    )


@pytest.mark.parametrize(
    "break_it, message",
    [
        (lambda r: write_pair(r / "train", "t0", mask_size=(8, 16)), "t0.png: size 8x16 differs"),
        (lambda r: write_pair(r / "val", "v1", values=(0, 5)), "v1.png: class id 5 >= num_classes 3"),
        (lambda r: (r / "train" / "masks" / "t4.png").unlink(), "t4.jpg has no mask"),
        (
            lambda r: [p.unlink() for p in (r / "val" / "masks").iterdir()] and (r / "val" / "masks").rmdir(),
            "has images but there is no",
        ),
    ],
)
def test_bad_masks_exit_2_naming_the_file_and_overwrite_nothing(tmp_path, folder, capsys, break_it, message):
    break_it(folder)
    out = tmp_path / "old-run"
    out.mkdir()
    (out / "metrics.jsonl").write_text("an older run\n")
    code = run(tmp_path, str(folder), "--num-classes", "3", "--val-size", "2", "--out", str(out), "--force")
    assert code == 2 and message in capsys.readouterr().err
    assert (out / "metrics.jsonl").read_text() == "an older run\n" and not (out / "config.yaml").exists()


@pytest.mark.parametrize(
    "extra, field",
    [
        (["--set", "scales=[3.0]"], "segment.scales"),
        (["--set", "mode=dense"], "segment.mode"),
        (["--num-classes", "1"], "segment.num_classes"),
        (["--data", "fashion-mnist"], "has no masks"),
    ],
)
def test_bad_settings_exit_2(tmp_path, cluttered, capsys, extra, field):
    assert run(tmp_path, cluttered, *extra, "--out", str(tmp_path / "x")) == 2
    assert field in capsys.readouterr().err and not (tmp_path / "x").exists()


def test_segment_presets():
    from semaim.presets import load_preset, preset_names

    assert set(preset_names(SegmentRunConfig)) == {"cpu", "paper"}
    paper = load_preset("paper", SegmentRunConfig).segment.validate()
    assert (paper.lr, paper.layer_decay, paper.batch_size, paper.weight_decay, paper.drop_path) == (
        1e-4,
        0.65,
        16,
        0.05,
        0.1,
    )
    assert paper.epochs * 20210 / paper.batch_size == pytest.approx(
        160_000, rel=0.005
    )  # 160k iterations on ADE20k
    assert paper.warmup_epochs * 20210 / paper.batch_size == pytest.approx(1500, rel=0.005)
    assert paper.scales == (4.0, 2.0, 1.0, 0.5) and paper.pyramid_dim == 256
    cpu = load_preset("cpu", SegmentRunConfig).segment.validate()
    assert cpu.mode == "finetune" and cpu.data == "cluttered-fashion-mnist"
