"""Images/s of the pretraining input pipeline alone, on a folder of JPEGs it writes itself.

    python benchmarks/loader.py --images 2000 --size 256 --img-size 224 --workers 0 1 2
    python benchmarks/loader.py --size 500x375 --workers 16 --decode pil gpu --step-json bench.json --out loader.json

The JPEGs are crops of scikit-image's offline photos (no download), so the decode cost is real.
``--decode`` picks the pipeline (several: each is measured):

- ``pil`` (what ``semaim pretrain`` runs): the loader's worker processes decode with PIL and apply
  Table S1's augmentation (:class:`semaim.data.transforms.PretrainTransform`); batches are pinned and
  copied to the device when it is a GPU.
- ``gpu``: the workers only read the files; the main process decodes a whole batch with
  ``torchvision.io.decode_jpeg(device=...)`` (nvJPEG on CUDA) and applies the same augmentation, drawn
  from the same per-sample seeds, to the decoded tensors on the device. For when CPU decoding cannot
  keep up with the GPU step. With ``--device cpu`` it runs the same code on the CPU (for testing).
  (torchvision 0.29 deprecates its image decoders in favour of TorchCodec; they still work there.)

Each setting runs for ``--seconds`` after its first batch (worker start-up excluded). Compare with the
step's images/s from ``semaim bench`` (``--step-json`` reads it and says whether the loader keeps up).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler

from semaim.data.folders import ImageFolder
from semaim.data.sampler import AugmentedDataset, collate
from semaim.data.transforms import PretrainTransform
from semaim.engine.distributed import resolve_device
from semaim.errors import ConfigError


def _write_range(
    folder: Path, photos: list[np.ndarray], start: int, stop: int, size: tuple[int, int]
) -> None:
    rng = np.random.default_rng(start)
    for i in range(start, stop):
        photo = photos[i % len(photos)]
        side = rng.uniform(0.6, 1.0)
        h, w = int(photo.shape[0] * side), int(photo.shape[1] * side)
        y, x = rng.integers(0, photo.shape[0] - h + 1), rng.integers(0, photo.shape[1] - w + 1)
        crop = Image.fromarray(photo[y : y + h, x : x + w]).resize(size, Image.BICUBIC)
        crop.save(folder / f"{i:06d}.jpg", quality=90)


def write_jpegs(folder: Path, count: int, size: tuple[int, int], processes: int = 1) -> None:
    """``count`` JPEGs of ``size`` (width, height): random crops of the photos, resized, quality 90."""
    from semaim.figures.order_maps import sample_images

    photos = [np.asarray(p) for p in sample_images()]
    bounds = np.linspace(0, count, processes + 1).astype(int)
    jobs = [
        (folder, photos, int(a), int(b), size) for a, b in zip(bounds[:-1], bounds[1:], strict=True) if b > a
    ]
    if processes <= 1:
        for job in jobs:
            _write_range(*job)
        return
    with multiprocessing.get_context("fork").Pool(processes) as pool:
        pool.starmap(_write_range, jobs)


class Cycle(Sampler):
    """``(index, sample seed)`` for ``total`` samples, cycling over ``n`` files: as long a run as asked."""

    def __init__(self, n: int, total: int) -> None:
        self.n, self.total = n, total

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return ((i % self.n, i) for i in range(self.total))

    def __len__(self) -> int:
        return self.total


class JpegBytes(Dataset):
    """The files' bytes as uint8 tensors, with their sample seeds: all a worker does for ``--decode gpu``."""

    def __init__(self, files: list[Path]) -> None:
        self.files = files

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, item: tuple[int, int]) -> tuple[torch.Tensor, int]:
        from torchvision.io import read_file

        index, seed = item
        return read_file(str(self.files[index])), seed


def collate_bytes(batch: list[tuple[torch.Tensor, int]]) -> tuple[torch.Tensor, list[int], list[int]]:
    """One flat byte tensor per batch (with each file's length), not one tensor per file: a worker passes
    every tensor through its own shared-memory file descriptor, and hundreds per batch run out of them."""
    return (
        torch.cat([data for data, _ in batch]),
        [len(data) for data, _ in batch],
        [seed for _, seed in batch],
    )


def decode_batch(
    flat: torch.Tensor,
    lengths: list[int],
    seeds: list[int],
    transform: PretrainTransform,
    device: torch.device,
) -> torch.Tensor:
    """Decode a batch of JPEG files on ``device`` (one batched call: nvJPEG on CUDA) and augment them
    there, each with the generator its sample seed gives (as :class:`~semaim.data.sampler.AugmentedDataset`)."""
    from torchvision.io import ImageReadMode, decode_jpeg

    images = decode_jpeg(list(flat.split(lengths)), mode=ImageReadMode.RGB, device=device)
    return torch.stack(
        [transform(img, torch.Generator().manual_seed(s)) for img, s in zip(images, seeds, strict=True)]
    )


