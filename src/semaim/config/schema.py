"""The schema: every configuration section, with the check that refuses an impossible value.

A section is a dataclass of plain values (``ModelConfig``, ``TrainConfig``, ...); a command's config is a
:class:`~semaim.config.overrides.Sections` dataclass of sections (``PretrainConfig``, ``FinetuneRunConfig``,
...). Each ``validate()`` turns an impossible value into a :class:`~semaim.errors.ConfigError` that names
the field, what it got and what it expected, before any tensor is allocated or any file written. How a
value gets in (presets, flags, ``--set``, checkpoints) is :mod:`semaim.config.overrides`' business.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

from ..checks import require, require_choice, require_crop_scale, require_positive, to_2tuple
from ..errors import ConfigError
from ..model.orders import CENTER_FILTERS, CENTER_MAPS, NEEDS_MAP, ORDERS
from .overrides import Sections, make_section, plain

TARGETS = ("pixels", "features")
"""Prediction targets (Eq. 12): patch pixels, or a frozen teacher's patch features."""

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
"""``auto``: bf16 where the device computes it natively (CUDA, CPUs with AVX512-BF16/AMX), else fp32."""

POOLS = ("cls", "avg")
"""How an encoder's tokens become one feature: the cls token, or the mean of the patch tokens."""

SELECTIONS = ("last", "best")
"""Which weights of a trained run meet the test split: the last, or the best on validation."""

PROBE_OPTIMIZERS = ("lars", "sgd")
"""The linear probe's optimizers: LARS (MAE's recipe) or momentum SGD."""


