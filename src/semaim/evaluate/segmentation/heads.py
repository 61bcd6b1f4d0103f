"""Dense prediction on a plain ViT: ViTDet's simple feature pyramid, a Semantic FPN head, a linear probe
head, and the scores (mIoU, pixel accuracy). The run itself is :mod:`semaim.evaluate.segmentation.segment`.

**Backbone → pyramid** (Li, Mao, Girshick, He, *Exploring Plain Vision Transformer Backbones for Object
Detection*, ECCV 2022, §3 "Simple feature pyramid", Fig. 2c): only the *last* block's patch tokens, seen
as an ``h×w`` map of width ``D`` (no final LayerNorm, as ViTDet's backbone has none), are resampled to
scales 4, 2, 1 and 1/2 of the patch grid by two stride-2 deconvolutions (with LayerNorm + GELU between),
one deconvolution, nothing and a 2×2 max-pool; each map then goes through a 1×1 and a 3×3 convolution,
both followed by a channel LayerNorm. No top-down or lateral FPN connections: the paper finds they add
nothing once the backbone is a plain ViT.

**Head** (Kirillov, Girshick, He, Dollár, *Panoptic Feature Pyramid Networks*, CVPR 2019, §3, the
semantic segmentation branch; mmsegmentation's ``FPNHead``): every pyramid level is brought to the
finest level's size by ``log2(finest / scale)`` stages of 3×3 conv + GroupNorm + ReLU + 2× bilinear
upsampling (the finest level by one conv without upsampling), the levels are summed, and a 1×1 conv
(after dropout 0.1) gives the class logits, upsampled bilinearly to the input size. Why this head and not
UperNet, which the paper (Table S4) and MAE use on ADE20k: it is the smallest standard multi-scale head —
convolutions of ``head_dim`` channels on each level, where UperNet adds a pyramid pooling module and a
3×3 convolution over all levels concatenated (about three times the head's compute at the same width,
and it is usually run wider) — so a small run spends its time on the encoder, whose features are what
is being compared. UperNet itself is for mmsegmentation, from ``semaim export --format mae`` (README).

**Linear probe** (``mode: linear``): the frozen encoder's last-block tokens through its final LayerNorm,
BatchNorm without affine parameters and a 1×1 convolution (a per-patch linear classifier), upsampled
bilinearly to the input size, as DINOv2's linear segmentation evaluation does.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from timm.layers import LayerNorm2d
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from .masks import IGNORE_INDEX

SCALES = (4.0, 2.0, 1.0, 0.5)
"""ViTDet's pyramid scales relative to the patch grid (strides P/4, P/2, P, 2P); any non-empty subset works."""


