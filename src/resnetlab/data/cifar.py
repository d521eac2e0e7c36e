"""CIFAR-10 and CIFAR-100 from the official python archives.

The archive is checked against its published md5, unpacked without trusting its member names,
and its batches (Python 2 pickles of numpy arrays) are read by an unpickler that can build
nothing but numpy arrays, lists, dicts and strings, so a tampered file cannot run code.
"""

from __future__ import annotations

import os
import pickle
import shutil
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath

import numpy as np
import torch

from resnetlab.atomic import fsync_dir
from resnetlab.data.arrays import Published
from resnetlab.data.download import DownloadError, UnwritableFolder, download, md5sum
from resnetlab.data.paths import candidate_dirs, download_dir, manual_install
from resnetlab.data.sources import SOURCES
from resnetlab.errors import Error

try:
    from numpy._core.multiarray import _reconstruct  # numpy >= 2
except ImportError:
    from numpy.core.multiarray import _reconstruct  # numpy 1.x


@dataclass(frozen=True)
class _Layout:
    meta: str  # file with the class names
    names_key: bytes
    labels_key: bytes
    train: tuple[str, ...]
    test: tuple[str, ...]


# From https://www.cs.toronto.edu/~kriz/cifar.html ("Dataset layout"); CIFAR-100 uses its fine labels.
_LAYOUTS = {
    "cifar10": _Layout(
        "batches.meta",
        b"label_names",
        b"labels",
        tuple(f"data_batch_{i}" for i in range(1, 6)),
        ("test_batch",),
    ),
    "cifar100": _Layout("meta", b"fine_label_names", b"fine_labels", ("train",), ("test",)),
}

# Everything a CIFAR batch pickle refers to; the numpy module name is the one the 2009 files use.
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class _BatchUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> object:
        try:
            return _ALLOWED_GLOBALS[module, name]
        except KeyError:
            raise pickle.UnpicklingError(
                f"it refers to {module}.{name}, which a CIFAR batch never does"
            ) from None


def load_batch(path: Path) -> dict:
    """One CIFAR batch or meta file as a dict with bytes keys, read without running foreign code."""
    try:
        with open(path, "rb") as f:
            batch = _BatchUnpickler(f, encoding="bytes").load()
    except Exception as exc:  # a corrupt or hostile pickle can fail in many ways; all mean "not a batch"
        raise Error(
            f"refusing to read {path}: {exc}; delete it and unpack the official archive again"
        ) from None
    if not isinstance(batch, dict):
        raise Error(f"{path} is not a CIFAR batch (it holds a {type(batch).__name__}, not a dict)")
    return batch


def _unsafe(member: tarfile.TarInfo) -> str | None:
    """Why a member may not be unpacked, following the rules of tarfile's `data` filter (PEP 706)."""
    if member.issym() or member.islnk():
        return "is a link"
    if not (member.isfile() or member.isdir()):
        return "is not a regular file or folder"
    if member.name.startswith(("/", "\\")) or PureWindowsPath(member.name).drive:
        return "has an absolute path"
    if ".." in PurePosixPath(member.name.replace("\\", "/")).parts:
        return "leaves the target folder through '..'"
    return None


def safe_extract(archive: Path, into: Path) -> None:
    """Unpack `archive` into `into`; every member is checked before the first byte is written.

    Members are unpacked into a hidden staging folder next to their destination and renamed into
    place, so an interrupted unpack never looks like a complete data set.
    """
    try:
        with tarfile.open(archive) as tar:
            members = tar.getmembers()
            for member in members:
                if why := _unsafe(member):
                    raise Error(f"refusing to extract {archive.name}: member {member.name!r} {why}")
            staging = Path(tempfile.mkdtemp(dir=into, prefix=f".{archive.name}.", suffix=".part"))
            try:
                for member in members:
                    target = staging / member.name
                    if member.isdir():
                        target.mkdir(parents=True, exist_ok=True)
                        continue
                    target.parent.mkdir(parents=True, exist_ok=True)
                    with tar.extractfile(member) as src, open(target, "wb") as dst:
                        shutil.copyfileobj(src, dst)
                        os.fsync(dst.fileno())
                for entry in staging.iterdir():
                    if (into / entry.name).exists():
                        raise Error(
                            f"{into / entry.name} already exists; delete it to unpack {archive.name} again"
                        )
                    entry.rename(into / entry.name)
                fsync_dir(into)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
    except (tarfile.TarError, EOFError) as exc:
        raise Error(f"{archive} is not a valid tar archive ({exc}); delete it and fetch it again") from None


