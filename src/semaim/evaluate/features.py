"""Frozen features of an encoder (or raw pixels) over a dataset split, batched, cached on request.

Features are always extracted in eval mode (dropout and drop-path off) with the evaluation transform
(resize to the encoder's input size, normalise; no augmentation).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from ..config import POOLS
from ..data import open_dataset
from ..data.sampler import AugmentedDataset, collate
from ..data.transforms import PretrainTransform
from ..engine.progress import track
from ..errors import ConfigError


class RawPixels(nn.Module):
    """The floor: the normalised input image, flattened."""

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        return images.flatten(1)[:, None]  # (B, 1, C·H·W): one "cls" token


def pool_tokens(tokens: torch.Tensor, pool: str, num_prefix_tokens: int = 1) -> torch.Tensor:
    """``(B, T, D) -> (B, D)``: the cls token, or the mean of the patch tokens."""
    if pool == "cls":
        return tokens[:, 0]
    if pool == "avg":
        return tokens[:, num_prefix_tokens:].mean(1)
    raise ConfigError(f"pool: expected one of {POOLS}, got {pool!r}")


def extract_features(
    encoder: nn.Module,
    data: str,
    split: str,
    img_size: tuple[int, int],
    *,
    in_chans: int = 3,
    pool: str = "cls",
    batch_size: int = 256,
    workers: int = 2,
    device: torch.device | str = "cpu",
    precision: str = "fp32",
    cache: str | Path | None = None,
    cache_key: str = "",
    progress: bool = True,
    limit: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(features (N, D) float32, labels (N,))`` of every image of ``split`` (the first ``limit``).

    With ``cache`` (a folder) the result is stored under a name derived from ``cache_key`` (which
    should identify the encoder), the data spec and its content's ``fingerprint()``, the split, the
    pool, the input size, the precision and the normalisation; an unreadable cache file is recomputed.
    """
    return extract_pooled_features(
        encoder,
        data,
        split,
        img_size,
        in_chans=in_chans,
        pools=(pool,),
        batch_size=batch_size,
        workers=workers,
        device=device,
        precision=precision,
        cache=cache,
        cache_key=cache_key,
        progress=progress,
        limit=limit,
    )[pool]


def cache_file(folder: Path, key: list[Any]) -> Path:
    """Where the features identified by ``key`` (JSON-serialisable values) are cached in ``folder``."""
    return folder / f"features-{hashlib.sha1(json.dumps(key).encode()).hexdigest()[:16]}.pt"


def load_cached(paths: dict[str, Path]) -> dict[str, tuple[torch.Tensor, torch.Tensor]] | None:
    """The cached ``pool -> (features, labels)``, or ``None`` when a file is missing or unreadable (stale)."""
    if not all(path.is_file() for path in paths.values()):
        return None
    try:
        stored = {pool: torch.load(path, map_location="cpu") for pool, path in paths.items()}
        return {pool: (d["features"], d["labels"]) for pool, d in stored.items()}
    except Exception:  # a corrupt or foreign file: recompute and overwrite it
        return None


@torch.no_grad()
def extract_pooled_features(
    encoder: nn.Module,
    data: str,
    split: str,
    img_size: tuple[int, int],
    *,
    in_chans: int = 3,
    pools: tuple[str, ...] = POOLS,
    batch_size: int = 256,
    workers: int = 2,
    device: torch.device | str = "cpu",
    precision: str = "fp32",
    cache: str | Path | None = None,
    cache_key: str = "",
    progress: bool = True,
    limit: int | None = None,
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """:func:`extract_features` for several pools from one pass over the data: ``pool -> (features, labels)``."""
    for pool in pools:
        if pool not in POOLS:
            raise ConfigError(f"pool: expected one of {POOLS}, got {pool!r}")
    if cache is not None and Path(cache).exists() and not Path(cache).is_dir():
        raise ConfigError(f"--cache / features.cache: {cache} exists and is not a folder")
    base = open_dataset(data, split, in_chans, classify=True)  # a one-class folder has nothing to score
    paths: dict[str, Path] = {}
    if cache is not None:
        key = [
            cache_key,
            data,
            base.fingerprint(),
            split,
            list(img_size),
            in_chans,
            precision,
            list(base.mean),
            list(base.std),
        ] + ([limit] if limit else [])
        paths = {pool: cache_file(Path(cache), [*key, pool]) for pool in pools}
        stored = load_cached(paths)
        if stored is not None:
            return stored
    transform = PretrainTransform(img_size, base.mean, base.std, in_chans, train=False)
    loader = DataLoader(
        AugmentedDataset(base, transform),
        batch_size=batch_size,
        sampler=range(min(limit, len(base))) if limit else None,
        num_workers=workers,
        collate_fn=collate,
        pin_memory=torch.device(device).type == "cuda",
    )
    was_training = encoder.training
    encoder.eval().to(device)
    prefix = getattr(encoder, "num_prefix_tokens", 1)
    feats: dict[str, list[torch.Tensor]] = {pool: [] for pool in pools}
    labels = []
    autocast = torch.autocast(torch.device(device).type, torch.bfloat16, enabled=precision == "bf16")
    try:
        for images, y, _ in track(loader, f"features {split}", enabled=progress):
            with autocast:
                tokens = encoder.forward_features(images.to(device, non_blocking=True))
            for pool in pools:
                feats[pool].append(pool_tokens(tokens, pool, prefix).float().cpu())
            labels.append(y)
    finally:
        encoder.train(was_training)
    labels_t = torch.cat(labels)
    out = {pool: (torch.cat(f), labels_t) for pool, f in feats.items()}
    for pool, path in paths.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save({"features": out[pool][0], "labels": labels_t}, tmp)
        tmp.replace(path)
    return out
