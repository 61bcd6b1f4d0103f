"""What the evaluation commands share: which encoder to evaluate, and its features on both splits."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch
from torch import nn

from ..config import EncoderConfig, FeaturesConfig
from ..data.splits import labelled_subset
from ..encoder import encoder_from_checkpoint, load_encoder, model_args, random_encoder
from ..engine.distributed import resolve_device
from ..engine.run import resolve_precision
from ..errors import ConfigError
from ..presets import load_preset
from .features import RawPixels, extract_features


@dataclass
class EncoderChoice:
    module: nn.Module
    img_size: tuple[int, int]
    in_chans: int
    cache_key: str  # identifies the weights by content, not by file name
    description: str


def state_fingerprint(state: dict[str, torch.Tensor]) -> str:
    """A hash of every tensor of a state dict (names, shapes, dtypes, values): equal weights, equal hash."""
    digest = hashlib.sha1()
    for name, tensor in sorted(state.items()):
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def weights_fingerprint(module: nn.Module) -> str:
    """A hash of every parameter and buffer (names, shapes, values): equal weights, equal key."""
    return state_fingerprint(module.state_dict())


def choose_encoder(cfg: EncoderConfig) -> EncoderChoice:
    """The encoder of ``cfg``: a checkpoint's, a random one of the preset's shape, or raw pixels."""
    if cfg.checkpoint:
        vit = load_encoder(cfg.checkpoint)
        size, chans = tuple(vit.patch_embed.img_size), vit.patch_embed.proj.in_channels
        return EncoderChoice(vit, size, chans, weights_fingerprint(vit), f"checkpoint {cfg.checkpoint}")
    model = load_preset(cfg.preset).model
    img = (model.img_size, model.img_size) if isinstance(model.img_size, int) else tuple(model.img_size)
    if cfg.random:
        vit = random_encoder(model, cfg.init_seed)
        return EncoderChoice(vit, img, model.in_chans, weights_fingerprint(vit), f"random {cfg.preset}")
    return EncoderChoice(RawPixels(), img, model.in_chans, f"pixels:{img}", "raw pixels")


def require_starting_encoder(cfg: EncoderConfig, command: str) -> None:
    """Refuse, naming the flags ``command`` offers, an encoder choice a trained run cannot start from: none,
    both, or the raw-pixel floor (which ``knn`` and ``linprobe`` offer, and fine-tuning does not)."""
    offered = (
        "--checkpoint PATH (a pretraining or fine-tuning checkpoint, or an exported encoder) or --random"
    )
    if cfg.pixels:
        raise ConfigError(
            f"encoder.pixels: {command} trains an encoder, raw pixels have none; give {offered}"
        )
    if not cfg.checkpoint and not cfg.random:
        raise ConfigError(
            f"encoder: {command} needs an encoder to start from: {offered} (the scratch baseline)"
        )
    if cfg.checkpoint and cfg.random:
        raise ConfigError(
            f"encoder: both --checkpoint ({cfg.checkpoint}) and --random are set; {command} starts from one"
        )


def starting_weights(cfg: EncoderConfig) -> tuple[dict[str, torch.Tensor], dict, str]:
    """``(state dict, VisionTransformer args, description)`` of the encoder a fine-tuning run starts from:
    a checkpoint's, or (the scratch baseline) the initialisation pretraining would start from."""
    if cfg.pixels:
        raise ConfigError("encoder.pixels: fine-tuning needs an encoder (--checkpoint or --random)")
    if cfg.checkpoint:
        state, args = encoder_from_checkpoint(cfg.checkpoint)
        return state, args, f"checkpoint {cfg.checkpoint}"
    model = load_preset(cfg.preset).model
    vit = random_encoder(model, cfg.init_seed)
    return vit.state_dict(), model_args(model), f"random {cfg.preset} (seed {cfg.init_seed})"


def split_features(cfg: FeaturesConfig, enc: EncoderChoice, progress: bool = True):
    """``(train_features, train_labels, test_features, test_labels)`` for the chosen encoder."""
    device = resolve_device(cfg.device)
    precision = resolve_precision(cfg.precision, device)
    out = []
    for split in ("train", "test"):
        f, y = extract_features(
            enc.module,
            cfg.data,
            split,
            enc.img_size,
            in_chans=enc.in_chans,
            pool=cfg.pool,
            batch_size=cfg.batch_size,
            workers=cfg.workers,
            device=device,
            precision=precision,
            cache=cfg.cache,
            cache_key=enc.cache_key,
            progress=progress,
        )
        out += [f, y]
    if cfg.draws_subset:  # a label-efficiency floor
        subset, _ = labelled_subset(
            out[1],
            val_size=cfg.val_size,
            split_seed=cfg.split_seed,
            per_class=cfg.labels_per_class,
            fraction=cfg.label_fraction,
            seed=cfg.subset_seed,
            limit=cfg.limit,
            prefix="features.",
        )
        out[0], out[1] = out[0][subset], out[1][subset]
    return tuple(out)
