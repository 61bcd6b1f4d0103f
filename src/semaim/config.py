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
