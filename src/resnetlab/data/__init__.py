"""Data sets and input pipelines: `load_dataset` gives a split, `make_loader` gives its batches.

Small sets (MNIST, Fashion-MNIST, CIFAR) are `ImageArrays` kept in memory as uint8 and augmented
per batch on the device; `imagefolder:PATH` is a `FolderDataset` decoded by DataLoader workers, and
`packed:FILE` (`resnetlab data pack`) a `PackedDataset` read the same way from one file.
"""

from resnetlab.data.arrays import ImageArrays, split_indices
from resnetlab.data.augment import AUGMENT_PRESETS, Augment
from resnetlab.data.datasets import (
    SCENES,
    SPLITS,
    fed_as,
    has_split,
    is_image_files,
    list_datasets,
    load_dataset,
    mirror_warning,
    per_class_subset,
    select_classes,
)
from resnetlab.data.folder import FolderDataset, UnreadableImage
from resnetlab.data.loader import DeviceLoader, FolderLoader, epoch_order, make_loader
from resnetlab.data.packed import PackedDataset

__all__ = [
    "AUGMENT_PRESETS",
    "SCENES",
    "SPLITS",
    "Augment",
    "DeviceLoader",
    "FolderDataset",
    "FolderLoader",
    "ImageArrays",
    "PackedDataset",
    "UnreadableImage",
    "epoch_order",
    "fed_as",
    "has_split",
    "is_image_files",
    "list_datasets",
    "load_dataset",
    "make_loader",
    "mirror_warning",
    "per_class_subset",
    "select_classes",
    "split_indices",
]
