"""One typed config: presets, --set overrides with type checks, round trips."""

from __future__ import annotations

import pytest

from semaim.config import PretrainConfig, parse_assignment
from semaim.errors import ConfigError
from semaim.presets import load_preset, preset_names


def test_presets_exist_and_validate():
    assert {"cpu-tiny", "paper-vit-b16", "paper-vit-l16"} <= set(preset_names())
    for name in preset_names():
        load_preset(name).validate()


def test_paper_preset_is_table_s1():
    cfg = load_preset("paper-vit-b16")
    m, t = cfg.model, cfg.train
    assert (m.img_size, m.patch_size, m.embed_dim, m.depth, m.num_heads, m.decoder_depth) == (
        224,
        16,
        768,
        12,
        12,
        12,
    )
    assert (t.batch_size, t.epochs, t.blr, t.warmup_epochs, t.weight_decay) == (2048, 800, 2e-4, 30, 0.05)
    assert t.betas == (0.9, 0.95) and t.clip_grad == 3.0 and m.norm_pix and m.blur_sigma == 1.0
    assert cfg.data.crop_scale == (0.2, 1.0)
    large = load_preset("paper-vit-l16").model
    assert (large.embed_dim, large.depth, large.num_heads) == (1024, 24, 16)


def test_set_parses_and_type_checks():
    cfg = load_preset("cpu-tiny")
    for text in ["model.depth=4", "train.lr=1e-3", "train.betas=0.8,0.9", "data.limit=null", "order=raster"]:
        cfg.set(*parse_assignment(text))
    assert cfg.model.depth == 4 and cfg.train.lr == 1e-3 and cfg.train.betas == (0.8, 0.9)
    assert cfg.data.limit is None and cfg.model.order == "raster"
    cfg.set("train.epochs", 3)
    assert isinstance(cfg.train.epochs, int)
    cfg.set("train.blr", 1)  # an int where a float is expected is fine
    assert cfg.train.blr == 1.0 and isinstance(cfg.train.blr, float)


@pytest.mark.parametrize(
    "text, match",
    [
        ("model.depht=4", "unknown field 'model.depht'"),
        ("optim.lr=1", "unknown section 'optim'"),
        ("model.depth=four", r"model.depth: expected int, got 'four'"),
        ("train.epochs=1.5", "train.epochs: expected int"),
        ("train.betas=0.9", "train.betas: expected a list"),
        ("nope=1", "unknown field 'nope'"),
        ("depth", "expected key=value"),
    ],
)
def test_bad_set_names_the_problem(text, match):
    cfg = load_preset("cpu-tiny")
    with pytest.raises(ValueError, match=match):
        cfg.set(*parse_assignment(text))


def test_unknown_preset_lists_the_available_ones():
    with pytest.raises(ValueError, match="'nope' does not exist; available presets are .*cpu-tiny"):
        load_preset("nope")


def test_a_preset_section_that_is_not_a_mapping_is_named(tmp_path):
    preset = tmp_path / "bad.yaml"
    preset.write_text("model: 5\n")
    with pytest.raises(ConfigError, match=f"preset {preset}: section 'model' must map fields"):
        load_preset(str(preset))


def test_config_round_trip():
    cfg = load_preset("paper-vit-b16")
    again = PretrainConfig.from_dict(cfg.to_dict())
    assert again == cfg
    with pytest.raises(ValueError, match="unknown field"):
        PretrainConfig.from_dict({"train": {"epoks": 1}})
