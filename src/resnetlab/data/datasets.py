"""`load_dataset`: a split of a named data set, found, checked and ready for `make_loader`."""

from __future__ import annotations

import copy
import dataclasses
import functools
import os
from collections.abc import Sequence
from pathlib import Path

import torch

from resnetlab.data import cifar, mnist
from resnetlab.data.arrays import ImageArrays, Published, channel_histogram, histogram_stats, split_indices
from resnetlab.data.folder import DEFAULT_IMAGE_SIZE, FolderDataset, has_test_split, load_folder
from resnetlab.data.packed import PREFIX as PACKED
from resnetlab.data.packed import has_packed_test, load_pack
from resnetlab.data.paths import check_data_dir
from resnetlab.data.scenes import SceneLayout, load_scenes
from resnetlab.data.sources import SOURCES
from resnetlab.errors import Error

SPLITS = ("train", "val", "test")
SCENES = "fashion-scenes"  # Fashion-MNIST items composed into scenes (data/scenes.py)
_READERS = {"idx": mnist, "cifar": cifar}


def list_datasets() -> list[str]:
    return [*SOURCES, SCENES, "imagefolder:PATH", "packed:FILE"]


def is_image_files(name: str) -> bool:
    """Whether `name` is images of any size decoded on the fly and cropped to a chosen side:
    an image folder (imagefolder:PATH) or a pack of one (packed:FILE)."""
    return name.startswith(("imagefolder:", PACKED))


def has_split(name: str, split: str, *, val_size: int) -> bool:
    """Whether data set `name` has `split` when `val_size` examples are asked to be held out.

    val needs a hold-out (val_size > 0); test is the published test part, or a folder's val/
    beside train/ (a folder of class folders only has none).
    """
    if split == "val":
        return val_size > 0
    if split == "test" and name.startswith("imagefolder:"):
        return has_test_split(name.removeprefix("imagefolder:"))
    if split == "test" and name.startswith(PACKED):
        return has_packed_test(name.removeprefix(PACKED))
    return split in SPLITS


def mirror_warning(name: str, flag: str) -> str | None:
    """The warning line for `flag` mirroring images of `name`, where a mirror changes the class
    (handwritten digits); None where mirrored images keep their labels."""
    if name not in SOURCES or SOURCES[name].mirror_keeps_class:
        return None
    return f"resnetlab: warning: {flag} mirrors {name} images, and a mirrored digit is not its class"


def locate(name: str, data_dir: str | os.PathLike | None = None, *, download: bool = True) -> list[Path]:
    """The checked-for files of a named data set, downloading them when allowed and missing."""
    if name not in SOURCES:
        raise Error(f"unknown data set {name!r}; choose from {', '.join(list_datasets())}")
    return _READERS[SOURCES[name].format].locate(name, data_dir, download_missing=download)


def published(name: str, data_dir: str | os.PathLike | None = None, *, download: bool = True) -> Published:
    """The official train and test parts, checked; the files are read once per process."""
    files = locate(name, data_dir, download=download)
    stamp = tuple((str(path), path.stat().st_size, path.stat().st_mtime_ns) for path in files)
    return _read(name, stamp)


@functools.lru_cache(maxsize=2)
def _read(name: str, stamp: tuple[tuple[str, int, int], ...]) -> Published:
    """Memoised on the files' paths, sizes and mtimes: asking for train, val and test parses once."""
    return _READERS[SOURCES[name].format].read(name, [Path(path) for path, _, _ in stamp])


