"""Images/s of the pretraining data loader alone, on a folder of JPEGs it writes itself.

    python benchmarks/loader.py --images 2000 --size 256 --img-size 224 --workers 0 1 2

The JPEGs are crops of scikit-image's offline photos (no download), so the decode cost is real.
Compare with the step's images/s from `semaim bench`.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image
from torch.utils.data import DataLoader

from semaim.data.folders import ImageFolder
from semaim.data.sampler import AugmentedDataset, EpochSampler, collate
from semaim.data.transforms import PretrainTransform
from semaim.figures.orders import sample_images


def write_jpegs(folder: Path, count: int, size: int) -> None:
    rng = np.random.default_rng(0)
    photos = [np.asarray(p) for p in sample_images()]
    for i in range(count):
        photo = photos[i % len(photos)]
        y = rng.integers(0, photo.shape[0] - size // 2)
        x = rng.integers(0, photo.shape[1] - size // 2)
        crop = Image.fromarray(photo[y : y + size // 2, x : x + size // 2]).resize((size, size))
        crop.save(folder / f"{i:05d}.jpg", quality=90)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--images", type=int, default=2000)
    p.add_argument("--size", type=int, default=256, help="side of the stored JPEGs")
    p.add_argument("--img-size", type=int, default=224, help="the model's input size")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        write_jpegs(Path(tmp), args.images, args.size)
        base = ImageFolder(tmp)
        transform = PretrainTransform((args.img_size, args.img_size), base.mean, base.std)
        for workers in args.workers:
            sampler = EpochSampler(len(base), args.batch_size, 1, seed=0)
            loader = DataLoader(
                AugmentedDataset(base, transform), batch_size=args.batch_size, sampler=sampler,
                num_workers=workers, collate_fn=collate, drop_last=True,
            )  # fmt: skip
            start, seen = time.perf_counter(), 0
            for images, _, _ in loader:
                seen += len(images)
            rate = seen / (time.perf_counter() - start)
            print(f"workers {workers}: {rate:.0f} images/s ({args.size}px JPEG -> {args.img_size}px crops)")


if __name__ == "__main__":
    main()
