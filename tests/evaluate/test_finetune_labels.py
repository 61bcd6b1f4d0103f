"""Fine-tuning for the payoff question: the scratch baseline, label subsets, a validation split carved
from the training data, the test split scored once at the end, the official head (avg pool + fc_norm)."""

from __future__ import annotations

import json

import pytest
import torch

import semaim.evaluate.trainer as sup
from semaim import load_encoder
from semaim.cli import main
from semaim.config import EncoderConfig, FinetuneConfig, PretrainConfig
from semaim.data.folders import ImageFolder
from semaim.encoder import encoder_from_checkpoint, random_encoder
from semaim.engine.checkpoint import load_checkpoint
from semaim.evaluate.encoders import starting_weights
from semaim.evaluate.finetune import build_classifier
from semaim.model.semaim import SemAIM
from semaim.presets import load_preset
from tests.conftest import make_image_folder

TINY_PRESET = (
    "model: {img_size: 32, patch_size: 8, embed_dim: 32, depth: 2, num_heads: 2, decoder_depth: 2}\n"
)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    data = tmp_path_factory.mktemp("data")
    make_image_folder(data / "train", classes=("a", "b", "c"), per_class=10)
    make_image_folder(data / "val", classes=("a", "b", "c"), per_class=3, seed=1)
    return data


def run(tmp_path, folder, *extra: str) -> int:
    preset = tmp_path / "tiny.yaml"
    preset.write_text(TINY_PRESET)
    return main(
        [
            "finetune",
            "--random",
            "--model-config",
            str(preset),
            "--data",
            str(folder),
            "--no-progress",
            "--set",
            "budget_steps=0",
            "--set",
            "epochs=2",
            "--set",
            "batch_size=4",
            "--set",
            "finetune.workers=0",
            *extra,
        ]
    )


def test_random_is_the_pretraining_initialisation():
    state, args, _ = starting_weights(EncoderConfig(random=True, preset="cpu-tiny", init_seed=3))
    expected = random_encoder(load_preset("cpu-tiny").model, seed=3).state_dict()
    assert state.keys() == expected.keys() and all(torch.equal(state[k], expected[k]) for k in state)
    assert args["embed_dim"] == load_preset("cpu-tiny").model.embed_dim


def test_label_subset_validation_and_one_test_at_the_end(tmp_path, folder, monkeypatch):
    events: list[str] = []
    real_load, real_final = ImageFolder.load, sup.final_test
    monkeypatch.setattr(
        ImageFolder, "load", lambda self, i: events.append(self.root.name) or real_load(self, i)
    )
    monkeypatch.setattr(sup, "final_test", lambda *a: events.append("final test") or real_final(*a))
    out = tmp_path / "ft"
    assert run(tmp_path, folder, "--labels-per-class", "4", "--val-size", "6", "--out", str(out)) == 0
    first_test_read = events.index("val")  # the data folder's val/ is the test split
    assert events.index("final test") < first_test_read and "val" not in events[: events.index("final test")]
    assert events.count("val") == 9  # scored once
    result = json.loads((out / "result.json").read_text())
    assert result["train_images"] == 12 and result["val_images"] == 6 and result["selected"] == "last"
    evals = [json.loads(line) for line in (out / "eval.jsonl").read_text().splitlines()]
    assert [e["epoch"] for e in evals] == [1, 2] and "val_top1" in evals[0] and "test_top1" not in evals[0]
    vit = load_encoder(out / "checkpoint-last.pt")  # the official head: avg pool + fc_norm, no final norm
    assert vit.global_pool == "avg" and isinstance(vit.norm, torch.nn.Identity)


def test_best_validation_weights_and_cls_pool(tmp_path, folder):
    out = tmp_path / "ft"
    args = [
        "--select",
        "best",
        "--pool",
        "cls",
        "--val-size",
        "3",
        "--set",
        "epochs=3",
        "--set",
        "eval_every=2",
    ]
    assert run(tmp_path, folder, *args, "--out", str(out)) == 0
    evals = [json.loads(line)["epoch"] for line in (out / "eval.jsonl").read_text().splitlines()]
    assert evals == [2, 3]  # every second epoch, and the last
    assert json.loads((out / "result.json").read_text())["selected"] == "best"
    assert (out / "checkpoint-best.pt").is_file()
    assert load_encoder(out / "checkpoint-last.pt").global_pool == "token"


