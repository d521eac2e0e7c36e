"""The weights cache: downloads land in `$RESNETLAB_HOME/weights/` (default ~/.cache/resnetlab).

A file is looked for, in order: inside the package (shipped weights), in our cache, and in torch's
own cache `$TORCH_HOME/hub/checkpoints/` under the same name (so a torchvision file a user already
has is not fetched twice). Otherwise it is downloaded with a progress bar, written atomically,
and its length (Content-Length) and sha256 are checked before it is kept; a short or mismatched
download leaves nothing in the cache. Every file is checked again before it is loaded, wherever
it was found.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import torch

from resnetlab.data.download import DownloadError, UnwritableFolder, download
from resnetlab.errors import Error
from resnetlab.weights import hub
from resnetlab.weights.entry import WeightsEntry

SHIPPED_DIR = Path(__file__).with_name("shipped")  # weights that come with the package
_HASH_IN_NAME = re.compile(r"-([0-9a-f]{8,64})\.")  # torch.hub's convention: name-<sha256 prefix>.ext
_CHUNK = 1 << 20  # bytes per read


def home() -> Path:
    """`$RESNETLAB_HOME`, default ~/.cache/resnetlab."""
    return Path(os.environ.get("RESNETLAB_HOME") or Path.home() / ".cache" / "resnetlab").expanduser()


def cache_dir() -> Path:
    """Where downloaded weights go: `$RESNETLAB_HOME/weights`."""
    return home() / "weights"


def torch_cache_dir() -> Path:
    """torch.hub's checkpoint folder, `$TORCH_HOME/hub/checkpoints` (default ~/.cache/torch/...)."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def sha256sum(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def hash_in_name(file_name: str) -> str | None:
    """The sha256 prefix a file name carries (resnet50-11ad3fa6.pth -> 11ad3fa6), if any."""
    match = _HASH_IN_NAME.search(file_name)
    return match.group(1) if match else None


def verify(path: Path, sha256: str | None, label: str) -> None:
    """Raise `Error` unless the file's sha256 starts with `sha256` (None: nothing published to check)."""
    if sha256 is None:
        return
    actual = sha256sum(path)
    if not actual.startswith(sha256.lower()):
        raise Error(
            f"checksum mismatch for {label}: {path} has sha256 {actual[:16]}..., expected {sha256}...; "
            "the file is damaged or not the published one: delete it and fetch it again"
        )


def candidates(entry: WeightsEntry) -> list[Path]:
    """Where an entry's file may already be, in the order they are tried."""
    if entry.hub is not None:
        found = hub.cached(entry.source, entry.file_name)
        return [found] if found is not None else []
    if entry.shipped:
        return [SHIPPED_DIR / entry.file_name]
    places = [cache_dir() / entry.file_name]
    if "/" not in entry.file_name:  # torch's cache is flat: only single file names can be there
        places.append(torch_cache_dir() / entry.file_name)
    return places


def cached_path(entry: WeightsEntry) -> Path | None:
    """The entry's file if it is already here (not checked), else None."""
    return next((p for p in candidates(entry) if p.is_file()), None)


def fetch(entry: WeightsEntry, *, timeout: float | None = None) -> Path:
    """The entry's file, checked: found in a cache or the package, else downloaded into the cache."""
    if entry.hub is not None:  # the Hugging Face cache; checked against the Hub's sha256
        return hub.fetch(entry.source) / entry.file_name
    found = cached_path(entry)
    if found is None:
        if entry.shipped or entry.url is None:
            raise Error(
                f"{entry.name} should ship with resnetlab but {candidates(entry)[0]} is missing; reinstall"
            )
        found = _download(entry.url, cache_dir() / entry.file_name, entry.sha256, timeout)
    verify(found, entry.sha256, entry.name)
    return found


def fetch_url(url: str, *, timeout: float | None = None) -> Path:
    """A URL's file in the cache (or torch's), downloading it once; a sha256 prefix in its name is checked."""
    file_name = url.rstrip("/").rsplit("/", 1)[-1].split("?", 1)[0]
    if not file_name:
        raise Error(f"cannot tell a file name from {url}; give the URL of a .pth or .safetensors file")
    expected = hash_in_name(file_name)
    found = next((p for p in (cache_dir() / file_name, torch_cache_dir() / file_name) if p.is_file()), None)
    if found is None:
        found = _download(url, cache_dir() / file_name, expected, timeout)
    verify(found, expected, url)
    return found


def _download(url: str, dest: Path, sha256: str | None, timeout: float | None) -> Path:
    """Download into `dest` (atomic; checked before it is kept); offline names where to put it by
    hand; an unwritable cache names its folder and the variable that moves it. timeout: seconds
    a connection may stall (None: $RESNETLAB_DOWNLOAD_TIMEOUT, default 30)."""
    try:
        return download(url, dest, sha256=sha256, timeout=timeout)
    except UnwritableFolder as exc:
        raise Error(
            f"{exc}; the weights cache is $RESNETLAB_HOME/weights: set RESNETLAB_HOME to a writable folder"
        ) from None
    except DownloadError as exc:
        raise Error(
            f"{exc}; offline? fetch {url} by hand and save it as {dest.name} in {dest.parent}"
        ) from None
