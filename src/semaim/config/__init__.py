"""The one typed configuration every command, preset and checkpoint shares.

A command's configuration is a :class:`Sections` dataclass whose fields are *sections*, themselves
dataclasses of plain values: pretraining is ``model`` + ``data`` + ``train``, fine-tuning ``encoder`` +
``finetune``, the linear probe ``encoder`` + ``features`` + ``probe``, k-NN ``encoder`` + ``features`` +
``knn``. The same object is read from a YAML preset (:mod:`semaim.presets`), changed by the command's
flags and by ``--set section.field=value`` (type-checked), validated, written to the run folder's
``config.yaml`` and stored in every checkpoint, so that either rebuilds the run.

Two modules, one per concern:

- :mod:`semaim.config.schema`: the sections and the run configs, each ``validate()`` turning an
  impossible value into a :class:`~semaim.errors.ConfigError` that names the field, what it got and what
  it expected, before any tensor is allocated or any file written.
- :mod:`semaim.config.overrides`: how values get in, for any sections: the dict / YAML round trip,
  ``--set`` parsing (:func:`parse_assignment`) and the type check against the annotations (:func:`coerce`).

Everything is importable from ``semaim.config`` as well; the value checks of :mod:`semaim.checks` that
sections use are re-exported here for the modules that import them from the config.
"""

from ..checks import require, require_choice, require_crop_scale, require_positive, to_2tuple
from .overrides import Sections, coerce, make_section, parse_assignment, plain
from .schema import (
    POOLS,
    PRECISIONS,
    PROBE_OPTIMIZERS,
    SEGMENT_MODES,
    SELECTIONS,
    TARGETS,
    DataConfig,
    EncoderConfig,
    FeaturesConfig,
    FinetuneConfig,
    FinetuneRunConfig,
    KnnConfig,
    KnnRunConfig,
    LinProbeConfig,
    LinprobeRunConfig,
    ModelConfig,
    PretrainConfig,
    SegmentConfig,
    SegmentRunConfig,
    TrainConfig,
    validate_label_subset,
)

__all__ = [
    "POOLS",
    "PRECISIONS",
    "PROBE_OPTIMIZERS",
    "SELECTIONS",
    "SEGMENT_MODES",
    "TARGETS",
    "DataConfig",
    "EncoderConfig",
    "FeaturesConfig",
    "FinetuneConfig",
    "FinetuneRunConfig",
    "KnnConfig",
    "KnnRunConfig",
    "LinProbeConfig",
    "LinprobeRunConfig",
    "ModelConfig",
    "PretrainConfig",
    "Sections",
    "SegmentConfig",
    "SegmentRunConfig",
    "TrainConfig",
    "coerce",
    "make_section",
    "parse_assignment",
    "plain",
    "require",
    "require_choice",
    "require_crop_scale",
    "require_positive",
    "to_2tuple",
    "validate_label_subset",
]