def _resample(dim: int, scale: float) -> tuple[list[nn.Module], int]:
    """ViTDet's resampling of the ``dim``-wide patch map to ``scale`` × its size: ``(layers, out width)``."""
    if scale == 4.0:
        return [
            nn.ConvTranspose2d(dim, dim // 2, 2, stride=2),
            LayerNorm2d(dim // 2),
            nn.GELU(),
            nn.ConvTranspose2d(dim // 2, dim // 4, 2, stride=2),
        ], dim // 4
    if scale == 2.0:
        return [nn.ConvTranspose2d(dim, dim // 2, 2, stride=2)], dim // 2
    if scale == 1.0:
        return [], dim
    if scale == 0.5:
        return [nn.MaxPool2d(2, stride=2)], dim
    raise ValueError(f"pyramid scale {scale}: ViTDet's pyramid has scales {SCALES}")


class SimpleFeaturePyramid(nn.Module):
    """ViTDet's simple feature pyramid: ``(B, D, h, w)`` -> one ``(B, out_dim, h·s, w·s)`` map per scale ``s``
    (``⌊h/2⌋ × ⌊w/2⌋`` for ``s = 1/2``), in the order of ``scales``."""

    def __init__(self, dim: int, out_dim: int, scales: tuple[float, ...] = SCALES) -> None:
        super().__init__()
        self.scales = tuple(scales)
        stages = []
        for scale in self.scales:
            layers, width = _resample(dim, scale)
            stages.append(
                nn.Sequential(
                    *layers,
                    nn.Conv2d(width, out_dim, 1, bias=False),
                    LayerNorm2d(out_dim),
                    nn.Conv2d(out_dim, out_dim, 3, padding=1, bias=False),
                    LayerNorm2d(out_dim),
                )
            )
        self.stages = nn.ModuleList(stages)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [stage(x) for stage in self.stages]


def _conv_gn_relu(in_dim: int, dim: int) -> nn.Sequential:
    """Panoptic FPN's 3×3 conv + GroupNorm (32 groups, or fewer when ``dim`` has fewer channels) + ReLU."""
    return nn.Sequential(
        nn.Conv2d(in_dim, dim, 3, padding=1, bias=False),
        nn.GroupNorm(math.gcd(32, dim), dim),
        nn.ReLU(inplace=True),
    )


class SemanticFPNHead(nn.Module):
    """Panoptic FPN's semantic branch over pyramid maps of ``scales``: logits at the finest map's size."""

    def __init__(
        self,
        in_dim: int,
        dim: int,
        num_classes: int,
        scales: tuple[float, ...] = SCALES,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.scales = tuple(scales)
        self.finest = self.scales.index(max(self.scales))
        self.ups = [round(math.log2(max(self.scales) / s)) for s in self.scales]
        self.branches = nn.ModuleList(
            nn.Sequential(*[_conv_gn_relu(in_dim if i == 0 else dim, dim) for i in range(max(1, ups))])
            for ups in self.ups
        )
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(dim, num_classes, 1)
        nn.init.normal_(self.classifier.weight, std=0.01)  # mmsegmentation's init of the last conv
        nn.init.zeros_(self.classifier.bias)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        size = features[self.finest].shape[-2:]
        total = 0
        for branch, ups, x in zip(self.branches, self.ups, features, strict=True):
            for i, block in enumerate(branch):
                x = block(x)
                if ups:  # 2× per stage; the last stage lands exactly on the finest size (odd grids)
                    step = size if i == ups - 1 else (2 * x.shape[-2], 2 * x.shape[-1])
                    x = F.interpolate(x, size=step, mode="bilinear", align_corners=False)
            total = total + x
        return self.classifier(self.dropout(total))


class LinearHead(nn.Module):
    """BatchNorm (no affine) + 1×1 conv: a linear classifier per patch token."""

    def __init__(self, dim: int, num_classes: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(dim, affine=False)
        self.classifier = nn.Conv2d(dim, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.norm(x))


class Segmenter(nn.Module):
    """``encoder`` (a timm ``VisionTransformer``) + ``decoder``: pyramid and Semantic FPN head trained end
    to end (``mode="finetune"``), or a linear head on the frozen encoder (``mode="linear"``).
    ``forward(images) -> logits (B, num_classes, H, W)`` at the input's size."""

    def __init__(
        self,
        encoder: VisionTransformer,
        num_classes: int,
        mode: str = "finetune",
        pyramid_dim: int = 256,
        head_dim: int = 128,
        scales: tuple[float, ...] = SCALES,
    ) -> None:
        super().__init__()
        self.encoder, self.mode = encoder, mode
        dim = encoder.embed_dim
        if mode == "linear":
            encoder.requires_grad_(False)
            self.decoder = LinearHead(dim, num_classes)
        else:
            encoder.norm = nn.Identity()  # ViTDet's pyramid reads the last block as it leaves it
            self.decoder = nn.Sequential(
                SimpleFeaturePyramid(dim, pyramid_dim, scales),
                SemanticFPNHead(pyramid_dim, head_dim, num_classes, scales),
            )

    def patch_map(self, images: torch.Tensor) -> torch.Tensor:
        """The last block's patch tokens as ``(B, D, h, w)`` (final LayerNorm applied only when frozen)."""
        return self.encoder.forward_intermediates(
            images, indices=1, norm=self.mode == "linear", intermediates_only=True
        )[0]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.mode == "linear":
            with torch.no_grad():
                features = self.patch_map(images)
        else:
            features = self.patch_map(images)
        logits = self.decoder(features)
        return F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)

    def train(self, mode: bool = True) -> Segmenter:
        super().train(mode)
        if self.mode == "linear":
            self.encoder.eval()  # frozen: no drop path, the same features every epoch
        return self


# --------------------------------------------------------------------------- scores
def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``(K, K)`` pixel counts, rows = true class, columns = predicted; :data:`IGNORE_INDEX` pixels left out."""
    keep = target != IGNORE_INDEX
    index = target[keep].long() * num_classes + pred[keep].long()
    return torch.bincount(index, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def segmentation_scores(confusion: torch.Tensor) -> dict[str, float | list[float | None]]:
    """mIoU and pixel accuracy (in %) of a confusion matrix accumulated over a whole split.

    IoU of class ``c`` = TP / (TP + FP + FN) over all pixels of the split; mIoU is their mean over the
    classes that occur in the truth or the prediction (a class with an empty union has no IoU: ``None``),
    as mmsegmentation computes it. Pixel accuracy = correctly classified / labelled pixels.
    """
    conf = confusion.double()
    tp = conf.diag()
    union = conf.sum(0) + conf.sum(1) - tp
    iou = torch.where(union > 0, tp / union.clamp(min=1), torch.nan)
    present = ~iou.isnan()
    miou = 100 * iou[present].mean().item() if present.any() else float("nan")
    total = conf.sum().item()
    return {
        "miou": miou,
        "pixel_acc": 100 * tp.sum().item() / total if total else float("nan"),
        "iou": [None if v != v else 100 * v for v in iou.tolist()],
    }
