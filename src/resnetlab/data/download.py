"""HTTP download with a progress bar, a length and checksum check and an atomic move into place.

A download is kept only when it is whole: as many bytes as the server's Content-Length said, and
the published checksum where there is one. The file is created with the mode the umask allows
(0644 under the usual 022), as torch.hub's and the Hugging Face cache's are, so a cache shared
by a team or a cluster is readable by all of them. `RESNETLAB_DOWNLOAD_TIMEOUT` sets how many
seconds a stalled connection may stay silent (default 30).
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import sys
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import BinaryIO

from tqdm import tqdm

from resnetlab.atomic import fsync_dir
from resnetlab.errors import Error

_CHUNK = 1 << 20  # bytes per read
TIMEOUT_VARIABLE = "RESNETLAB_DOWNLOAD_TIMEOUT"
DEFAULT_TIMEOUT = 30.0  # seconds a connection may stay silent before the download is given up


class DownloadError(Error):
    """The server could not be reached or the transfer broke off; nothing was saved."""


class UnwritableFolder(Error):
    """The folder a download goes to cannot be created or written; `folder` names it."""

    def __init__(self, message: str, folder: Path) -> None:
        super().__init__(message)
        self.folder = folder


def stall_timeout() -> float:
    """Seconds a connection may stay silent: `$RESNETLAB_DOWNLOAD_TIMEOUT`, default 30."""
    text = os.environ.get(TIMEOUT_VARIABLE, "").strip()
    if not text:
        return DEFAULT_TIMEOUT
    try:
        seconds = float(text)
    except ValueError:
        seconds = float("nan")
    if not (0 < seconds < float("inf")):
        raise Error(f"{TIMEOUT_VARIABLE}={text!r}: give the seconds a download may stall, a number > 0")
    return seconds


def md5sum(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)  # an integrity check against the published sums
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def download(
    url: str,
    dest: Path,
    *,
    md5: str | None = None,
    sha256: str | None = None,
    timeout: float | None = None,
) -> Path:
    """Fetch `url` into `dest` if it is whole and its md5 and sha256 match; on any failure no
    file is left behind. timeout: seconds of silence allowed (None: `stall_timeout()`).

    `sha256` may be a prefix of the digest, as torchvision's file names carry the first 8 digits.

    The bytes go to a hidden temp file in dest's folder, are fsynced, checked, and renamed over
    `dest`, so a crash or Ctrl-C never leaves a half-written file under the real name.
    """
    timeout = stall_timeout() if timeout is None else timeout
    created = [d for d in (dest.parent, *dest.parent.parents) if not d.exists()]  # deepest first
    tmp = dest.parent / f".{dest.name}.{uuid.uuid4().hex}.part"
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        # 0o666 less the umask, like a file `open` creates: tempfile.mkstemp's 0600 would hide
        # the file from everyone else who shares the cache.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except OSError as exc:
        raise UnwritableFolder(
            f"cannot write into {dest.parent} ({exc.strerror or exc})", dest.parent
        ) from None
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
        tmp.unlink(missing_ok=True)
        for folder in created:
            with contextlib.suppress(OSError):  # only folders this call made, and only if empty
                folder.rmdir()
        raise
    return dest


def _fetch(url: str, out: BinaryIO, label: str, timeout: float) -> dict[str, str]:
    """Stream `url` into `out` with a progress bar on a terminal; returns the bytes' md5 and
    sha256. Fewer bytes than the Content-Length (the connection closed early) is a DownloadError."""
    digests = {"md5": hashlib.md5(usedforsecurity=False), "sha256": hashlib.sha256()}
    received, total = 0, None
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            length = (response.headers.get("Content-Length") or "").strip()
            total = int(length) if length.isdigit() and int(length) > 0 else None
            print(f"downloading {url}", file=sys.stderr)
            with tqdm(
                total=total, desc=label, unit="B", unit_scale=True, unit_divisor=1024, disable=None
            ) as bar:
                while chunk := response.read(_CHUNK):
                    out.write(chunk)
                    for digest in digests.values():
                        digest.update(chunk)
                    bar.update(len(chunk))
                    received += len(chunk)
    except urllib.error.HTTPError as exc:
        raise DownloadError(f"cannot download {url} (HTTP {exc.code} {exc.reason})") from None
    except (OSError, http.client.HTTPException) as exc:  # refused, unreachable, timeouts, resets
        raise DownloadError(f"cannot download {url} ({getattr(exc, 'reason', None) or exc})") from None
    if total is not None and received != total:
        raise DownloadError(
            f"the download of {url} broke off after {received:,} of {total:,} bytes; nothing was saved"
        )
    return {name: digest.hexdigest() for name, digest in digests.items()}