def _batch_files(name: str, folder: Path) -> list[Path]:
    layout = _LAYOUTS[name]
    files = [folder / f for f in (layout.meta, *layout.train, *layout.test)]
    if missing := [f.name for f in files if not f.is_file()]:
        raise Error(
            f"{folder} lacks {', '.join(missing)}; delete the folder so the archive is unpacked again"
        )
    return files


def _unpack(name: str, archive: Path) -> list[Path]:
    spec = SOURCES[name].files[0]
    if (actual := md5sum(archive)) != spec.md5:
        raise Error(
            f"{archive} is not the official {spec.name} (md5 {actual}, expected {spec.md5}); delete it"
        )
    safe_extract(archive, archive.parent)
    return _batch_files(name, archive.parent / SOURCES[name].extracts_to)


def locate(
    name: str, data_dir: str | os.PathLike | None = None, *, download_missing: bool = True
) -> list[Path]:
    """The meta, train and test batch files: an unpacked folder, else a local archive, else downloaded."""
    source = SOURCES[name]
    spec = source.files[0]
    for directory in candidate_dirs(name, data_dir):
        if (directory / source.extracts_to).is_dir():
            return _batch_files(name, directory / source.extracts_to)
        if (directory / spec.name).is_file():
            return _unpack(name, directory / spec.name)
    target = download_dir(name, data_dir)
    if not download_missing:
        raise Error(f"{name} not found; {manual_install(name, data_dir)}")
    try:
        download(source.url + spec.name, target / spec.name, md5=spec.md5)
    except (DownloadError, UnwritableFolder) as exc:
        raise Error(f"{exc}; {manual_install(name, data_dir)}") from None
    return _unpack(name, target / spec.name)


def _images_labels(path: Path, labels_key: bytes) -> tuple[torch.Tensor, torch.Tensor]:
    batch = load_batch(path)
    data, labels = batch.get(b"data"), batch.get(labels_key)
    if not (
        isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2 and data.shape[1] == 3072
    ):
        raise Error(f"{path} has no (N, 3072) uint8 array under b'data'")
    if not (
        isinstance(labels, list) and len(labels) == len(data) and all(isinstance(v, int) for v in labels)
    ):
        raise Error(f"{path} has no list of {len(data)} integer labels under {labels_key!r}")
    # Each row holds 1024 red, then 1024 green, then 1024 blue values of a 32x32 image, row-major.
    return torch.tensor(data).view(-1, 3, 32, 32), torch.tensor(labels, dtype=torch.int64)


def read(name: str, files: list[Path]) -> Published:
    """Parse the files `locate` returned into the official train (50k) and test (10k) parts."""
    layout = _LAYOUTS[name]
    names = load_batch(files[0]).get(layout.names_key)
    if not (isinstance(names, list) and all(isinstance(n, bytes) for n in names)):
        raise Error(f"{files[0]} has no list of class names under {layout.names_key!r}")
    parts = [_images_labels(path, layout.labels_key) for path in files[1:]]
    n_train = len(layout.train)
    train, test = parts[:n_train], parts[n_train:]
    return Published(
        torch.cat([images for images, _ in train]),
        torch.cat([labels for _, labels in train]),
        torch.cat([images for images, _ in test]),
        torch.cat([labels for _, labels in test]),
        classes=[n.decode("utf-8") for n in names],
        verified="archive md5 verified when unpacked; batches read by a restricted unpickler",
    )
