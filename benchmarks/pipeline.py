"""Image-folder decoding (img/s on one core): the per-image way against resnetlab's folder paths.

Rows, each at every crop size:
  per-image   the way torchvision's ImageFolder + RandomResizedCrop does it, written out here
              (torchvision is not a dependency): Pillow open, convert to RGB, crop the random
              box, resize it, flip, to a uint8 tensor
  full        resnetlab's `FolderDataset.load` with --decode full: the same box, one resize
  reduced     --decode reduced: JPEGs decoded at the smallest DCT scale that fills the crop
  pack-320    the folder packed by `resnetlab data pack` (long side at most 320 px, JPEG quality
              90), read from its memory map with --decode reduced; pack-256 the same at 256 px
  raw-256     packed with --raw at 256 px: no decoding at all, only the crop's resize

The folder: real-photo JPEGs at ImageNet sizes, made from matplotlib's grace_hopper.jpg: random
crops, a colour shift, re-encoded at quality 90; 80% about 500x375 and 20% from 800x600 to
1024x768. One process, one thread: the figures are per core, and a DataLoader with W workers
scales them by about W. Rows run in interleaved rounds (each row once, then again) and report
their median; ratios are of medians. The last column is the cores it takes to feed a GPU that
trains at 3,000 img/s (a ResNet-50 in bf16 on one H100).

The time to pack the folder (one process) is printed too.

    python -m benchmarks.pipeline                  # 300 images, 3 rounds: about two minutes
    python -m benchmarks.pipeline --images 1000 --sizes 224,160,128 --repeats 5
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import matplotlib.cbook
import numpy as np
import torch
from PIL import Image

from resnetlab.data.folder import FolderDataset, random_resized_box
from resnetlab.data.packed import load_pack
from resnetlab.data.packing import pack_folder

PHOTO = Path(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))
GPU_RATE = 3000  # img/s, ResNet-50 bf16 training on one H100
ROW = "{:<10} {:>5} {:>9} {:>15} {:>8} {:>14}"
PACKS = {"pack-320": (320, False), "pack-256": (256, False), "raw-256": (256, True)}  # max side, raw


def make_folder(root: Path, n: int, seed: int = 0) -> FolderDataset:
    """`n` JPEGs in root/photo/, as the module docstring describes."""
    rng = np.random.default_rng(seed)
    (root / "photo").mkdir(parents=True)
    with Image.open(PHOTO) as photo:
        source = photo.convert("RGB")
    for i in range(n):
        w, h = (500, 375) if rng.random() < 0.8 else (int(rng.integers(800, 1025)), 0)
        h = h or round(w * 3 / 4)
        crop_w, crop_h = int(rng.integers(300, 513)), int(rng.integers(300, 601))
        left, top = int(rng.integers(0, 513 - crop_w)), int(rng.integers(0, 601 - crop_h))
        image = source.crop((left, top, left + crop_w, top + crop_h)).resize((w, h), Image.Resampling.BICUBIC)
        shift = rng.uniform(0.8, 1.2, 3)
        pixels = np.clip(np.asarray(image, dtype=np.float32) * shift, 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(root / "photo" / f"{i:05d}.jpg", quality=90)
    paths = np.array(sorted(f"photo/{p.name}".encode() for p in (root / "photo").iterdir()))
    return FolderDataset(
        root, paths, np.zeros(len(paths), np.int64), ["photo"], mean=(0.5,) * 3, std=(0.25,) * 3
    )


def per_image(dataset: FolderDataset, size: int) -> Callable[[int, np.random.Generator], torch.Tensor]:
    def load(i: int, rng: np.random.Generator) -> torch.Tensor:
        with Image.open(dataset.path(i)) as file:
            image = file.convert("RGB")
        box = random_resized_box(image.size, rng=rng)
        image = image.crop(box).resize((size, size), Image.Resampling.BILINEAR)
        if rng.random() < 0.5:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return torch.from_numpy(np.array(image)).permute(2, 0, 1)

    return load


def resnetlab_path(dataset: FolderDataset, size: int, decode: str) -> Callable:
    view = FolderDataset(
        dataset.root, dataset.paths, dataset.labels, dataset.classes, mean=dataset.mean, std=dataset.std,
        image_size=size, decode=decode,
    )  # fmt: skip
    return lambda i, rng: view.load(i, rng, flip=True)


def packed_path(pack: Path, size: int) -> Callable:
    view = load_pack(pack, "train", image_size=size, decode="reduced")
    return lambda i, rng: view.load(i, rng, flip=True)


def rate(load: Callable, n: int, seed: int) -> float:
    """Images per second over one pass of `n` images."""
    rng = np.random.default_rng(seed)
    start = time.perf_counter()
    for i in range(n):
        load(i, rng)
    return n / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--sizes", default="224,160", help="crop sides, pixels")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds per row")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    sizes = [int(s) for s in args.sizes.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        dataset = make_folder(Path(tmp) / "photos", args.images)
        packs, pack_seconds = {}, {}
        for name, (side, raw) in PACKS.items():
            packs[name] = Path(tmp) / f"{name}.pack"
            start = time.perf_counter()
            pack_folder(dataset.root, packs[name], max_side=side, raw=raw, workers=1)
            pack_seconds[name] = time.perf_counter() - start
        pack_bytes = {name: pack.stat().st_size for name, pack in packs.items()}
        rows = {
            (name, size): load
            for size in sizes
            for name, load in (
                ("per-image", per_image(dataset, size)),
                ("full", resnetlab_path(dataset, size, "full")),
                ("reduced", resnetlab_path(dataset, size, "reduced")),
                *((name, packed_path(pack, size)) for name, pack in packs.items()),
            )
        }
        rows[next(iter(rows))](0, np.random.default_rng(0))  # warm the file cache and Pillow
        rates: dict[tuple[str, int], list[float]] = {key: [] for key in rows}
        for round_ in range(args.repeats):
            for key, load in rows.items():
                rates[key].append(rate(load, args.images, seed=round_))
    print(f"{args.images} JPEGs, {args.repeats} rounds, one core of: {cpu_name()}")
    print(ROW.format("path", "crop", "img/s", "(range)", "ratio", "cores @ 3k/s"))
    for (name, size), values in rates.items():
        median, base = statistics.median(values), statistics.median(rates[("per-image", size)])
        spread = f"{min(values):.0f}-{max(values):.0f}"
        print(
            ROW.format(
                name, size, f"{median:.0f}", spread, f"{median / base:.2f}x", f"{GPU_RATE / median:.1f}"
            )
        )
    for name, seconds in pack_seconds.items():
        megabytes = pack_bytes[name] / 1e6
        speed = f"{seconds:.1f} s on one core ({args.images / seconds:.0f} img/s)"
        print(f"{name}: packed in {speed}, {megabytes:.1f} MB")
    return 0


def cpu_name() -> str:
    """The `lscpu` model name (Linux), else what Python knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


if __name__ == "__main__":
    raise SystemExit(main())
