"""The frozen teacher ViT whose patch tokens are the feature targets of Eq. 12 (DINO / CLIP in the paper).

Any timm vision transformer built by name and loaded from a checkpoint file on disk (never a hub).
Its tokens give both the targets and, through the teacher's own cls similarity, the order.
"""

from __future__ import annotations

from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from torch import nn

from ..config import to_2tuple
from ..errors import ConfigError
from ..weights import load_strict, read_state_dict
from .targets import resample_token_grid


def load_teacher(arch: str, path: str | Path, img_size: int | None = None) -> nn.Module:
    """Build timm model ``arch`` (no classifier), load ``path`` strictly, freeze it, eval mode.

    Not through timm's ``pretrained_cfg_overlay=dict(file=...)``: without a head timm loads non-strictly
    (a DINO ``teacher``/``backbone.`` file loads nothing, one log line) and silently resamples a
    mis-shaped ``pos_embed``; :func:`semaim.weights.load_strict` raises naming the keys.
    """
    if not timm.is_model(arch):
        raise ConfigError(f"teacher_arch: {arch!r} is not a timm model name (e.g. 'vit_base_patch16_224')")
    state = read_state_dict(path)
    kwargs = {"pretrained": False, "num_classes": 0}
    if img_size is not None:
        kwargs["img_size"] = img_size
    model = timm.create_model(arch, **kwargs)
    if not hasattr(model, "num_prefix_tokens") or not hasattr(model, "patch_embed"):
        raise ConfigError(f"teacher_arch: {arch!r} is not a vision transformer with patch tokens")
    # A classifier head in the checkpoint is not part of the teacher's features.
    state = {k: v for k, v in state.items() if not k.startswith(("head.", "fc_norm.", "head_drop."))}
    load_strict(model, state, f"teacher_path: {path} (teacher_arch {arch!r})")
    model.requires_grad_(False)
    return model.eval()


class Teacher(nn.Module):
    """A frozen teacher that returns ``(B, 1+N, D_t)`` tokens on the *student's* patch grid.

    Images are resized to the teacher's input size when it differs from the student's; if the teacher's
    patch grid still differs from the student's, its token map is resampled to the student's grid.
    """

    def __init__(self, model: nn.Module, student_grid: tuple[int, int]) -> None:
        super().__init__()
        self.model = model
        self.student_grid = student_grid
        self.input_size = to_2tuple(tuple(model.patch_embed.img_size), "teacher img_size")
        self.grid = tuple(model.patch_embed.grid_size)
        self.num_prefix_tokens = int(model.num_prefix_tokens)
        self.has_class_token = bool(getattr(model, "has_class_token", self.num_prefix_tokens > 0))
        self.dim = int(model.num_features)

    def train(self, mode: bool = True) -> Teacher:
        # Frozen: always in eval mode, whatever the student does.
        return super().train(False)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if tuple(images.shape[-2:]) != self.input_size:
            images = F.interpolate(images, size=self.input_size, mode="bicubic", align_corners=False)
        tokens = self.model.forward_features(images)  # final norm applied
        cls = tokens[:, :1] if self.has_class_token else tokens[:, self.num_prefix_tokens :].mean(1, True)
        patches = resample_token_grid(tokens[:, self.num_prefix_tokens :], self.grid, self.student_grid)
        return torch.cat([cls, patches], dim=1)
