"""Every order on the same images: the paper's Fig. 2 / S1.

``order_figure`` draws one row per image: the image, the order map of each order kind overlaid on it
(patch colour = when it is predicted, warm = early), the last block's cls self-attention and the
similarity map S of Eq. 2.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from ..data.folders import IMAGE_EXTENSIONS, open_image
from ..data.transforms import PretrainTransform
from ..errors import ConfigError, DataError, MissingFileError
from ..model.orders import ORDERS, centerness, encoder_map

SAMPLES = ("astronaut", "chelsea", "coffee", "rocket", "motorcycle_left", "hubble_deep_field")


# --------------------------------------------------------------------------- inputs
def load_images(paths: list[str | Path]) -> list[Image.Image]:
    """RGB images from files and folders (folders: every image inside, sorted)."""
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files += sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_EXTENSIONS)
        elif p.is_file():
            files.append(p)
        else:
            raise MissingFileError(f"image not found: {p}")
    if not files:
        raise DataError(f"no images found in {[str(p) for p in paths]}")
    return [open_image(f, "RGB") for f in files]  # 16-bit images scaled, corrupt files named


def sample_images(names: list[str] | None = None) -> list[Image.Image]:
    """scikit-image's bundled photos (no download)."""
    import skimage.data

    out = []
    for name in names or SAMPLES[:4]:
        if name not in SAMPLES:
            raise ConfigError(f"--samples: unknown photo {name!r}; choose from {SAMPLES}")
        array = getattr(skimage.data, name)()
        if array.ndim == 2:
            array = np.stack([array] * 3, axis=-1)
        out.append(Image.fromarray(array[..., :3]))
    return out


def dataset_images(base, count: int) -> list[Image.Image]:
    """The first ``count`` images of an opened dataset, as RGB PIL images."""
    out = []
    for i in range(min(count, len(base))):
        img = base.load(i)
        if isinstance(img, torch.Tensor):
            img = Image.fromarray(img[0].numpy())
        out.append(img.convert("RGB"))
    return out


def center_square(img: Image.Image) -> Image.Image:
    w, h = img.size
    s = min(w, h)
    return img.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))


# --------------------------------------------------------------------------- maps
@torch.no_grad()
def encoder_maps(vit: nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(S, A)``, both ``(B, N)``: the similarity map (Eq. 2) and the last block's cls attention.

    ``vit`` is any timm ViT with a cls token (the exported encoder, or a teacher), or a ``SemAIM``; both
    maps come from :func:`semaim.model.orders.encoder_map`, the function the orders use.
    """
    return encoder_map(vit, images, "similarity"), encoder_map(vit, images, "attention")


def order_ranks(
    kind: str, similarity: torch.Tensor, grid: tuple[int, int], seed: int = 0, num_centers: int = 2
) -> torch.Tensor:
    """``(B, h, w)`` position of each patch in the order of ``kind`` (0 = predicted first)."""
    g = torch.Generator().manual_seed(seed)
    c = centerness(
        kind, similarity.shape[0], grid, similarity=similarity, generator=g, num_centers=num_centers
    )
    return c.argsort(1).argsort(1).reshape(-1, *grid)


# --------------------------------------------------------------------------- figures
def order_figure(
    vit: nn.Module,
    images: list[Image.Image],
    img_size: tuple[int, int],
    *,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    out: str | Path,
    pdf: bool = False,
    title: str | None = None,
    seed: int = 0,
    dpi: int = 110,
) -> Path:
    """Write the order figure; returns the PNG's path (and a PDF beside it with ``pdf``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    transform = PretrainTransform(img_size, mean, std, 3, train=False)
    shown = [center_square(img) if img.size[0] != img.size[1] else img for img in images]
    batch = torch.stack([transform(img) for img in shown])
    grid = tuple(vit.patch_embed.grid_size)
    similarity, attention = encoder_maps(vit, batch)
    ranks = {kind: order_ranks(kind, similarity, grid, seed) for kind in ORDERS}
    n_patches = grid[0] * grid[1]
    columns = ["image", *ORDERS, "cls attention", "similarity S"]
    rows = len(shown)
    fig, axes = plt.subplots(
        rows,
        len(columns),
        figsize=(1.55 * len(columns), 1.55 * rows + 0.9),
        squeeze=False,
        layout="constrained",
    )
    order_im = map_im = None
    for r, img in enumerate(shown):
        display = np.asarray(img.resize((max(img_size[1], 128), max(img_size[0], 128)), Image.BICUBIC))
        extent = (0, display.shape[1], display.shape[0], 0)
        for c, name in enumerate(columns):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(name, fontsize=9)
            ax.imshow(display, extent=extent)
            if name == "image":
                continue
            if name in ORDERS:
                values = ranks[name][r].float().numpy() / (n_patches - 1)
                order_im = ax.imshow(
                    values, cmap="jet_r", vmin=0, vmax=1, alpha=0.6, extent=extent, interpolation="nearest"
                )
            else:
                m = (attention if name == "cls attention" else similarity)[r].reshape(grid).numpy()
                m = (m - m.min()) / (m.max() - m.min() + 1e-12)
                map_im = ax.imshow(
                    m, cmap="viridis", vmin=0, vmax=1, alpha=0.7, extent=extent, interpolation="nearest"
                )
    bar = fig.colorbar(
        order_im, ax=axes[:, 1 : 1 + len(ORDERS)], location="bottom", shrink=0.5, aspect=40, pad=0.02
    )
    bar.set_ticks([0, 1], labels=["predicted first", "predicted last"])
    bar = fig.colorbar(map_im, ax=axes[:, -2:], location="bottom", shrink=0.9, aspect=20, pad=0.02)
    bar.set_ticks([0, 1], labels=["low", "high"])
    if title:
        fig.suptitle(title, fontsize=10)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=dpi)
    if pdf:
        fig.savefig(out.with_suffix(".pdf"))
    plt.close(fig)
    return out