# --------------------------------------------------------------------------- sections
@dataclass
class ModelConfig:
    """Architecture, order and target of a SemAIM model (docs/design.md §1)."""

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
    center_filter: str = "mean3x3"  # before Eq. 3's argmax: the paper's 3x3 mean, or none (the official code)
    center_map: str = "similarity"  # the centre's map: S of Eq. 2, or the last block's cls attention (beyond)
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
        """Patches per image, ``h * w`` of :attr:`grid`."""
        h, w = self.grid
        return h * w

    def validate(self, prefix: str = "") -> ModelConfig:
        """Raise :class:`ConfigError` for an impossible configuration; return ``self`` otherwise."""
        height, width = to_2tuple(self.img_size, f"{prefix}img_size")
        require(height > 0 and width > 0, f"{prefix}img_size", "positive sizes", self.img_size)
        for name in ("patch_size", "in_chans", "embed_dim", "depth", "num_heads", "decoder_depth"):
            value = getattr(self, name)
            ok = isinstance(value, int) and not isinstance(value, bool) and value >= 1
            require(ok, f"{prefix}{name}", "a positive int", value)
        if height % self.patch_size or width % self.patch_size:
            raise ConfigError(
                f"{prefix}patch_size: {self.patch_size} must divide img_size {(height, width)} "
                f"(got a remainder of {(height % self.patch_size, width % self.patch_size)})"
            )
        if self.embed_dim % self.num_heads:
            raise ConfigError(f"{prefix}num_heads: {self.num_heads} must divide embed_dim {self.embed_dim}")
        require(
            self.embed_dim % 4 == 0,
            f"{prefix}embed_dim",
            "a multiple of 4 (the 2-D sin-cos position embedding)",
            self.embed_dim,
        )
        if self.depth % self.decoder_depth:
            raise ConfigError(
                f"{prefix}decoder_depth: must divide depth {self.depth} so that decoder blocks read uniformly "
                f"spaced encoder blocks (docs/design.md §1), got {self.decoder_depth}"
            )
        require_positive(self, prefix, "mlp_ratio", "nms_radius", "blur_sigma")
        require_positive(self, prefix, "lam", allow_zero=True)
        require_choice(self.order, f"{prefix}order", tuple(ORDERS))
        require_choice(self.center_filter, f"{prefix}center_filter", CENTER_FILTERS)
        require_choice(self.center_map, f"{prefix}center_map", CENTER_MAPS)
        require_choice(self.target, f"{prefix}target", TARGETS)
        if self.center_map == "attention" and self.target == "features":
            raise ConfigError(
                f"{prefix}center_map: 'attention' reads the model's own encoder; with a teacher "
                "(target='features') the teacher's similarity map gives the order"
            )
        if self.target == "features" and not (self.teacher_arch and self.teacher_path):
            raise ConfigError(
                f"{prefix}teacher_arch/teacher_path: target='features' needs a timm architecture name and a "
                f"local checkpoint file, got teacher_arch={self.teacher_arch!r}, teacher_path={self.teacher_path!r}"
            )
        require(self.num_centers >= 1, f"{prefix}num_centers", ">= 1", self.num_centers)
        require(
            self.blur_kernel >= 1 and self.blur_kernel % 2 == 1,
            f"{prefix}blur_kernel",
            "an odd size",
            self.blur_kernel,
        )
        return self

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (tuples as lists): the section as YAML and checkpoints store it, and from_dict reads it."""
        return plain(asdict(self))

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ModelConfig:
        """Build from a plain dict (YAML, checkpoint); unknown keys are a ``ConfigError``."""
        return make_section(cls, values, "model")


@dataclass
class DataConfig:
    """What to pretrain on and how to load it (Table S1 augmentation)."""

    data: str = "fashion-mnist"  # "fashion-mnist", "fashion-mnist:/dir/with/idx/files", or an image folder
    limit: int | None = None  # only the first N training images
    workers: int = 2
    skip_bad_images: bool = False  # skip corrupt/unreadable images instead of stopping
    crop_scale: tuple[float, float] = (0.2, 1.0)  # RandomResizedCrop scale range
    hflip: bool = True
    mean: tuple[float, ...] | None = None  # None: the dataset's own (Fashion-MNIST) or ImageNet's
    std: tuple[float, ...] | None = None

    def validate(self, prefix: str = "data.") -> DataConfig:
        require(self.limit is None or self.limit >= 1, f"{prefix}limit", "a positive int or null", self.limit)
        require(self.workers >= 0, f"{prefix}workers", "an int >= 0", self.workers)
        require_crop_scale(self.crop_scale, f"{prefix}crop_scale")
        require(self.std is None or all(s > 0 for s in self.std), f"{prefix}std", "values > 0", self.std)
        return self

    def check_channels(self, in_chans: int, prefix: str = "data.") -> None:
        """``mean`` / ``std`` give one value (replicated) or one per input channel."""
        for name in ("mean", "std"):
            values = getattr(self, name)
            ok = values is None or len(values) in (1, in_chans)
            require(ok, f"{prefix}{name}", f"1 or {in_chans} values (model.in_chans)", values)


@dataclass
class TrainConfig:
    """The pretraining loop (Algorithm 1, Table S1)."""

    epochs: int = 10
    batch_size: int = 256  # effective batch per optimizer step: all ranks x accumulation steps
    accum_steps: int = 1
    # The most images one rank puts through one forward; more accumulation steps make up the global batch, so
    # the same recipe runs on any number and size of devices. None: batch_size / (ranks x accum_steps).
    micro_batch_size: int | None = None
    blr: float = 2e-4  # lr = blr x batch_size / 256 (Table S1)
    lr: float | None = None  # an absolute lr; overrides blr
    min_lr: float = 0.0
    warmup_epochs: float = 1.0
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.95)
    clip_grad: float | None = 3.0
    precision: str = "auto"  # auto | fp32 | bf16 | fp16 (fp16: CUDA only, with a gradient scaler)
    ema_decay: float | None = None  # an EMA copy of the model gives the order when set
    order_source: str | None = None  # a frozen encoder (checkpoint / export) gives the order, not the targets
    # Start the encoder as a model of this decoder depth would (same seed). The decoder's construction draws
    # random numbers before the init, so without it a decoder-depth ablation (Table 3) also changes the
    # encoder's starting point.
    encoder_init_depth: int | None = None
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    save_every_steps: int = 200  # checkpoint-last.pt at least this often (and at every epoch end)
    # Read the loss (and log it, and check it is finite) every N steps: each read waits for the device, so on a
    # GPU a larger N keeps it busy; a NaN is still caught within N steps, before anything is saved.
    log_every_steps: int = 1
    save_every_epochs: int = 0  # also keep checkpoint-EPOCH.pt every N epochs (0: only the last)
    keep_steps: tuple[int, ...] = ()  # also keep checkpoint-stepN.pt at these steps (a compute curve)
    compile: bool = False  # torch.compile the model

    def validate(self, prefix: str = "train.") -> TrainConfig:
        for name in ("epochs", "batch_size", "accum_steps", "save_every_steps", "log_every_steps"):
            require(getattr(self, name) >= 1, f"{prefix}{name}", "a positive int", getattr(self, name))
        ok = self.encoder_init_depth is None or self.encoder_init_depth >= 1
        require(ok, f"{prefix}encoder_init_depth", "a positive int or null", self.encoder_init_depth)
        ok = self.micro_batch_size is None or self.micro_batch_size >= 1
        require(ok, f"{prefix}micro_batch_size", "a positive int or null", self.micro_batch_size)
        require(
            self.save_every_epochs >= 0, f"{prefix}save_every_epochs", "an int >= 0", self.save_every_epochs
        )
        require(
            all(s >= 1 for s in self.keep_steps),
            f"{prefix}keep_steps",
            "positive ints",
            list(self.keep_steps),
        )
        if self.batch_size % self.accum_steps:
            raise ConfigError(
                f"{prefix}batch_size: {self.batch_size} is not divisible by {prefix}accum_steps {self.accum_steps}"
            )
        require_positive(self, prefix, "blr", "lr", "clip_grad")
        require_positive(self, prefix, "min_lr", "warmup_epochs", "weight_decay", allow_zero=True)
        require(
            all(0 <= b < 1 for b in self.betas), f"{prefix}betas", "two values in [0, 1)", list(self.betas)
        )
        require_choice(self.precision, f"{prefix}precision", PRECISIONS)
        ok = self.ema_decay is None or 0 < self.ema_decay < 1
        require(ok, f"{prefix}ema_decay", "a value in (0, 1) or null", self.ema_decay)
        ok = self.ema_decay is None or self.order_source is None
        require(
            ok,
            f"{prefix}order_source",
            "unset when train.ema_decay is set (one source of the order)",
            self.order_source,
        )
        return self


@dataclass
class EncoderConfig:
    """Which encoder an evaluation uses: a checkpoint, or a floor (random init of a preset's shape, pixels)."""

    checkpoint: str | None = None  # pretraining / fine-tuning checkpoint or export folder
    random: bool = False  # the encoder exactly as pretraining initialises it (shape of `preset`)
    pixels: bool = False  # the normalised input image, flattened
    preset: str = "cpu-tiny"  # model shape and input size of the floors
    init_seed: int = 0  # initialisation seed of `random`

    def validate(self, prefix: str = "encoder.") -> EncoderConfig:
        chosen = [n for n in ("checkpoint", "random", "pixels") if getattr(self, n)]
        require(len(chosen) == 1, f"{prefix}checkpoint/random/pixels", "exactly one of them", chosen)
        return self


@dataclass
class FeaturesConfig:
    """Frozen features for k-NN and the linear probe: data, pooling, extraction."""

    data: str = "fashion-mnist"  # 'fashion-mnist' or a folder with train/ and val/
    pool: str = "cls"  # cls token or mean of the patch tokens
    batch_size: int = 256
    workers: int = 2
    device: str = "auto"
    precision: str = "fp32"  # fp32 | bf16 | auto
    cache: str | None = None  # a folder to cache extracted features in
    # Label-efficiency floors: learn from the labelled subset fine-tuning would train on (same seeds).
    labels_per_class: int | None = None
    label_fraction: float | None = None
    val_size: int | None = None  # carved out (and unused) as fine-tuning does; only with a label subset
    split_seed: int = 0
    subset_seed: int = 0  # fine-tuning's finetune.seed
    limit: int | None = None  # fine-tuning's finetune.limit

    @property
    def draws_subset(self) -> bool:
        """Whether the features learn from fine-tuning's training images rather than the whole split."""
        fields_ = (self.labels_per_class, self.label_fraction, self.val_size, self.limit)
        return any(value is not None for value in fields_)

    def validate(self, prefix: str = "features.") -> FeaturesConfig:
        require_choice(self.pool, f"{prefix}pool", POOLS)
        require(self.batch_size >= 1, f"{prefix}batch_size", "a positive int", self.batch_size)
        require(self.workers >= 0, f"{prefix}workers", "an int >= 0", self.workers)
        require_choice(self.precision, f"{prefix}precision", ("auto", "fp32", "bf16"))
        validate_label_subset(self, prefix)
        return self


def validate_label_subset(section: Any, prefix: str) -> None:
    """``labels_per_class`` / ``label_fraction`` / ``val_size`` of a section (fine-tuning or features)."""
    require(
        section.labels_per_class is None or section.label_fraction is None,
        f"{prefix}labels_per_class",
        "not together with label_fraction",
        section.labels_per_class,
    )
    ok = section.label_fraction is None or 0 < section.label_fraction <= 1
    require(ok, f"{prefix}label_fraction", "a value in (0, 1]", section.label_fraction)
    ok = section.labels_per_class is None or section.labels_per_class >= 1
    require(ok, f"{prefix}labels_per_class", "a positive int", section.labels_per_class)
    require(
        section.val_size is None or section.val_size >= 0,
        f"{prefix}val_size",
        "an int >= 0",
        section.val_size,
    )


@dataclass
class KnnConfig:
    """Weighted k-NN (DINO's protocol)."""

    ks: tuple[int, ...] = (10, 20, 100)
    temperature: float = 0.07

    def validate(self, prefix: str = "knn.") -> KnnConfig:
        require(
            len(self.ks) > 0 and all(k >= 1 for k in self.ks), f"{prefix}ks", "positive ints", list(self.ks)
        )
        require_positive(self, prefix, "temperature")
        return self


@dataclass
class LinProbeConfig:
    """Recipe of a linear probe. ``paper`` = the paper's (MAE's) recipe; ``cpu`` = a quick one."""

    epochs: int = 90
    batch_size: int = 4096
    blr: float = 0.1  # lr = blr × batch / 256
    warmup_epochs: int = 10
    weight_decay: float = 0.0
    optimizer: str = "lars"  # lars | sgd
    seed: int = 0

    def validate(self, prefix: str = "probe.") -> LinProbeConfig:
        require(
            self.epochs >= 1 and self.batch_size >= 1,
            f"{prefix}epochs/batch_size",
            "positive ints",
            [self.epochs, self.batch_size],
        )
        require_positive(self, prefix, "blr")
        require_positive(self, prefix, "warmup_epochs", "weight_decay", allow_zero=True)
        require_choice(self.optimizer, f"{prefix}optimizer", PROBE_OPTIMIZERS)
        if self.optimizer == "lars":  # timm's Lars equals MAE's only without weight decay
            require(
                self.weight_decay == 0, f"{prefix}weight_decay", "0 with optimizer lars", self.weight_decay
            )
        return self


@dataclass
class FinetuneConfig:
    """End-to-end fine-tuning (Table S2 recipe) and what it runs on."""

    data: str = "fashion-mnist"  # 'fashion-mnist' or a folder with train/ and val/
    limit: int | None = None  # only the first N training images (after the validation split is carved out)
    labels_per_class: int | None = None  # train on K labelled images per class (a seeded, stratified subset)
    label_fraction: float | None = None  # ... or on this fraction of every class
    val_size: int | None = None  # validation images carved from the training split; None: 10 %, at most 5000
    split_seed: int = 0  # seed of the validation split (the same for every run)
    select: str = "last"  # weights scored on the test split: last | best (best validation top-1)
    eval_every: int = 1  # validate every N epochs (and after the last); stretched with budget_steps
    pool: str = "avg"  # avg: mean of patch tokens + a new fc_norm (the official fine-tuning); cls: cls token
    device: str = "auto"
    epochs: int = 100
    budget_steps: int = 0  # about this many steps: a small labelled set gets more epochs (warmup alike)
    batch_size: int = 1024
    blr: float = 5e-4  # lr = blr × batch / 256
    min_lr: float = 1e-6
    warmup_epochs: float = 20
    weight_decay: float = 0.05
    layer_decay: float = 0.65
    betas: tuple[float, float] = (0.9, 0.999)
    drop_path: float = 0.1
    crop_scale: tuple[float, float] = (0.08, 1.0)  # RandomResizedCrop's area range (timm's default)
    randaug: str = "rand-m9-mstd0.5-inc1"  # RandAugment(9, 0.5) in timm's notation ("" = none)
    reprob: float = 0.25  # random erasing
    mixup: float = 0.8
    cutmix: float = 1.0
    smoothing: float = 0.1
    clip_grad: float | None = None
    precision: str = "auto"  # auto | fp32 | bf16
    workers: int = 2
    seed: int = 0
    save_every_steps: int = 500
    log_every_steps: int = 1  # read (log, check) the loss every N steps: each read waits for the device

    def validate(self, prefix: str = "finetune.") -> FinetuneConfig:
        for name in ("epochs", "batch_size", "save_every_steps", "log_every_steps", "eval_every"):
            require(getattr(self, name) >= 1, f"{prefix}{name}", "a positive int", getattr(self, name))
        require(self.limit is None or self.limit >= 1, f"{prefix}limit", "a positive int or null", self.limit)
        require(self.workers >= 0, f"{prefix}workers", "an int >= 0", self.workers)
        require(self.budget_steps >= 0, f"{prefix}budget_steps", "an int >= 0", self.budget_steps)
        require_positive(self, prefix, "blr", "clip_grad")
        require_positive(
            self, prefix, "min_lr", "warmup_epochs", "weight_decay", "mixup", "cutmix", allow_zero=True
        )
        require(0 < self.layer_decay <= 1, f"{prefix}layer_decay", "a value in (0, 1]", self.layer_decay)
        ok = self.batch_size % 2 == 0 or not (self.mixup > 0 or self.cutmix > 0)
        require(
            ok,
            f"{prefix}batch_size",
            "an even number with mixup / cutmix (timm pairs images)",
            self.batch_size,
        )
        for name in ("drop_path", "reprob", "smoothing"):
            require(0 <= getattr(self, name) < 1, f"{prefix}{name}", "a value in [0, 1)", getattr(self, name))
        require(
            all(0 <= b < 1 for b in self.betas), f"{prefix}betas", "two values in [0, 1)", list(self.betas)
        )
        require_choice(self.precision, f"{prefix}precision", ("auto", "fp32", "bf16"))
        require_crop_scale(self.crop_scale, f"{prefix}crop_scale")
        self.validate_data(prefix)
        return self

    def validate_data(self, prefix: str) -> None:
        """What to train, validate and select on (the sizes against the data are checked on opening it)."""
        validate_label_subset(self, prefix)
        require_choice(self.pool, f"{prefix}pool", POOLS)
        require_choice(self.select, f"{prefix}select", SELECTIONS)
        require(
            self.select == "last" or self.val_size != 0,
            f"{prefix}select",
            "last when val_size is 0",
            self.select,
        )


SEGMENT_MODES = ("finetune", "linear")
"""``finetune``: pyramid + head, the encoder trained end to end; ``linear``: a head on the frozen encoder."""


@dataclass
class SegmentConfig:
    """Semantic segmentation with the encoder as a ViTDet backbone (``semaim segment``; docs/design.md §5).

    The defaults are MAE's ADE20k recipe that the paper follows (mmsegmentation's MAE UperNet config:
    AdamW lr 1e-4, layer decay 0.65, 160k iterations of batch 16, warmup 1500 iterations), with the
    iterations as epochs of ADE20k's 20,210 training images; ``configs/segment/cpu.yaml`` is a small run.
    """

    data: str = "cluttered-fashion-mnist"  # [:dir], or a folder: {train,val}/{images,masks}/
    num_classes: int | None = (
        None  # None: the data's own (cluttered: background + 10 items); set for a folder
    )
    mode: str = "finetune"  # finetune | linear (frozen encoder, BN + 1x1 conv on the patch tokens)
    limit: int | None = None  # only the first N training images (after the validation split is carved out)
    val_size: int | None = None  # validation images carved from the training split; None: 10 %, at most 5000
    split_seed: int = 0
    select: str = "last"  # weights scored on the test split: last | best (best validation mIoU)
    eval_every: int = 1  # validate every N epochs (and after the last)
    device: str = "auto"
    scales: tuple[float, ...] = (4.0, 2.0, 1.0, 0.5)  # ViTDet's pyramid, relative to the patch grid
    pyramid_dim: int = 256  # ViTDet's pyramid width
    head_dim: int = 128  # Panoptic FPN's semantic branch width
    epochs: int = 127  # 160k iterations x batch 16 / 20,210 images
    batch_size: int = 16
    lr: float = 1e-4  # absolute (segmentation recipes give it so), not scaled by the batch
    linear_lr: float | None = (
        None  # linear mode's own lr (None: lr): a lone head on fixed features takes larger steps
    )
    min_lr: float = 0.0
    warmup_epochs: float = 1.19  # 1500 iterations
    weight_decay: float = 0.05
    layer_decay: float = 0.65
    betas: tuple[float, float] = (0.9, 0.999)
    drop_path: float = 0.1
    hflip: bool = True  # the one augmentation, applied to image and mask alike
    clip_grad: float | None = None
    precision: str = "auto"  # auto | fp32 | bf16
    workers: int = 2
    seed: int = 0
    save_every_steps: int = 500
    log_every_steps: int = 1  # read (log, check) the loss every N steps: each read waits for the device

    def validate(self, prefix: str = "segment.") -> SegmentConfig:
        for name in (
            "epochs",
            "batch_size",
            "save_every_steps",
            "log_every_steps",
            "eval_every",
            "pyramid_dim",
            "head_dim",
        ):
            require(getattr(self, name) >= 1, f"{prefix}{name}", "a positive int", getattr(self, name))
        require(self.limit is None or self.limit >= 1, f"{prefix}limit", "a positive int or null", self.limit)
        require(
            self.val_size is None or self.val_size >= 0, f"{prefix}val_size", "an int >= 0", self.val_size
        )
        ok = self.num_classes is None or self.num_classes >= 2
        require(ok, f"{prefix}num_classes", "an int >= 2 or null", self.num_classes)
        require(self.workers >= 0, f"{prefix}workers", "an int >= 0", self.workers)
        require_choice(self.mode, f"{prefix}mode", SEGMENT_MODES)
        require_choice(self.select, f"{prefix}select", SELECTIONS)
        require(
            self.select == "last" or self.val_size != 0,
            f"{prefix}select",
            "last when val_size is 0",
            self.select,
        )
        ok = len(self.scales) > 0 and len(set(self.scales)) == len(self.scales)
        require(
            ok and set(self.scales) <= {4.0, 2.0, 1.0, 0.5},
            f"{prefix}scales",
            "distinct values among [4.0, 2.0, 1.0, 0.5] (ViTDet's pyramid)",
            list(self.scales),
        )
        require_positive(self, prefix, "lr", "linear_lr", "clip_grad")
        require_positive(self, prefix, "min_lr", "warmup_epochs", "weight_decay", allow_zero=True)
        require(0 < self.layer_decay <= 1, f"{prefix}layer_decay", "a value in (0, 1]", self.layer_decay)
        require(0 <= self.drop_path < 1, f"{prefix}drop_path", "a value in [0, 1)", self.drop_path)
        require(
            all(0 <= b < 1 for b in self.betas), f"{prefix}betas", "two values in [0, 1)", list(self.betas)
        )
        require_choice(self.precision, f"{prefix}precision", ("auto", "fp32", "bf16"))
        return self

    @property
    def run_lr(self) -> float:
        """The peak lr this run trains with: the frozen probe's own (``linear_lr``) when given, else ``lr``."""
        return self.linear_lr if self.mode == "linear" and self.linear_lr is not None else self.lr


# --------------------------------------------------------------------------- commands
@dataclass
class PretrainConfig(Sections):
    """Everything a pretraining run needs; stored in config.yaml and in every checkpoint."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def validate(self) -> PretrainConfig:
        self.model.validate(prefix="model.")
        self.data.validate()
        self.data.check_channels(self.model.in_chans)
        self.train.validate()
        if self.train.order_source is not None:  # an order source that could never act is a mistake
            ok = self.model.order in NEEDS_MAP and self.model.target == "pixels"
            require(
                ok,
                "train.order_source",
                "unset unless model.order reads a map (similarity, semantic, "
                "multi-center) and model.target is pixels (a teacher orders by its own map)",
                self.train.order_source,
            )
        init_depth = self.train.encoder_init_depth
        require(
            init_depth is None or self.model.depth % init_depth == 0,
            "train.encoder_init_depth",
            f"a decoder depth that divides model.depth {self.model.depth}, or null",
            init_depth,
        )
        return self


class TrainedEncoderRun(Sections):
    """A run that trains an encoder (fine-tuning, segmentation): it starts from a checkpoint's or from the
    initialisation, never from raw pixels, and says so before its sections are checked."""

    def validate(self) -> Sections:
        e = self.encoder
        chosen = [n for n in ("checkpoint", "random", "pixels") if getattr(e, n)]
        ok = not e.pixels and bool(e.checkpoint) != bool(e.random)
        require(ok, "encoder.checkpoint/random", "exactly one of --checkpoint PATH or --random", chosen)
        return super().validate()


@dataclass
class FinetuneRunConfig(TrainedEncoderRun):
    """``semaim finetune``: the encoder to start from and the recipe; the run folder's config.yaml."""

    PRESETS: ClassVar[str] = "finetune"
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)


@dataclass
class LinprobeRunConfig(Sections):
    """``semaim linprobe``: encoder, features, probe recipe."""

    PRESETS: ClassVar[str] = "linprobe"
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    features: FeaturesConfig = field(default_factory=FeaturesConfig)
    probe: LinProbeConfig = field(default_factory=LinProbeConfig)


@dataclass
class KnnRunConfig(Sections):
    """``semaim knn``: encoder, features, k-NN settings."""

    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    features: FeaturesConfig = field(default_factory=FeaturesConfig)
    knn: KnnConfig = field(default_factory=KnnConfig)


@dataclass
class SegmentRunConfig(TrainedEncoderRun):
    """``semaim segment``: the encoder to start from and the recipe; the run folder's config.yaml."""

    PRESETS: ClassVar[str] = "segment"
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    segment: SegmentConfig = field(default_factory=SegmentConfig)
