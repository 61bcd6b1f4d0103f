"""The typed model configuration shared by the Python API, the CLI, the YAML presets and checkpoints.

A :class:`ModelConfig` is everything needed to rebuild a :class:`semaim.SemAIM` (the teacher's weights
are read again from ``teacher_path``).  ``validate()`` turns an impossible configuration into a
``ValueError`` that names the field, what it got and what it expected, before any tensor is allocated.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

ORDERS = ("raster", "stochastic", "similarity", "semantic", "center", "multi-center")
"""Every autoregression order (Table 1 of the paper, plus the `center` control and `multi-center`)."""

TARGETS = ("pixels", "features")
"""Prediction targets (Eq. 12): patch pixels, or a frozen teacher's patch features."""


def to_2tuple(value: int | tuple[int, int] | list[int], name: str) -> tuple[int, int]:
    """``32 -> (32, 32)``; ``(32, 48) -> (32, 48)``; anything else is a ``ValueError`` naming ``name``."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value, value
    if isinstance(value, (tuple, list)) and len(value) == 2 and all(isinstance(v, int) for v in value):
        return int(value[0]), int(value[1])
    raise ValueError(f"{name}: expected an int or a pair of ints (height, width), got {value!r}")


@dataclass
class ModelConfig:
    """Architecture, order and target of a SemAIM model (DESIGN §1)."""

    img_size: int | tuple[int, int] = 32
    patch_size: int = 4
    in_chans: int = 3
    embed_dim: int = 192
    depth: int = 12
    num_heads: int = 3
    decoder_depth: int = 12
    mlp_ratio: float = 4.0
    # Order (Eq. 2-6): which patch is predicted first.
    order: str = "semantic"
    lam: float = 0.01  # λ of Eq. 5: random tie-breaking among patches at the same distance
    num_centers: int = 2  # multi-center only
    nms_radius: float | None = None  # multi-center only; None = a quarter of the shorter grid side
    # Targets (Eq. 12).
    target: str = "pixels"
    norm_pix: bool = True
    blur_sigma: float | None = None  # Gaussian blur of the pixel targets (the released recipe: 1.0)
    blur_kernel: int = 9
    teacher_arch: str | None = None  # a timm model name, e.g. "vit_base_patch16_224"
    teacher_path: str | None = None  # a local checkpoint file (never a hub)
    teacher_img_size: int | None = None  # None = the teacher architecture's own default

    @property
    def grid(self) -> tuple[int, int]:
        """Patch grid ``(h, w) = (H / P, W / P)``."""
        height, width = to_2tuple(self.img_size, "img_size")
        return height // self.patch_size, width // self.patch_size

    @property
    def num_patches(self) -> int:
        h, w = self.grid
        return h * w

    def validate(self) -> ModelConfig:
        """Raise ``ValueError`` for an impossible configuration; return ``self`` otherwise."""
        height, width = to_2tuple(self.img_size, "img_size")
        for name in ("patch_size", "in_chans", "embed_dim", "depth", "num_heads", "decoder_depth"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name}: expected a positive int, got {value!r}")
        if height % self.patch_size or width % self.patch_size:
            raise ValueError(
                f"patch_size: {self.patch_size} must divide img_size {(height, width)} "
                f"(got a remainder of {(height % self.patch_size, width % self.patch_size)})"
            )
        if self.embed_dim % self.num_heads:
            raise ValueError(f"num_heads: {self.num_heads} must divide embed_dim {self.embed_dim}")
        if self.embed_dim % 4:
            raise ValueError(
                f"embed_dim: the 2-D sin-cos position embedding needs a multiple of 4, got {self.embed_dim}"
            )
        if self.depth % self.decoder_depth:
            raise ValueError(
                f"decoder_depth: must divide depth {self.depth} so that decoder blocks read uniformly "
                f"spaced encoder blocks (DESIGN §1.8), got {self.decoder_depth}"
            )
        if self.order not in ORDERS:
            raise ValueError(f"order: expected one of {ORDERS}, got {self.order!r}")
        if self.target not in TARGETS:
            raise ValueError(f"target: expected one of {TARGETS}, got {self.target!r}")
        if self.target == "features" and not (self.teacher_arch and self.teacher_path):
            raise ValueError(
                "teacher_arch/teacher_path: target='features' needs a timm architecture name and a local "
                f"checkpoint file, got teacher_arch={self.teacher_arch!r}, teacher_path={self.teacher_path!r}"
            )
        if self.lam < 0:
            raise ValueError(f"lam: expected >= 0, got {self.lam}")
        if self.num_centers < 1:
            raise ValueError(f"num_centers: expected >= 1, got {self.num_centers}")
        if self.blur_sigma is not None and (self.blur_sigma <= 0 or self.blur_kernel % 2 == 0):
            raise ValueError(
                "blur_sigma/blur_kernel: expected sigma > 0 and an odd kernel size, "
                f"got sigma={self.blur_sigma}, kernel={self.blur_kernel}"
            )
        return self

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        if isinstance(out["img_size"], tuple):
            out["img_size"] = list(out["img_size"])
        return out

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ModelConfig:
        """Build from a plain dict (YAML, checkpoint); unknown keys are a ``ValueError``."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"model config: unknown field(s) {unknown}; known fields are {sorted(known)}")
        values = dict(values)
        if isinstance(values.get("img_size"), list):
            values["img_size"] = tuple(values["img_size"])
        return cls(**values)


