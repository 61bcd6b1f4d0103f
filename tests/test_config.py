"""One typed config: presets, --set overrides with type checks, round trips."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from semaim.config import PretrainConfig, parse_assignment
from semaim.config.overrides import Sections
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


@dataclass
class _Loop:
    steps: int = 1
    lr: float | None = None
    size: int | tuple[int, int] = 8
    ks: tuple[int, ...] = (1, 2)


@dataclass
class _Data:
    name: str = "toy"
    steps: int = 0


@dataclass
class _Toy(Sections):
    """A command-like config of sections the schema does not have (module level: the annotations are
    resolved by name)."""

    loop: _Loop = field(default_factory=_Loop)
    data: _Data = field(default_factory=_Data)


def test_overrides_work_on_any_sections():
    """The override machinery knows no particular section: any sections get the same type checks, error
    messages and round trip as the schema's."""
    cfg = _Toy.default()
    for text in ["loop.lr=1e-3", "size=[4, 6]", "ks=3,4", "data.name=7"]:
        cfg.set(*parse_assignment(text))
    assert (cfg.loop.lr, cfg.loop.size, cfg.loop.ks, cfg.data.name) == (1e-3, (4, 6), (3, 4), "7")
    assert _Toy.from_dict(cfg.to_dict()) == cfg
    assert list(cfg.to_dict()) == ["loop", "data"] and cfg.to_dict()["loop"]["ks"] == [3, 4]
    with pytest.raises(ConfigError, match=r"loop.steps: expected int, got 'abc' \(str\)"):
        cfg.set(*parse_assignment("loop.steps=abc"))
    with pytest.raises(ConfigError, match=r"it is in \['loop', 'data'\]: write section.steps"):
        cfg.set("steps", 2)
    with pytest.raises(ConfigError, match=r"loop.size: expected int or a list"):
        cfg.set("loop.size", 1.5)


def test_every_name_imported_from_the_config_package_is_there():
    """``semaim.config`` is a package (schema + overrides); what code imports from it stays importable."""
    import semaim.config as config
    from semaim.config import overrides, schema

    imported = {
        "PRECISIONS",
        "SEGMENT_MODES",
        "TARGETS",
        "Sections",
        "parse_assignment",
        "to_2tuple",
        "require",
    }
    imported |= {
        "require_choice",
        "ModelConfig",
        "DataConfig",
        "TrainConfig",
        "PretrainConfig",
        "KnnRunConfig",
    }
    imported |= {"EncoderConfig", "FeaturesConfig", "KnnConfig", "LinProbeConfig", "LinprobeRunConfig"}
    imported |= {"FinetuneConfig", "FinetuneRunConfig", "SegmentConfig", "SegmentRunConfig"}
    assert imported <= set(config.__all__) and all(hasattr(config, name) for name in config.__all__)
    assert config.parse_assignment is overrides.parse_assignment and config.ModelConfig is schema.ModelConfig
    assert issubclass(config.PretrainConfig, overrides.Sections)
