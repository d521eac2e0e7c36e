"""`resnetlab data NAME`: find or download a data set, check it, and say where it is."""

from __future__ import annotations

import argparse
from pathlib import Path

from resnetlab.data.datasets import describe, has_split, list_datasets, load_dataset, locate, published
from resnetlab.data.folder import train_dir
from resnetlab.data.paths import check_data_dir
from resnetlab.data.text import CORPUS, load_corpus


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
        help=f"one of: {', '.join(list_datasets())}, {CORPUS} (text), imagefolder:PATH",
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


def run(args: argparse.Namespace) -> int:
    check_data_dir(args.data_dir)
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
