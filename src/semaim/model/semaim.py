"""SemAIM: a ViT encoder (content stream) and a cross-attention decoder (query stream) trained to predict
every patch from the patches before it in a semantic-aware order (Fig. 1, Eq. 1-12).

Two forward passes compute the same thing:

- :meth:`SemAIM.forward`, the fast formulation (docs/design.md §2): tokens gathered into the order
  ``π``, plain causal SDPA in both streams, no ``B×N×N`` masks, predictions scattered back to raster
  order;
- :meth:`SemAIM.forward_reference`, the explicit masks of Eq. 7 and Eq. 9 over raster-ordered tokens,
  kept as the oracle the fast path is tested against.

The encoder's parameters carry timm's names (``cls_token``, ``pos_embed``, ``patch_embed.*``,
``blocks.*``, ``norm.*``), so :meth:`SemAIM.encoder_state_dict` loads into
``timm.models.vision_transformer.VisionTransformer(..., num_classes=0)`` with ``strict=True``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from timm.layers import PatchEmbed
from timm.models.vision_transformer import Block
from torch import nn

from ..config import ModelConfig, to_2tuple
from ..errors import ConfigError, DataError
from .attention import Attention
from .mlp import Mlp
from .orders import NEEDS_MAP, centerness, encoder_map, similarity_map
from .pos_embed import sincos_2d
from .streams import DecoderBlock, decoder_mask, encoder_mask
from .targets import feature_loss, pixel_loss, pixel_target_dim, pixel_targets
from .teacher import Teacher, load_teacher

ENCODER_KEYS = ("cls_token", "pos_embed", "patch_embed", "blocks", "norm")
"""Top-level names of the encoder's state-dict entries (timm's VisionTransformer names)."""


@dataclass
class SemAIMOutput:
    """What one pretraining forward returns. Per-patch tensors are in raster patch order."""

    loss: torch.Tensor  # scalar, Eq. 12
    pred: torch.Tensor  # (B, N, target_dim)
    target: torch.Tensor  # (B, N, target_dim)
    centerness: torch.Tensor  # (B, N): smaller = predicted earlier
    order: torch.Tensor  # (B, N): π, the patch indices in prediction order (Eq. 6)


class SemAIM(nn.Module):
    """Semantic-aware autoregressive image model.

    Build it from keyword arguments (the fields of :class:`semaim.config.ModelConfig`) or a config::

        model = SemAIM(img_size=32, patch_size=4, embed_dim=64, depth=4, num_heads=4, decoder_depth=2)
        out = model(images)          # images: (B, 3, 32, 32), normalised
        out.loss.backward()
    """

    def __init__(self, config: ModelConfig | None = None, /, **kwargs: Any) -> None:
        super().__init__()
        if config is None:
            config = ModelConfig.from_dict(kwargs)
        elif kwargs:
            raise ConfigError(f"SemAIM: pass either a ModelConfig or keyword arguments, not both ({kwargs})")
        self.config = config.validate()
        c = config
        self.img_size = to_2tuple(c.img_size, "img_size")
        self.patch_size = c.patch_size
        self.grid = c.grid
        self.num_patches = c.num_patches
        self.num_prefix_tokens = 1  # the cls token (as timm's ViT names it)
        dim = c.embed_dim

        # Content stream (encoder), timm names.
        self.patch_embed = PatchEmbed(self.img_size, c.patch_size, c.in_chans, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.register_buffer("pos_embed", sincos_2d(dim, self.grid, cls_token=True)[None])  # fixed
        norm_layer = partial(nn.LayerNorm, eps=1e-6)  # timm's ViT default eps
        self.blocks = nn.ModuleList(
            [
                Block(
                    dim,
                    c.num_heads,
                    c.mlp_ratio,
                    qkv_bias=True,
                    norm_layer=norm_layer,
                    attn_layer=Attention,
                    mlp_layer=Mlp,
                )
                for _ in range(c.depth)
            ]
        )
        # One LayerNorm closes both streams, as in the reference implementation (docs/design.md §3): it
        # normalises the encoder output (similarity map, downstream features) and the decoder output before
        # the head.
        self.norm = norm_layer(dim)

        # Query stream (decoder): block m reads encoder block (m+1)·L/L' − 1 (docs/design.md §1).
        self.decoder_blocks = nn.ModuleList(
            [DecoderBlock(dim, c.num_heads, c.mlp_ratio) for _ in range(c.decoder_depth)]
        )
        step = c.depth // c.decoder_depth
        self.decoder_sources = {(m + 1) * step - 1: m for m in range(c.decoder_depth)}

        # Targets (Eq. 12).
        self.teacher: Teacher | None = None
        if c.target == "features":
            self.teacher = Teacher(
                load_teacher(c.teacher_arch, c.teacher_path, c.teacher_img_size), self.grid
            )
            # The teacher is rebuilt from its own file: keep it out of SemAIM checkpoints.
            self.register_state_dict_post_hook(_drop_teacher_keys)
            self.register_load_state_dict_post_hook(_ignore_missing_teacher_keys)
            self.target_dim = self.teacher.dim
        else:
            self.target_dim = pixel_target_dim(c.patch_size, c.in_chans)
        self.decoder_head = Mlp(dim, int(dim * c.mlp_ratio), self.target_dim, act_layer=nn.GELU)

        self._init_weights()

    # ------------------------------------------------------------------ init
    def _init_weights(self) -> None:
        """MAE's initialisation: xavier-uniform linears (patch embedding too), cls ~ N(0, 0.02)."""
        w = self.patch_embed.proj.weight.data
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.normal_(self.cls_token, std=0.02)
        for name, module in self.named_modules():
            if name.startswith("teacher"):
                continue
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    # ------------------------------------------------------------------ checks
    def _check_images(self, images: torch.Tensor) -> None:
        expected = (self.config.in_chans, *self.img_size)
        if images.dim() != 4 or tuple(images.shape[1:]) != expected:
            raise DataError(
                f"images: expected (B, {', '.join(map(str, expected))}), got {tuple(images.shape)}"
            )

    def _check_centerness(self, c: torch.Tensor, batch_size: int) -> None:
        if tuple(c.shape) != (batch_size, self.num_patches):
            raise DataError(
                f"centerness: expected ({batch_size}, {self.num_patches}) for {batch_size} images on a "
                f"{self.grid[0]}x{self.grid[1]} grid, got {tuple(c.shape)}"
            )

    # ------------------------------------------------------------------ encoder
    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """``x = [cls; PatchEmbed(I)] + pos``: ``(B, 1+N, D)`` in raster order."""
        x = self.patch_embed(images) + self.pos_embed[:, 1:]
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(x.shape[0], -1, -1)
        return torch.cat([cls, x], dim=1)

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        """The encoder with no mask (as fine-tuning and timm run it), final norm: ``(B, 1+N, D)``."""
        self._check_images(images)
        h = self.embed(images)
        for block in self.blocks:
            h = block(h)
        return self.norm(h)

    @torch.no_grad()
    def order_map(self, images: torch.Tensor, teacher_tokens: torch.Tensor | None = None) -> torch.Tensor:
        """The map the order is read from (Eq. 2, or the cls attention): ``(B, N)``, no grad, eval mode.

        With a teacher, ``S`` of its tokens; otherwise this model's unmasked encoder, as the reference
        implementation does every step (:func:`~semaim.model.orders.encoder_map`).
        """
        if self.teacher is not None:
            return similarity_map(teacher_tokens if teacher_tokens is not None else self.teacher(images))
        return encoder_map(self, images, self.config.center_map)

    def compute_centerness(
        self,
        images: torch.Tensor,
        generator: torch.Generator | None = None,
        order_map: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Centerness ``C (B, N)`` of the configured order for these images (Eq. 2-6).

        ``order_map`` (``(B, N)``) overrides :meth:`order_map`: pass the map of an EMA copy or of a frozen
        order-source encoder (:func:`~semaim.model.orders.encoder_map`).
        """
        c = self.config
        if c.order in NEEDS_MAP and order_map is None:
            order_map = self.order_map(images)
        return centerness(
            c.order,
            images.shape[0],
            self.grid,
            similarity=order_map if c.order in NEEDS_MAP else None,
            lam=c.lam,
            generator=generator,
            device=images.device,
            num_centers=c.num_centers,
            nms_radius=c.nms_radius,
            center_filter=c.center_filter,
        )

    # ------------------------------------------------------------------ the two streams
    def _predict_ordered(self, images: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
        """Fast path (docs/design.md §2): gather into ``π``, causal SDPA, back to raster. ``-> (B, N, T)``."""
        x = self.patch_embed(images) + self.pos_embed[:, 1:]
        dim = x.shape[-1]
        index = order[..., None].expand(-1, -1, dim)
        x = x.gather(1, index)
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(x.shape[0], -1, -1)
        h = torch.cat([cls, x], dim=1)
        g = self.pos_embed[0, 1:][order]  # g⁰ = p, the query of each patch, in order
        for i, block in enumerate(self.blocks):
            h = block(h, is_causal=True)  # Eq. 7 == causal attention in order
            if i in self.decoder_sources:
                # Eq. 9: query k sees cls and the first k content tokens, never its own patch.
                g = self.decoder_blocks[self.decoder_sources[i]](g, h[:, :-1], is_causal=True)
        pred = self.decoder_head(self.norm(g))  # Eq. 11
        return pred.scatter(1, order[..., None].expand_as(pred), pred)

    def _predict_masked(self, images: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
        """Oracle: raster order, explicit boolean masks of Eq. 7 and Eq. 9. ``-> (B, N, T)`` raster."""
        b, n = order.shape
        rank = torch.empty_like(order).scatter_(1, order, torch.arange(n, device=order.device).expand(b, n))
        enc_mask, dec_mask = encoder_mask(rank), decoder_mask(rank)
        h = self.embed(images)
        g = self.pos_embed[:, 1:].expand(b, -1, -1)
        for i, block in enumerate(self.blocks):
            h = block(h, attn_mask=enc_mask)
            if i in self.decoder_sources:
                g = self.decoder_blocks[self.decoder_sources[i]](g, h, attn_mask=dec_mask)
        return self.decoder_head(self.norm(g))

    # ------------------------------------------------------------------ targets and loss
    def targets(self, images: torch.Tensor, teacher_tokens: torch.Tensor | None = None) -> torch.Tensor:
        """Eq. 12 targets ``(B, N, target_dim)`` in raster patch order."""
        c = self.config
        if self.teacher is not None:
            if teacher_tokens is None:
                teacher_tokens = self.teacher(images)
            return teacher_tokens[:, 1:].float()
        # In fp32 even under autocast: the blur and the per-patch normalisation are what the model is graded
        # against, and bf16 would move them by up to 0.03.
        with torch.autocast(images.device.type, enabled=False):
            return pixel_targets(images.float(), c.patch_size, c.norm_pix, c.blur_sigma, c.blur_kernel)

    def loss(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return feature_loss(pred, target) if self.teacher is not None else pixel_loss(pred, target)

    def _run(self, images, centerness, generator, predict) -> SemAIMOutput:
        self._check_images(images)
        teacher_tokens = self.teacher(images) if self.teacher is not None else None
        if centerness is None:
            needs_map = self.config.order in NEEDS_MAP
            order_map = self.order_map(images, teacher_tokens) if needs_map else None
            centerness = self.compute_centerness(images, generator, order_map)
        else:
            self._check_centerness(centerness, images.shape[0])
        # Stable sort: ties (possible only for hand-made C) are broken by raster index, as the masks do.
        order = torch.argsort(centerness, dim=1, stable=True)
        pred = predict(images, order)
        target = self.targets(images, teacher_tokens)
        return SemAIMOutput(self.loss(pred, target), pred, target, centerness, order)

    def forward(
        self,
        images: torch.Tensor,
        centerness: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> SemAIMOutput:
        """One pretraining step's forward (fast formulation).

        Args:
            images: ``(B, C, H, W)``, normalised.
            centerness: ``(B, N)``; ``None`` computes the configured order (for ``semantic``,
                ``similarity`` and ``multi-center``: a no-grad, eval-mode, unmasked encoder pass).
            generator: random source for the order's noise.
        """
        return self._run(images, centerness, generator, self._predict_ordered)

    def forward_reference(self, images: torch.Tensor, centerness: torch.Tensor) -> SemAIMOutput:
        """The same computation as :meth:`forward` with the explicit masks of Eq. 7 and Eq. 9."""
        return self._run(images, centerness, None, self._predict_masked)

    # ------------------------------------------------------------------ export
    def encoder_state_dict(self) -> dict[str, torch.Tensor]:
        """The encoder alone, in timm's ``VisionTransformer`` key format."""
        return {k: v for k, v in self.state_dict().items() if k.split(".")[0] in ENCODER_KEYS}

    def no_weight_decay(self) -> set[str]:
        """Parameters kept out of weight decay besides norms and biases (timm's convention)."""
        return {"cls_token", "pos_embed"}


def _drop_teacher_keys(module: nn.Module, state_dict: dict, prefix: str, local_metadata: Any) -> None:
    for key in [k for k in state_dict if k.startswith(prefix + "teacher.")]:
        del state_dict[key]


def _ignore_missing_teacher_keys(module: nn.Module, incompatible_keys: Any) -> None:
    missing = incompatible_keys.missing_keys
    missing[:] = [k for k in missing if ".teacher." not in f".{k}"]
