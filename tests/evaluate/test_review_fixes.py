"""Review findings: the feature cache's key and damaged files, preset sections, randaug, export paths."""

from __future__ import annotations

import pytest
import torch

import semaim.evaluate.features as features
from semaim.cli import main
from semaim.config import FinetuneConfig
from semaim.encoder import encoder_from_checkpoint
from semaim.errors import ConfigError, MissingFileError
from semaim.evaluate.features import RawPixels
from semaim.evaluate.finetune import train_transform
from tests.conftest import make_image_folder


class CountingPixels(RawPixels):
    """Raw pixels that count the batches they see (a cache hit sees none)."""

    def __init__(self) -> None:
        super().__init__()
        self.batches = 0

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        self.batches += 1
        return super().forward_features(images)


def extract(encoder: RawPixels, data: str, cache, precision: str = "fp32") -> torch.Tensor:
    return features.extract_features(
        encoder,
        data,
        "test",
        (8, 8),
        in_chans=1,
        pool="cls",
        batch_size=8,
        workers=0,
        device="cpu",
        precision=precision,
        cache=cache,
        cache_key="pixels",
        progress=False,
    )[0]


# --------------------------------------------------------------------------- the feature cache
def test_the_cache_key_holds_the_precision_and_the_normalisation(tmp_path, fmnist, monkeypatch):
    encoder = CountingPixels()
    extract(encoder, fmnist, tmp_path, "bf16")
    seen = encoder.batches
    extract(encoder, fmnist, tmp_path, "bf16")
    assert encoder.batches == seen  # served from the cache
    extract(encoder, fmnist, tmp_path, "fp32")
    assert encoder.batches == 2 * seen
    real = features.open_dataset

    def other_stats(*args, **kwargs):
        base = real(*args, **kwargs)
        base.mean, base.std = (0.5,), (0.25,)
        return base

    monkeypatch.setattr(features, "open_dataset", other_stats)
    extract(encoder, fmnist, tmp_path, "fp32")
    assert encoder.batches == 3 * seen


def test_a_corrupt_cache_file_is_recomputed_and_overwritten(tmp_path, fmnist):
    first = extract(RawPixels(), fmnist, tmp_path)
    (file,) = tmp_path.glob("features-*.pt")
    file.write_bytes(b"garbage bytes")
    assert torch.equal(extract(RawPixels(), fmnist, tmp_path), first)
    assert torch.equal(torch.load(file)["features"], first)


def test_a_cache_that_is_a_file_is_refused_before_extracting(tmp_path, fmnist):
    cache = tmp_path / "cache"
    cache.write_text("not a folder")
    encoder = CountingPixels()
    with pytest.raises(ConfigError, match="features.cache"):
        extract(encoder, fmnist, cache)
    assert encoder.batches == 0


# --------------------------------------------------------------------------- randaug
def test_a_bad_randaug_policy_names_the_field():
    ft = FinetuneConfig(randaug="bogus")
    with pytest.raises(ConfigError, match="finetune.randaug: 'bogus'"):
        train_transform(ft, 3, (32, 32), [0.5] * 3, [0.25] * 3)


def test_a_bad_randaug_policy_exits_2_before_the_run_starts(tmp_path, capsys):
    make_image_folder(tmp_path / "data" / "train", classes=("a", "b"), per_class=4)
    preset = tmp_path / "tiny.yaml"
    preset.write_text(
        "model: {img_size: 32, patch_size: 8, embed_dim: 32, depth: 2, num_heads: 2, decoder_depth: 2}\n"
    )
    out = tmp_path / "ft"
    argv = [
        "finetune",
        "--random",
        "--model-config",
        str(preset),
        "--data",
        str(tmp_path / "data"),
        "--out",
        str(out),
        "--no-progress",
        "--set",
        "finetune.workers=0",
        "--set",
        "batch_size=4",
        "--set",
        "finetune.randaug=bogus",
    ]
    assert main(argv) == 2
    assert "finetune.randaug" in capsys.readouterr().err
    assert not out.exists()


# --------------------------------------------------------------------------- export
def test_export_to_an_unwritable_place_names_out(capsys):
    assert main(["export", "--checkpoint", "x.pt", "--out", "/proc/x/enc.safetensors"]) == 2
    assert "--out: cannot write /proc/x/enc.safetensors" in capsys.readouterr().err


def test_a_missing_safetensors_file_is_named_before_its_description(tmp_path):
    with pytest.raises(MissingFileError, match="encoder file not found"):
        encoder_from_checkpoint(tmp_path / "enc.safetensors")
