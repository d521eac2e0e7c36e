"""MNIST and Fashion-MNIST: find the four IDX files (or download them), check them, read them."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import torch

from resnetlab.data import idx
from resnetlab.data.arrays import Published
from resnetlab.data.download import DownloadError, UnwritableFolder, download
from resnetlab.data.paths import candidate_dirs, download_dir, manual_install
from resnetlab.data.sources import SOURCES, RemoteFile
from resnetlab.errors import Error


def _present(directory: Path, spec: RemoteFile) -> Path | None:
    """The file as published (.gz) or unpacked (no .gz), whichever is in `directory`."""
    for name in (spec.name, spec.name.removesuffix(".gz")):
        if (directory / name).is_file():
            return directory / name
    return None


def locate(
    name: str, data_dir: str | os.PathLike | None = None, *, download_missing: bool = True
) -> list[Path]:
    """The data set's four files, from the first folder that has all of them, else downloaded."""
    source = SOURCES[name]
    for directory in candidate_dirs(name, data_dir):
        found = [_present(directory, spec) for spec in source.files]
        if all(found):
            return found  # type: ignore[return-value]
    target = download_dir(name, data_dir)
    if not download_missing:
        raise Error(f"{name} not found; {manual_install(name, data_dir)}")
    for spec in source.files:
        if _present(target, spec) is None:
            try:
                download(source.url + spec.name, target / spec.name, md5=spec.md5)
            except (DownloadError, UnwritableFolder) as exc:
                raise Error(f"{exc}; {manual_install(name, data_dir)}") from None
    return [_present(target, spec) for spec in source.files]  # type: ignore[misc]


def _checked_bytes(path: Path, spec: RemoteFile, name: str) -> bytes:
    """The decompressed bytes of `path` after the strongest check the table allows."""
    stored = path.read_bytes()
    data = idx.unpack(stored, str(path))
    if spec.sha256 is not None:
        actual, expected = hashlib.sha256(data).hexdigest(), spec.sha256
    elif idx.is_gzip(stored):  # a published .gz: its md5 is known
        actual, expected = hashlib.md5(stored, usedforsecurity=False).hexdigest(), spec.md5
    else:
        return data  # unpacked MNIST: no published checksum of the raw bytes; the shapes are checked below
    if actual != expected:
        raise Error(
            f"{path} is not the official {name} file {spec.name} (checksum {actual[:12]}..., expected "
            f"{expected[:12]}...); delete it and run `resnetlab data {name}` to fetch it again"
        )
    return data


def verification(name: str, files: list[Path]) -> str:
    """What `read` checks for these files, in words."""
    if all(spec.sha256 for spec in SOURCES[name].files):
        return "sha256 of the decompressed bytes verified"
    if all(path.suffix == ".gz" for path in files):
        return "md5 of the .gz files verified"
    return "unpacked files: shapes checked (no published checksum of the raw bytes)"


def read(name: str, files: list[Path]) -> Published:
    """Check and parse the files `locate` returned: train images/labels, test images/labels."""
    source = SOURCES[name]
    pairs = zip(files, source.files, strict=True)
    arrays = [idx.parse_idx(_checked_bytes(path, spec, name), str(path)) for path, spec in pairs]
    train_images, train_labels, test_images, test_labels = arrays
    for images, labels, part in ((train_images, train_labels, "train"), (test_images, test_labels, "t10k")):
        if images.ndim != 3 or images.dtype != np.uint8 or labels.shape != images.shape[:1]:
            raise Error(f"{name} {part} files do not match: images {images.shape}, labels {labels.shape}")
        if labels.max(initial=0) >= len(source.classes):
            raise Error(f"{name} {part} labels exceed its {len(source.classes)} classes")

    def tensors(images: np.ndarray, labels: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, 1, H, W) uint8 images and (N,) int64 labels."""
        return torch.from_numpy(images).unsqueeze(1), torch.from_numpy(labels.astype(np.int64))

    return Published(
        *tensors(train_images, train_labels),
        *tensors(test_images, test_labels),
        classes=list(source.classes),
        verified=verification(name, files),
    )