def load_dataset(
    name: str,
    split: str,
    *,
    data_dir: str | os.PathLike | None = None,
    download: bool = True,
    val_size: int = 0,
    seed: int = 0,
    strict: bool = False,
    image_size: int = 0,
    decode: str = "reduced",
) -> ImageArrays | FolderDataset:
    """One split of a data set: "train" (the training part minus the val hold-out), "val" or "test".

    name: fashion-mnist, mnist, cifar10, cifar100 (in memory, `ImageArrays`), imagefolder:PATH
    or packed:FILE (decoded on the fly, `FolderDataset`; packs are `resnetlab data pack`'s).
    val: `val_size` training examples held out at random by `seed`, as the paper's 45k/5k CIFAR
    split [He15 §4.2]. Normalisation statistics come from the train split. strict: an unreadable
    image in a folder is an error instead of skipped.
    image_size: a folder's crop side in pixels (0: 224); the scenes' canvas (0: 96 px); the other
    data sets have a fixed size.
    decode: a folder's JPEG decoding, "full" or "reduced" (`folder.decode_box`).
    """
    if split not in SPLITS:
        raise Error(f"unknown split {split!r}; choose from {', '.join(SPLITS)}")
    check_data_dir(data_dir)
    if is_image_files(name):
        load = load_folder if name.startswith("imagefolder:") else load_pack
        return load(
            Path(name.split(":", 1)[1]),
            split,
            val_size=val_size,
            seed=seed,
            strict=strict,
            image_size=image_size or DEFAULT_IMAGE_SIZE,
            decode=decode,
        )
    if name == SCENES:  # image_size: the canvas (the items scale with it)
        layout = SceneLayout().at_canvas(image_size) if image_size else SceneLayout()
        data = published("fashion-mnist", data_dir, download=download)
        return load_scenes(split, data, val_size=val_size, layout=layout)
    if image_size:
        raise Error(
            f"an image size applies to imagefolder:PATH, packed:FILE and {SCENES} data; "
            f"{name} images have a fixed size"
        )
    data = published(name, data_dir, download=download)
    if split == "val" and val_size == 0:
        raise Error(
            "the val split is held out of the training set; give it a size with val_size (--val-size)"
        )
    train_idx, val_idx = split_indices(len(data.train_images), val_size, seed)
    # Value counts add up, so the train split's counts are the whole part's minus the hold-out's.
    held_out = data.train_images.index_select(0, val_idx)
    mean, std = histogram_stats(data.train_histogram - channel_histogram(held_out))
    if split == "test":
        images, labels = data.test_images.clone(), data.test_labels.clone()
    else:
        index = train_idx if split == "train" else val_idx
        images, labels = data.train_images.index_select(0, index), data.train_labels.index_select(0, index)
    return ImageArrays(images, labels, list(data.classes), mean, std)


def fed_as(
    dataset: ImageArrays | FolderDataset,
    *,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    image_size: int | None = None,
    resize_size: int | None = None,
    interpolation: str | None = None,
) -> ImageArrays | FolderDataset:
    """A copy of `dataset` whose images are normalised with `mean` and `std` and, for a folder or
    pack, centre-cropped to `image_size` after resizing the short side to `resize_size` with
    `interpolation`. None keeps the dataset's own setting; `dataset` itself is not changed."""
    if (mean is None) != (std is None):
        raise ValueError("give mean and std together")
    if mean is not None and (len(mean) != dataset.in_chans or len(std) != dataset.in_chans):
        raise Error(
            f"the model is normalised over {len(mean)} channels, but the data has {dataset.in_chans}; "
            "pick data with the model's channels"
        )
    if isinstance(dataset, ImageArrays):
        if mean is None:
            return dataset
        return dataclasses.replace(dataset, mean=tuple(mean), std=tuple(std))
    fed = copy.copy(dataset)  # the same file list (and, for a pack, the same open file)
    if mean is not None:
        fed.mean, fed.std = tuple(mean), tuple(std)
    if image_size:
        fed.image_size = image_size
        fed.resize_size = resize_size or round(image_size / 0.875)
    if interpolation:
        fed.interpolation = interpolation
    return fed


def select_classes(
    dataset: ImageArrays | FolderDataset, classes: tuple[int, ...]
) -> ImageArrays | FolderDataset:
    """The examples of `classes` (indices into `dataset.classes`), relabelled 0..N-1 in that order;
    the normalisation stays the whole training split's."""
    if any(c >= dataset.num_classes for c in classes):
        raise Error(f"--classes: {dataset.num_classes} classes have indices 0..{dataset.num_classes - 1}")
    labels = torch.as_tensor(dataset.labels)
    keep = torch.isin(labels, torch.tensor(classes)).nonzero().flatten()
    relabel = torch.full((dataset.num_classes,), -1, dtype=torch.int64)
    relabel[list(classes)] = torch.arange(len(classes))
    picked = dataset.subset(keep)
    picked.classes = [dataset.classes[c] for c in classes]
    if isinstance(picked, ImageArrays):
        picked.labels = relabel[picked.labels]
    else:
        picked.labels = relabel[torch.as_tensor(picked.labels)].numpy()
    return picked


def per_class_subset(
    dataset: ImageArrays | FolderDataset, count: int, seed: int
) -> ImageArrays | FolderDataset:
    """`count` examples of each class, drawn by `seed` (all of a class that has fewer)."""
    labels = torch.as_tensor(dataset.labels)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    picks = [order[labels[order] == c][:count] for c in range(dataset.num_classes)]
    return dataset.subset(torch.cat(picks).sort().values)


def describe(dataset: ImageArrays | FolderDataset) -> str:
    """One line: size, image shape and classes."""
    size = dataset.image_size
    return f"{len(dataset):,} images, {dataset.in_chans}x{size}x{size}, {dataset.num_classes} classes"
