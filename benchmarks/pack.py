"""How long `resnetlab data pack` takes on a folder of photos at ImageNet sizes, on every core.

The folder is `benchmarks.pipeline`'s (crops of matplotlib's grace_hopper.jpg, 80% at 500x375,
20% from 800x600 to 1024x768, JPEG quality 90): `--distinct` of them (default 5,000), copied
under new names up to `--images` files (default 50,000, about 3 GB), since making a photo takes
longer than packing it. Every file is decoded when packed, copy or not. Packed with the defaults
(long side 256, quality 90) by the command a user runs, in a fresh process.

    python -m benchmarks.pack                  # 50,000 photos: about 10 minutes on 2 cores
    python -m benchmarks.pack --images 5000
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.pipeline import cpu_name, make_folder
from resnetlab.data.loader import available_cpus


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=50_000)
    parser.add_argument("--distinct", type=int, default=5_000, help="photos made; the rest are copies")
    parser.add_argument("--dir", help="make the folder here (default: a temporary folder)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        root, out = Path(tmp) / "photos", Path(tmp) / "photos.pack"
        start = time.perf_counter()
        make_folder(root, min(args.distinct, args.images))
        made_files = sorted((root / "photo").iterdir())
        for i in range(len(made_files), args.images):
            shutil.copyfile(made_files[i % len(made_files)], root / "photo" / f"{i:06d}.jpg")
        made = time.perf_counter() - start
        folder_bytes = sum(p.stat().st_size for p in (root / "photo").iterdir())
        start = time.perf_counter()
        command = [
            sys.executable,
            "-m",
            "resnetlab",
            "data",
            "pack",
            f"imagefolder:{root}",
            "--out",
            str(out),
        ]
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        seconds = time.perf_counter() - start
        pack_bytes = out.stat().st_size
    cores = available_cpus()
    folder = f"{args.images:,} photos ({len(made_files):,} distinct), {folder_bytes / 1e9:.2f} GB"
    folder += f" (made in {made:.0f} s)"
    print(f"{folder}, {cores} cores of {cpu_name()}")
    rate = f"{seconds:.0f} s, {args.images / seconds:.0f} img/s"
    print(f"resnetlab data pack: {rate}, pack {pack_bytes / 1e9:.2f} GB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
