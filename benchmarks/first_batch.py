"""Seconds from nothing to the first training batch of a big image folder, and of its pack.

The folder: `--files` JPEGs (default 100,000) in 100 class folders, each a different crop of
matplotlib's grace_hopper.jpg at 160x120 (small, so making the folder takes a minute, not an
hour; the scan and the file count are what a big folder costs). Each row is a fresh process:

  folder, cold    scan the folder, estimate the normalisation (128 images decoded), start the
                  DataLoader workers, decode the first batch of 256
  folder, cached  the same with the statistics cached by the first run
  pack            `--data packed:FILE`: open the pack (index checked), exact statistics from it,
                  workers, first batch

    python -m benchmarks.first_batch                 # 100k files: about 5 minutes in all
    python -m benchmarks.first_batch --files 20000
"""

from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import matplotlib.cbook
import numpy as np
from PIL import Image

from benchmarks.pipeline import cpu_name
from resnetlab.data.packing import pack_folder

PHOTO = Path(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))
CLASSES = 100
FIRST_BATCH = """
import sys, time
start = time.perf_counter()
from resnetlab.data import load_dataset, make_loader
train = load_dataset(sys.argv[1], "train", val_size=5000, image_size=128)
loader = make_loader(train, batch_size=256, train=True, device="cpu", num_workers=2)
x, y = next(iter(loader))
print(f"{time.perf_counter() - start:.2f} {len(train)}")
"""


def make_folder(root: Path, files: int) -> None:
    """`files` JPEGs, 100 per distinct crop, spread over 100 class folders."""
    rng = np.random.default_rng(0)
    with Image.open(PHOTO) as photo:
        source = photo.convert("RGB")
    variants = []
    for _ in range(files // 100 or 1):
        left, top = int(rng.integers(0, 200)), int(rng.integers(0, 300))
        image = source.resize((160, 120), Image.Resampling.BILINEAR, box=(left, top, left + 300, top + 225))
        encoded = io.BytesIO()
        image.save(encoded, "JPEG", quality=90)
        variants.append(encoded.getvalue())
    for c in range(CLASSES):
        (root / f"class{c:03d}").mkdir(parents=True)
    for i in range(files):
        (root / f"class{i % CLASSES:03d}" / f"{i:07d}.jpg").write_bytes(
            variants[i // CLASSES % len(variants)]
        )


def first_batch(data: str, home: Path) -> tuple[float, int]:
    """(seconds, training images) of a fresh process reading `data` up to its first batch."""
    env = {**os.environ, "HOME": str(home), "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, "-c", FIRST_BATCH, data], env=env, capture_output=True, text=True, check=True
    ).stdout.split()
    return float(out[0]), int(out[1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=100_000)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        root, home = Path(tmp) / "big", Path(tmp) / "home"
        home.mkdir()
        start = time.perf_counter()
        make_folder(root, args.files)
        made = time.perf_counter() - start
        start = time.perf_counter()
        pack_folder(root, Path(tmp) / "big.pack")
        packed = time.perf_counter() - start
        rows = [
            ("folder, cold", *first_batch(f"imagefolder:{root}", home)),
            ("folder, cached", *first_batch(f"imagefolder:{root}", home)),
            ("pack", *first_batch(f"packed:{Path(tmp) / 'big.pack'}", home)),
        ]
    print(f"{args.files:,} files in {CLASSES} classes (made in {made:.0f} s, packed in {packed:.0f} s on")
    print(f"{os.cpu_count()} cores); first batch of 256 at 128 px, 2 workers, {cpu_name()}")
    print(f"{'path':<16} {'images':>8} {'seconds':>8}")
    for name, seconds, images in rows:
        print(f"{name:<16} {images:>8,} {seconds:>8.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