@pytest.mark.parametrize(
    "extra, field",
    [
        (["--labels-per-class", "20"], "finetune.labels_per_class"),
        (["--label-fraction", "1.5"], "finetune.label_fraction"),
        (["--label-fraction", "0"], "finetune.label_fraction"),
        (["--labels-per-class", "2", "--label-fraction", "0.5"], "finetune.labels_per_class"),
        (["--val-size", "30"], "finetune.val_size"),
        (["--select", "best", "--val-size", "0"], "finetune.select"),
        (["--set", "batch_size=3", "--set", "mixup=0.8"], "finetune.batch_size"),  # timm's mixup pairs images
    ],
)
def test_impossible_label_settings_exit_2_and_touch_nothing(tmp_path, folder, capsys, extra, field):
    out = tmp_path / "ft"
    assert run(tmp_path, folder, *extra, "--out", str(out)) == 2
    assert f"{field}: expected" in capsys.readouterr().err
    assert not out.exists()


def test_random_and_checkpoint_together_is_refused(tmp_path, folder, capsys):
    assert run(tmp_path, folder, "--checkpoint", "x.pt", "--out", str(tmp_path / "ft")) == 2
    assert "--checkpoint" in capsys.readouterr().err


def test_knn_floor_learns_from_the_subset_fine_tuning_trains_on(tmp_path, fmnist, capsys):
    """`knn --labels-per-class K` keeps exactly the images `finetune --labels-per-class K` trains on."""
    from semaim.config import FeaturesConfig
    from semaim.data import open_dataset
    from semaim.data.splits import labelled_subset
    from semaim.evaluate.encoders import EncoderChoice, split_features
    from semaim.evaluate.features import RawPixels

    enc = EncoderChoice(RawPixels(), (32, 32), 3, "pixels", "raw pixels")
    cfg = FeaturesConfig(data=fmnist, workers=0, labels_per_class=2, val_size=10)
    train_f, train_y, test_f, _ = split_features(cfg, enc, progress=False)
    labels = open_dataset(fmnist, "train").labels
    expected, _ = labelled_subset(labels, val_size=10, split_seed=0, per_class=2, fraction=None, seed=0)
    assert len(train_f) == 20 and torch.equal(train_y, labels[expected]) and len(test_f) == 20
    out = tmp_path / "knn.json"
    assert (
        main(
            [
                "knn",
                "--pixels",
                "--data",
                fmnist,
                "--workers",
                "0",
                "--no-progress",
                "--labels-per-class",
                "2",
                "--ks",
                "3",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "knn",
                "--pixels",
                "--data",
                fmnist,
                "--workers",
                "0",
                "--no-progress",
                "--labels-per-class",
                "9",
            ]
        )
        == 2
    )
    assert "features.labels_per_class: expected 1 to" in capsys.readouterr().err


@pytest.mark.parametrize("pool", ["cls", "avg"])
def test_the_classifier_starts_with_the_pretraining_models_own_features(pretrained, pool):
    """The loading check of the payoff study: a fine-tuning run's encoder at step 0 is the pretrained one
    (the avg-pool head drops the final norm, as timm does, so it compares the tokens before it)."""
    ckpt = load_checkpoint(pretrained, kind=None)
    trained = SemAIM(PretrainConfig.from_dict(ckpt["config"]).model)
    trained.load_state_dict(ckpt["model"])
    trained.eval()
    state, args = encoder_from_checkpoint(pretrained)
    clf = build_classifier(args, state, 3, FinetuneConfig(pool=pool), "test").eval()
    images = torch.randn(4, trained.config.in_chans, trained.config.img_size, trained.config.img_size)
    with torch.no_grad():
        tokens = trained.embed(images)
        for block in trained.blocks:
            tokens = block(tokens)
        expected = trained.norm(tokens) if pool == "cls" else tokens
        torch.testing.assert_close(clf.forward_features(images), expected, rtol=0, atol=1e-6)
        assert clf(images).abs().max() < 1e-2  # MAE's head init: the first steps train the head