@dataclass
class DataConfig:
    """What to train on and how to load it (Table S1 augmentation)."""

    data: str = "fashion-mnist"  # "fashion-mnist", "fashion-mnist:/dir/with/idx/files", or an image folder
    limit: int | None = None  # only the first N training images
    workers: int = 2
    skip_bad_images: bool = False  # skip corrupt/unreadable images instead of stopping
    crop_scale: tuple[float, float] = (0.2, 1.0)  # RandomResizedCrop scale range
    hflip: bool = True
    mean: tuple[float, ...] | None = None  # None: the dataset's own (Fashion-MNIST) or ImageNet's
    std: tuple[float, ...] | None = None


@dataclass
class TrainConfig:
    """The pretraining loop (Algorithm 1, Table S1)."""

    epochs: int = 10
    batch_size: int = 256  # effective batch per optimiser step: all ranks x accumulation steps
    accum_steps: int = 1
    blr: float = 2e-4  # lr = blr x batch_size / 256 (Table S1)
    lr: float | None = None  # an absolute lr; overrides blr
    min_lr: float = 0.0
    warmup_epochs: float = 1.0
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.95)
    clip_grad: float | None = 3.0
    precision: str = "bf16"  # fp32 | bf16 | fp16 (fp16: CUDA only, with a gradient scaler)
    ema_decay: float | None = None  # an EMA copy of the model gives the order when set
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    save_every_steps: int = 200  # checkpoint-last.pt at least this often (and at every epoch end)
    save_every_epochs: int = 0  # also keep checkpoint-EPOCH.pt every N epochs (0: only the last)
    compile: bool = False  # torch.compile the model


@dataclass
class PretrainConfig:
    """Everything a pretraining run needs; stored in config.yaml and in every checkpoint."""

    model: ModelConfig
    data: DataConfig
    train: TrainConfig

    def validate(self) -> PretrainConfig:
        self.model.validate()
        t = self.train
        if t.precision not in ("fp32", "bf16", "fp16"):
            raise ValueError(f"train.precision: expected fp32, bf16 or fp16, got {t.precision!r}")
        for name in ("epochs", "batch_size", "accum_steps"):
            if getattr(t, name) < 1:
                raise ValueError(f"train.{name}: expected a positive int, got {getattr(t, name)}")
        if t.batch_size % t.accum_steps:
            raise ValueError(
                f"train.batch_size: {t.batch_size} is not divisible by train.accum_steps {t.accum_steps}"
            )
        if t.ema_decay is not None and not 0 < t.ema_decay < 1:
            raise ValueError(f"train.ema_decay: expected a value in (0, 1) or null, got {t.ema_decay}")
        if self.data.limit is not None and self.data.limit < 1:
            raise ValueError(f"data.limit: expected a positive int, got {self.data.limit}")
        return self

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.to_dict(),
            "data": _plain(asdict(self.data)),
            "train": _plain(asdict(self.train)),
        }

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> PretrainConfig:
        unknown = sorted(set(values) - {"model", "data", "train"})
        if unknown:
            raise ValueError(f"config: unknown section(s) {unknown}; expected model, data, train")
        return cls(
            model=ModelConfig.from_dict(values.get("model", {})),
            data=_section(DataConfig, values.get("data", {}), "data"),
            train=_section(TrainConfig, values.get("train", {}), "train"),
        )


def _plain(values: dict[str, Any]) -> dict[str, Any]:
    """Tuples -> lists, so that YAML and JSON write plain sequences."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}


def _section(cls: type, values: dict[str, Any], name: str) -> Any:
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ValueError(f"{name}: unknown field(s) {unknown}; known fields are {sorted(known)}")
    out = {}
    for key, value in values.items():
        out[key] = tuple(value) if isinstance(value, list) else value
    return cls(**out)
