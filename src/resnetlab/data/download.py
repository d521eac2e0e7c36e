"""HTTP download with a progress bar, a checksum check and an atomic move into place."""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import BinaryIO

from tqdm import tqdm

from resnetlab.errors import Error

_CHUNK = 1 << 20  # bytes per read


class DownloadError(Error):
    """The server could not be reached or the transfer broke off; nothing was saved."""


def md5sum(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)  # an integrity check against the published sums
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def download(
    url: str, dest: Path, *, md5: str | None = None, sha256: str | None = None, timeout: float = 30.0
) -> Path:
    """Fetch `url` into `dest` if its md5 and sha256 match; on any failure no file is left behind.

    `sha256` may be a prefix of the digest, as torchvision's file names carry the first 8 digits.

    The bytes go to a hidden temp file in dest's folder, are fsynced, checked, and renamed over
    `dest`, so a crash or Ctrl-C never leaves a half-written file under the real name.
    """
    created = [d for d in (dest.parent, *dest.parent.parents) if not d.exists()]  # deepest first
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out:
            digests = _fetch(url, out, dest.name, timeout)
            out.flush()
            os.fsync(out.fileno())
        for name, expected in (("md5", md5), ("sha256", sha256)):
            if expected is not None and not digests[name].startswith(expected.lower()):
                raise Error(
                    f"checksum mismatch for {url}: {name} {digests[name]}, expected {expected}; nothing was "
                    "saved (a proxy or captive portal may have answered instead of the server)"
                )
        os.replace(tmp, dest)
        fsync_dir(dest.parent)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        for folder in created:
            with contextlib.suppress(OSError):  # only folders this call made, and only if empty
                folder.rmdir()
        raise
    return dest


def _fetch(url: str, out: BinaryIO, label: str, timeout: float) -> dict[str, str]:
    """Stream `url` into `out` with a progress bar on a terminal; returns the bytes' md5 and sha256."""
    digests = {"md5": hashlib.md5(usedforsecurity=False), "sha256": hashlib.sha256()}
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            total = int(response.headers.get("Content-Length") or 0) or None
            print(f"downloading {url}", file=sys.stderr)
            with tqdm(
                total=total, desc=label, unit="B", unit_scale=True, unit_divisor=1024, disable=None
            ) as bar:
                while chunk := response.read(_CHUNK):
                    out.write(chunk)
                    for digest in digests.values():
                        digest.update(chunk)
                    bar.update(len(chunk))
    except urllib.error.HTTPError as exc:
        raise DownloadError(f"cannot download {url} (HTTP {exc.code} {exc.reason})") from None
    except (OSError, http.client.HTTPException) as exc:  # refused, unreachable, timeouts, resets
        raise DownloadError(f"cannot download {url} ({getattr(exc, 'reason', None) or exc})") from None
    return {name: digest.hexdigest() for name, digest in digests.items()}


def fsync_dir(path: Path) -> None:
    """Make a rename in `path` durable; folders cannot be opened for fsync on Windows."""
    if os.name != "posix":
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
