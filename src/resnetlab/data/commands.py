"""`resnetlab data NAME`: find or download a data set, check it, and say where it is;
`resnetlab data pack imagefolder:PATH --out FILE`: pack an image folder into one file."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from PIL import Image

from resnetlab.data.datasets import (
    SCENES,
    describe,
    has_split,
    list_datasets,
    load_dataset,
    locate,
    published,
)
from resnetlab.data.folder import train_dir
from resnetlab.data.pack import open_pack
from resnetlab.data.packed import PREFIX as PACKED
from resnetlab.data.packing import DEFAULT_MAX_SIDE, DEFAULT_QUALITY, pack_folder
from resnetlab.data.paths import check_data_dir
from resnetlab.data.scenes import SPLIT_SCENES, SceneLayout, draw_scene, fashion_scenes, save_png
from resnetlab.data.text import CORPUS, load_corpus
from resnetlab.errors import Error


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "data",
        help="find or download a data set, verify it and print where its files are",
        description=(
            "Look for the data set in --data-dir, $RESNETLAB_DATA, the distribution's folder "
            "(/usr/share/datasets/fashion-mnist) and ~/.cache/resnetlab, in that order; download it "
            "when missing; verify its checksums; print its files, sizes and splits."
        ),
    )
    parser.add_argument(
        "name",
        metavar="NAME",
        help=f"one of: {', '.join(list_datasets())}, {CORPUS} (text); or `pack` to pack a folder",
    )
    parser.add_argument(
        "folder", nargs="?", metavar="imagefolder:PATH", help="with `pack`: the image folder to pack"
    )
    pack = parser.add_argument_group(
        "resnetlab data pack imagefolder:PATH --out FILE",
        "read an image folder once into one file that `--data packed:FILE` reads 2.5-4x faster per core",
    )
    pack.add_argument("--out", metavar="FILE", help="the pack to write (atomically; a killed run resumes)")
    pack.add_argument(
        "--max-side",
        type=int,
        default=DEFAULT_MAX_SIDE,
        metavar="PX",
        help=f"shrink images whose long side is longer to this many pixels (default {DEFAULT_MAX_SIDE})",
    )
    pack.add_argument(
        "--quality", type=int, default=DEFAULT_QUALITY, help=f"JPEG quality (default {DEFAULT_QUALITY})"
    )
    pack.add_argument("--raw", action="store_true", help="store raw RGB pixels, not JPEG (small images)")
    pack.add_argument("--workers", type=int, metavar="N", help="processes (default: the CPUs available)")
    parser.add_argument(
        "--image-size",
        type=int,
        default=0,
        metavar="PX",
        help="fashion-scenes: the canvas side, as `train --image-size` draws it (default 96)",
    )
    parser.add_argument(
        "--data-dir",
        metavar="DIR",
        help="look here first, and download here (default: $RESNETLAB_DATA, else ~/.cache/resnetlab)",
    )
    parser.add_argument(
        "--no-download", action="store_true", help="fail instead of downloading missing files"
    )
    parser.set_defaults(func=run)


def _scenes(args: argparse.Namespace) -> int:
    """The layout of `fashion-scenes`, its splits, and a picture of the first test scenes."""
    if (
        args.folder
        or args.raw
        or args.workers
        or args.max_side != DEFAULT_MAX_SIDE
        or args.quality != DEFAULT_QUALITY
    ):
        raise Error("fashion-scenes takes --out PNG (the sample picture), --image-size and --data-dir only")
    layout = SceneLayout().at_canvas(args.image_size) if args.image_size else SceneLayout()
    data = published("fashion-mnist", args.data_dir, download=not args.no_download)
    print(
        f"{SCENES}: Fashion-MNIST items composed on a {layout.canvas}x{layout.canvas} grey canvas, "
        f"{layout.min_items}-{layout.max_items} per scene at {layout.min_scale:.3g}-{layout.max_scale:.3g}x "
        "their 28 px, later ones on top"
    )
    print(f"  layout: {layout.record()}")
    print(
        f"  splits: train {SPLIT_SCENES['train']:,} scenes (items of the training part minus "
        f"{layout.val_items:,} held out), val --val-size scenes (those held-out items), test "
        f"{SPLIT_SCENES['test']:,} scenes (test items only)"
    )
    print(
        f"  labels: a class map (0 background, 1 + class where an item's pixel is above {layout.threshold}) "
        f"and a box per item hidden at most {layout.max_hidden:.0%}; scene i is made from (seed, split, i)"
    )
    scenes = fashion_scenes("test", 8, data, layout)
    tiles = []
    for i in range(8):
        scene = scenes.scene(i)
        tiles.append(
            draw_scene(
                scene.image,
                scenes.classes,
                class_map=scene.class_map,
                boxes=scene.boxes,
                labels=scene.labels,
                zoom=3,
            )
        )
    sheet = Image.new("RGB", (4 * tiles[0].width + 12, 2 * tiles[0].height + 4), "white")
    for i, tile in enumerate(tiles):
        sheet.paste(tile, ((i % 4) * (tile.width + 4), (i // 4) * (tile.height + 4)))
    out = Path(args.out or "fashion-scenes.png")
    save_png(sheet, out)
    print(f"  sample: {out} (the first 8 test scenes, masks tinted and boxes drawn)")
    return 0


def _size(n: int) -> str:
    """Decimal units, as file managers show them: 26.4 MB."""
    value, unit = float(n), "B"
    for bigger in ("kB", "MB", "GB"):
        if value < 1000:
            break
        value, unit = value / 1000, bigger
    return f"{value:.0f} B" if unit == "B" else f"{value:.1f} {unit}"


def _report(name: str, data_dir: str | None, header: list[str]) -> None:
    """Load train and test first, so a bad data set prints nothing but its error."""
    train = load_dataset(name, "train", data_dir=data_dir, download=False)
    has_test = has_split(name, "test", val_size=0)
    test = load_dataset(name, "test", data_dir=data_dir, download=False) if has_test else None
    shown = train.classes if train.num_classes <= 12 else [*train.classes[:10], "..."]
    mean = ", ".join(f"{v:.4f}" for v in train.mean)
    std = ", ".join(f"{v:.4f}" for v in train.std)
    for line in (
        *header,
        f"train: {describe(train)}",
        f"test:  {describe(test)}" if test else "test:  none (training holds out --val-size images as val)",
        f"classes: {', '.join(shown)}",
        f"normalisation (train split): mean ({mean}), std ({std})",
    ):
        print(line)


def _report_corpus(data_dir: str | None) -> None:
    """The text corpus: where, what release (by sha256), and the split sizes in bytes."""
    corpus = load_corpus(data_dir)
    size = sum(len(corpus.split(s)) for s in ("train", "val", "test"))
    release = corpus.known_as or "not the release resnetlab's figures were measured on"
    files = f"{len(corpus.files)} files, {corpus.documents:,} documents, {_size(size)}"
    splits = "  ".join(f"{s}: {len(corpus.split(s)):,} bytes" for s in ("train", "val", "test"))
    for line in (
        f"{CORPUS}: {corpus.folder} ({files})",
        f"sha256 {corpus.sha256} ({release})",
        f"{splits} (split by document: every 20th to val, the next to test)",
        "vocabulary: 256 byte values",
    ):
        print(line)


def _pack(args: argparse.Namespace) -> int:
    if not (args.folder or "").startswith("imagefolder:") or not args.out:
        raise Error("usage: resnetlab data pack imagefolder:PATH --out FILE")
    if args.workers is not None and args.workers < 1:
        raise Error(f"--workers must be >= 1, got {args.workers}")
    report = pack_folder(
        args.folder.removeprefix("imagefolder:"),
        args.out,
        max_side=args.max_side,
        quality=args.quality,
        raw=args.raw,
        workers=args.workers,
    )
    if report.unreadable:
        print(
            f"resnetlab: warning: {len(report.unreadable)} unreadable image(s) left out "
            f"(first: {report.unreadable[0]})",
            file=sys.stderr,
        )
    counts = ", ".join(f"{n:,} {split}" for split, n in report.counts.items() if n)
    resumed = f", {report.resumed:,} of them packed before" if report.resumed else ""
    print(
        f"{report.path}: {counts} images{resumed}, {_size(report.size)}, "
        f"{report.seconds:.1f} s; train with --data {PACKED}{report.path}"
    )
    return 0


def _pack_header(path: str) -> list[str]:
    pack = open_pack(path)
    header = pack.header
    stored = "raw RGB" if header.encoding == "raw" else f"JPEG quality {header.quality}"
    return [
        f"{pack.path}: a pack, {_size(pack.path.stat().st_size)} ({stored}, long side at most "
        f"{header.max_side} px; checksums verified when read)"
    ]


def run(args: argparse.Namespace) -> int:
    check_data_dir(args.data_dir)
    pack_flags = args.out or args.raw or args.workers or args.max_side != DEFAULT_MAX_SIDE
    if args.image_size and args.name != SCENES:
        raise Error(f"--image-size goes with {SCENES}, not {args.name}")
    if args.name == "pack":
        return _pack(args)
    if args.name == SCENES:  # --out names the sample picture
        return _scenes(args)
    if args.folder or pack_flags or args.quality != DEFAULT_QUALITY:
        raise Error(f"--out, --max-side, --quality, --raw and --workers go with `pack`, not {args.name}")
    if args.name.startswith(PACKED):
        _report(args.name, args.data_dir, _pack_header(args.name.removeprefix(PACKED)))
        return 0
    if args.name == CORPUS:
        _report_corpus(args.data_dir)
        return 0
    if args.name.startswith("imagefolder:"):
        root = Path(args.name.removeprefix("imagefolder:")).expanduser()
        if not train_dir(root):
            layout = "class folders, no test split"
        else:
            layout = "train/ and val/" if has_split(args.name, "test", val_size=0) else "train/, no val/"
        _report(args.name, args.data_dir, [f"{root}: {layout} (each image is checked when decoded)"])
        return 0
    files = locate(args.name, args.data_dir, download=not args.no_download)
    checked = published(args.name, args.data_dir, download=False)
    width = max(len(path.name) for path in files)
    header = [f"{args.name}: {files[0].parent} ({checked.verified})"]
    header += [f"  {path.name:{width}}  {_size(path.stat().st_size):>9}" for path in files]
    _report(args.name, args.data_dir, header)
    return 0