def make_loader(
    decode: str,
    base: ImageFolder,
    transform: PretrainTransform,
    args: argparse.Namespace,
    workers: int,
    pin: bool,
) -> DataLoader:
    total = args.batch_size * 100_000  # --seconds ends the run long before
    dataset = AugmentedDataset(base, transform) if decode == "pil" else JpegBytes(base.files)
    return DataLoader(
        dataset,
        batch_size=args.batch_size,
        sampler=Cycle(len(base), total),
        num_workers=workers,
        collate_fn=collate if decode == "pil" else collate_bytes,
        pin_memory=pin and decode == "pil",
        drop_last=True,
        prefetch_factor=4 if workers else None,
        persistent_workers=False,
    )


def arrive(decode: str, batch: tuple, transform: PretrainTransform, device: torch.device) -> torch.Tensor:
    """A loader batch as the step receives it: images on ``device`` (for ``gpu``: decoded and augmented there)."""
    if decode == "pil":
        return batch[0].to(device, non_blocking=True)
    return decode_batch(*batch, transform, device)


def measure(
    decode: str,
    base: ImageFolder,
    transform: PretrainTransform,
    args: argparse.Namespace,
    workers: int,
    device: torch.device,
) -> float:
    """Images/s of one pipeline into ``device``, timed from its first batch for ``args.seconds``."""
    loader = iter(make_loader(decode, base, transform, args, workers, device.type == "cuda"))
    arrive(decode, next(loader), transform, device)  # workers started, first batch through
    seen, start = 0, time.perf_counter()
    while time.perf_counter() - start < args.seconds:
        seen += len(arrive(decode, next(loader), transform, device))
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    rate = seen / (time.perf_counter() - start)
    del loader  # stops its workers now, before the next setting starts its own
    return rate


def step_rate(path: Path | None, config: str) -> float | None:
    """The fast step's images/s of ``config`` in a ``semaim bench --out`` file (the first row if absent)."""
    if path is None or not path.is_file():
        return None
    rows = json.loads(path.read_text())
    row = next((r for r in rows if r["config"] == config), rows[0] if rows else None)
    return row["fast_images_per_s"] if row else None


def parse_size(text: str) -> tuple[int, int]:
    """``256`` -> (256, 256); ``500x375`` -> (500, 375): width, height."""
    w, _, h = text.partition("x")
    return int(w), int(h or w)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=2000, help="JPEGs to write (reads cycle over them)")
    p.add_argument("--size", type=parse_size, default=(256, 256), help="stored JPEGs: SIDE or WIDTHxHEIGHT")
    p.add_argument("--img-size", type=int, default=224, help="the model's input size")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument(
        "--decode", nargs="+", choices=["pil", "gpu"], default=["pil"], help="pipelines to measure"
    )
    p.add_argument(
        "--device", help="where batches go and --decode gpu decodes [default: cuda if present, else cpu]"
    )
    p.add_argument("--seconds", type=float, default=10.0, help="measured time per setting")
    p.add_argument(
        "--folder", type=Path, help="write (or reuse) the JPEGs here instead of a temporary folder"
    )
    p.add_argument(
        "--step-json", type=Path, help="a `semaim bench --out` file: the step rate to keep up with"
    )
    p.add_argument("--step-config", default="vit-b16-224", help="its row to read")
    p.add_argument("--out", type=Path, help="write the results as JSON")
    return p.parse_args()


def run(args: argparse.Namespace, folder: Path, device: torch.device) -> dict:
    if not any(folder.glob("*.jpg")):
        start = time.perf_counter()
        write_jpegs(folder, args.images, args.size, processes=max(1, min(multiprocessing.cpu_count(), 16)))
        print(
            f"wrote {args.images} JPEGs of {args.size[0]}x{args.size[1]} in {time.perf_counter() - start:.1f} s"
        )
    base = ImageFolder(folder)
    transform = PretrainTransform((args.img_size, args.img_size), base.mean, base.std)
    step = step_rate(args.step_json, args.step_config)
    results = []
    for decode in args.decode:
        for workers in args.workers:
            rate = measure(decode, base, transform, args, workers, device)
            results.append(
                {
                    "decode": decode,
                    "workers": workers,
                    "device": str(device),
                    "images_per_s": rate,
                    "keeps_up": None if step is None else rate >= step,
                }
            )
            versus = f"; the step consumes {step:.0f}" if step else ""
            print(f"{decode:3s} workers {workers:2d} -> {device}: {rate:7.0f} images/s{versus}", flush=True)
    return {
        "images": len(base),
        "jpeg_size": list(args.size),
        "img_size": args.img_size,
        "batch_size": args.batch_size,
        "seconds": args.seconds,
        "step_config": args.step_config,
        "step_images_per_s": step,
        "results": results,
    }


def main() -> None:
    args = parse_args()
    try:
        device = resolve_device(args.device or "auto")
    except ConfigError as err:
        print(f"loader.py: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    if args.folder:
        args.folder.mkdir(parents=True, exist_ok=True)
        result = run(args, args.folder, device)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            result = run(args, Path(tmp), device)
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
