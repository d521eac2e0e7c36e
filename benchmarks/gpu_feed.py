"""Is the GPU starved? The image-folder loader's img/s at 224 px with this machine's cores, beside the
GPU's own training img/s for resnet50 (bf16, channels_last) at the same batch, in one run.

The folder is real-photo JPEGs at ImageNet sizes, made from matplotlib's grace_hopper.jpg: random
crops, colour-shifted and re-encoded at quality 90, 80% at about 500x375 and 20% at 800x600 to
1024x768. The loader is `resnetlab train`'s: random-resized crops and flips decoded in DataLoader
workers, pinned, copied to the device.

    python -m benchmarks.gpu_feed                                  # on a machine with CUDA
    python -m benchmarks.gpu_feed --device cpu --images 48 --batch-size 16 --steps 2 --train-size 32  # smoke
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import matplotlib.cbook
import numpy as np
import torch
from PIL import Image

from benchmarks.gpu import chosen_device, device_name
from benchmarks.throughput import measure, synthetic
from resnetlab.data import load_dataset, make_loader
from resnetlab.data.augment import Augment
from resnetlab.data.loader import available_cpus


def photo_folder(root: Path, count: int, seed: int = 0) -> Path:
    """`count` JPEGs in two class folders, cut from grace_hopper.jpg as the module docstring says."""
    photo = Image.open(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)).convert("RGB")
    rng = np.random.default_rng(seed)
    for i in range(count):
        size = (500, 375) if rng.random() < 0.8 else (int(rng.integers(800, 1025)), 0)
        width = size[0]
        height = size[1] or width * 3 // 4
        scale = max(width / photo.width, height / photo.height) * rng.uniform(1.0, 1.3)
        big = photo.resize(
            (round(photo.width * scale), round(photo.height * scale)), Image.Resampling.BILINEAR
        )
        left = int(rng.integers(0, big.width - width + 1))
        top = int(rng.integers(0, big.height - height + 1))
        crop = np.asarray(big.crop((left, top, left + width, top + height)), dtype=np.float32)
        crop = np.clip(crop * rng.uniform(0.8, 1.2, size=3), 0, 255).astype(np.uint8)  # colour shift
        folder = root / ("a" if i % 2 == 0 else "b")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(crop).save(folder / f"{i:05d}.jpg", quality=90)
    return root


def loader_rate(root: Path, batch: int, steps: int, device: torch.device, workers: int) -> float:
    """Images per second the folder loader delivers on `device` over `steps` batches, after 2 + its
    prefetch untimed ones."""
    dataset = load_dataset(f"imagefolder:{root}", "train", image_size=224)
    loader = make_loader(
        dataset, batch_size=batch, train=True, device=device, augment=Augment(flip=True), num_workers=workers
    )
    warmup = 2 + 2 * workers
    seen, start, it = 0, None, iter(loader)
    for index in range(steps + warmup):
        if index == warmup:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
        try:
            x, *_ = next(it)
        except StopIteration:
            it = iter(loader)
            x, *_ = next(it)
        seen += len(x) if index >= warmup else 0
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return seen / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.gpu_feed", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--device", default="auto", help="cuda, cuda:N or cpu (default: cuda when present)")
    parser.add_argument("--images", type=int, default=2000, help="JPEGs in the folder (default: 2000)")
    parser.add_argument("--batch-size", type=int, default=256, help="images per batch (default: 256)")
    parser.add_argument("--steps", type=int, default=30, help="timed batches per row (default: 30)")
    parser.add_argument("--model", default="resnet50", help="what the GPU trains (default: resnet50)")
    parser.add_argument(
        "--train-size", type=int, default=224, help="its input side in pixels (default: 224, as the loader's)"
    )
    args = parser.parse_args(argv)
    device = chosen_device(args.device, "benchmarks.gpu_feed")
    if device is None:
        return 0
    cores = available_cpus()
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        root = photo_folder(Path(tmp) / "photos", args.images)
        print(f"{args.images} JPEGs written in {time.perf_counter() - start:.0f} s; {cores} CPU cores")
        rows = [(w, loader_rate(root, args.batch_size, args.steps, device, w)) for w in sorted({1, cores})]
    need = measure(
        args.model,
        synthetic(args.batch_size * 2, args.train_size),
        args.batch_size,
        max(2, args.steps // 3),
        pipeline="resnetlab",
        amp="bf16",
        layout="channels_last",
        device=device,
    )
    name = device_name(device)
    print(
        f"{args.model} bf16 channels_last trains at {need:.0f} img/s on {name} "
        f"(batch {args.batch_size}, {args.train_size} px)"
    )
    print(f"{'loader':<22} {'workers':>7} {'img/s':>8} {'per worker':>10} {'of the GPU':>10}")
    for workers, rate in rows:
        label = "folder, 224 px RRC"
        print(f"{label:<22} {workers:>7} {rate:>8.0f} {rate / workers:>10.0f} {rate / need:>9.0%}")
    best = max(rate for _, rate in rows)
    verdict = "starved" if best < need else "fed"
    print(
        f"the GPU is {verdict}: the loader gives {best:.0f} img/s with {cores} cores, training takes "
        f"{need:.0f}; {need / (best / cores):.1f} cores of this CPU would feed it"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
