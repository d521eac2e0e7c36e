"""`packed:FILE`: one split of a pack, read like an image folder but from one memory-mapped file.

A `PackedDataset` is a `FolderDataset` whose images come from a pack's records instead of
files, so the loader, the per-(seed, epoch, index) crop draws, exact resume, torchrun's strides
and the unreadable-image handling are the folder's own. The splits are the folder's too: train
is the packed train/ images minus the `held_out_size` hold-out drawn by `seed`, val that
hold-out, test the packed val/ folder. The normalisation is exact over the train split's pixels,
from the per-image sums the pack keeps.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from resnetlab.data.arrays import floor_std
from resnetlab.data.folder import (
    DEFAULT_IMAGE_SIZE,
    FolderDataset,
    choose_split,
    decode_box,
)
from resnetlab.data.pack import Pack, open_pack

PREFIX = "packed:"


class PackedDataset(FolderDataset):
    """A split of a pack: `paths` holds record numbers, `root` the pack's path."""

    def __init__(self, pack: Pack, records: np.ndarray, **settings: object) -> None:
        labels = pack.index["label"][records].astype(np.int64)
        super().__init__(pack.path, records, labels, list(pack.header.classes), **settings)
        self.pack = pack

    def path(self, index: int) -> Path:
        return self.pack.path

    def decode_view(
        self, index: int, view: Callable[[tuple[int, int]], tuple[float, float, float, float]]
    ) -> tuple[Image.Image, tuple[float, float, float, float]]:
        record = int(self.paths[index])
        if self.pack.header.encoding == "raw":
            image = Image.fromarray(self.pack.pixels(record), "RGB")
            return image, view(image.size)
        return decode_box(
            self.pack.image_file(record),
            view,
            self.image_size,
            reduce=self.decode == "reduced",
            name=f"{self.pack.path} image {record}",
            known_upright=True,
        )


def has_packed_test(path: str | Path) -> bool:
    """Whether the pack holds a test split (the folder it was made from had val/)."""
    return open_pack(path).header.counts["test"] > 0


def load_pack(
    path: str | Path,
    split: str,
    *,
    val_size: int = 0,
    seed: int = 0,
    strict: bool = False,
    image_size: int = DEFAULT_IMAGE_SIZE,
    decode: str = "reduced",
) -> PackedDataset:
    """`split` of the pack at `path`, split as `load_folder` splits the folder it came from."""
    pack = open_pack(path)
    train = pack.split("train")
    train_idx, index = choose_split(
        len(train),
        split,
        val_size=val_size,
        seed=seed,
        has_test=pack.header.counts["test"] > 0,
        source=pack.path,
        test_needs="a pack of a folder with train/ and val/",
    )
    mean, std = pack.stats(train[train_idx])
    records = train[index] if index is not None else pack.split("test")
    return PackedDataset(
        pack,
        records,
        mean=tuple(mean.tolist()),
        std=floor_std(std.tolist()),
        image_size=image_size,
        strict=strict,
        decode=decode,
    )
