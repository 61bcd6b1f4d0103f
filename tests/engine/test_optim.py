"""Learning-rate schedule and weight-decay groups."""

from __future__ import annotations

import math

import pytest
from timm.models.vision_transformer import VisionTransformer
from timm.optim import param_groups_layer_decay
from torch import nn

from semaim.engine.optim import layer_decay_groups, lr_at, param_groups, scaled_lr
from tests.conftest import tiny_model


def test_warmup_then_cosine():
    total, warm, base = 100, 10, 1.0
    assert lr_at(0, total, warm, base) == 0.0
    assert lr_at(5, total, warm, base) == pytest.approx(0.5)
    assert lr_at(10, total, warm, base) == pytest.approx(1.0)
    assert lr_at(55, total, warm, base) == pytest.approx(0.5)
    assert lr_at(100, total, warm, base, min_lr=0.1) == pytest.approx(0.1)
    values = [lr_at(s, total, warm, base) for s in range(10, 101)]
    assert all(a >= b for a, b in zip(values, values[1:], strict=False))
    assert scaled_lr(2e-4, 2048) == pytest.approx(1.6e-3)
    assert math.isfinite(lr_at(3, 3, 5, base))


def test_no_weight_decay_on_norms_biases_cls():
    model = tiny_model()
    decay, no_decay = param_groups(model, 0.05)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    not_decayed = {names[id(p)] for p in no_decay["params"]}
    assert "cls_token" in not_decayed and "blocks.0.norm1.weight" in not_decayed
    assert "blocks.0.attn.qkv.bias" in not_decayed and "blocks.0.attn.qkv.weight" in decayed
    assert "patch_embed.proj.weight" in decayed and "decoder_blocks.0.attn.q.weight" in decayed
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    assert len(decayed) + len(not_decayed) == len(list(model.parameters()))


DECAY, WD = 0.65, 0.05


def small_vit(global_pool: str = "avg", num_classes: int = 10, **kwargs) -> VisionTransformer:
    """A 3-block ViT built as fine-tuning builds its classifier (``avg``: fc_norm, no final norm)."""
    return VisionTransformer(
        img_size=32,
        patch_size=8,
        embed_dim=32,
        depth=3,
        num_heads=2,
        num_classes=num_classes,
        global_pool=global_pool,
        **kwargs,
    )


def segmentation_encoder() -> VisionTransformer:
    """The encoder as the fine-tuned segmenter holds it: no head, final norm replaced by an identity."""
    vit = small_vit("token", num_classes=0)
    vit.norm = nn.Identity()
    return vit


def frozen_patch_embed() -> VisionTransformer:
    vit = small_vit()
    vit.patch_embed.requires_grad_(False)
    return vit


def per_param(model: nn.Module, groups: list[dict]) -> dict[str, tuple[float, float]]:
    """``{name: (lr_scale, weight_decay)}``; every parameter in at most one group."""
    names = {id(p): n for n, p in model.named_parameters()}
    out = {names[id(p)]: (g["lr_scale"], g["weight_decay"]) for g in groups for p in g["params"]}
    assert len(out) == sum(len(g["params"]) for g in groups)
    return out


def beit_rule(vit: VisionTransformer) -> dict[str, tuple[float, float]]:
    """BEiT / MAE by module: layer 0 the embeddings, ``i+1`` block ``i``, ``L+1`` the rest (final norm,
    fc_norm, head); scale ``decay^(L+1-layer)``; no decay on 1-d params, cls, registers, position."""
    depth = len(vit.blocks)
    embeddings = [vit.cls_token, vit.pos_embed, vit.reg_token, *vit.patch_embed.parameters()]
    layer = {id(p): 0 for p in embeddings if p is not None}
    layer |= {id(p): i + 1 for i, block in enumerate(vit.blocks) for p in block.parameters()}
    no_decay = {id(p) for p in (vit.cls_token, vit.pos_embed, vit.reg_token) if p is not None}
    return {
        name: (
            DECAY ** (depth + 1 - layer.get(id(p), depth + 1)),
            0.0 if p.ndim <= 1 or id(p) in no_decay else WD,
        )
        for name, p in vit.named_parameters()
        if p.requires_grad
    }


VITS = {
    "avg pool": lambda: small_vit("avg"),
    "cls pool": lambda: small_vit("token"),
    "registers": lambda: small_vit("avg", reg_tokens=2),
    "segmentation encoder": segmentation_encoder,
    "frozen patch embed": frozen_patch_embed,
}


@pytest.mark.parametrize("build", VITS.values(), ids=VITS.keys())
def test_layer_decay_follows_the_beit_rule(build):
    vit = build()
    got = per_param(vit, layer_decay_groups(vit, WD, DECAY, len(vit.blocks)))
    assert got == beit_rule(vit)  # frozen parameters in no group


def timm_layer_decay(vit: VisionTransformer) -> dict[str, tuple[float, float]]:
    groups = param_groups_layer_decay(vit, WD, no_weight_decay_list=vit.no_weight_decay(), layer_decay=DECAY)
    return per_param(vit, groups)


def test_timm_layer_decay_agrees_only_for_the_avg_pool_classifier():
    """timm numbers layers from the parameters present and merges the final norm into the last block."""
    for build in (VITS["avg pool"], VITS["registers"], VITS["frozen patch embed"]):
        vit = build()
        assert timm_layer_decay(vit) == per_param(vit, layer_decay_groups(vit, WD, DECAY, len(vit.blocks)))

    vit = small_vit("token")  # cls pool: the final norm at the last block's scale, not the head's
    ours, theirs = per_param(vit, layer_decay_groups(vit, WD, DECAY, 3)), timm_layer_decay(vit)
    assert {n for n in ours if ours[n] != theirs[n]} == {"norm.weight", "norm.bias"}
    assert ours["norm.weight"] == (1.0, 0.0) and theirs["norm.weight"] == (DECAY, 0.0)

    vit = segmentation_encoder()  # no head: timm's top layer is the last block, every scale 1/decay higher
    ours, theirs = per_param(vit, layer_decay_groups(vit, WD, DECAY, 3)), timm_layer_decay(vit)
    assert ours.keys() == theirs.keys()
    for name, (scale, decay) in ours.items():
        assert theirs[name] == (pytest.approx(scale / DECAY), decay)

    # Without the model's no_weight_decay() list, timm decays the (3-d) cls token and position embedding.
    vit = small_vit("avg")
    bare = per_param(vit, param_groups_layer_decay(vit, WD, layer_decay=DECAY))
    assert bare["cls_token"][1] == bare["pos_embed"][1] == WD
