"""Class names of the data sets pretrained weights were trained on, in index order."""

from __future__ import annotations

import functools
from pathlib import Path

from resnetlab.data.sources import SOURCES
from resnetlab.errors import Error

# torchvision's `meta["categories"]`, copied from shared/imagenet_classes.txt: the 1000 synsets'
# readable names in the order of their sorted WordNet ids (the class index of every ImageNet net).
_IMAGENET_FILE = Path(__file__).with_name("imagenet_classes.txt")


@functools.cache
def class_names(dataset: str) -> tuple[str, ...]:
    """The class names of "imagenet-1k" or of a data set resnetlab knows ("fashion-mnist")."""
    if dataset == "imagenet-1k":
        names = tuple(_IMAGENET_FILE.read_text(encoding="utf-8").splitlines())
        if len(names) != 1000:
            raise RuntimeError(f"{_IMAGENET_FILE} has {len(names)} names, not 1000; reinstall resnetlab")
        return names
    if dataset in SOURCES and SOURCES[dataset].classes:
        return SOURCES[dataset].classes
    raise Error(f"no class names are known for {dataset!r}")
