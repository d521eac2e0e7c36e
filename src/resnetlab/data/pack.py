"""Packs: an image folder read once into one memory-mapped file, each image stored small.

Every epoch of an image folder opens and decodes every full-size file. A pack opens one file and
holds each image already cut down to `max_side` pixels on its long side, as JPEG or raw uint8, so
an epoch decodes a fraction of the pixels and does no per-file system call (FFCV's idea, with
nothing to install). Layout, little-endian:

| bytes | what |
|---|---|
| 8 | magic `RNLPACK1` |
| 8 | header length H, uint64 |
| H | header, UTF-8 JSON: version, encoding, max side, quality, classes, split counts, index sha256 |
| to 4096 | zeros |
| N x 48 | index: one `RECORD` per image, train images then test images, in the folder's order |
| to 4096 | zeros |
| rest | the images' bytes, record after record |

The index's sha256 is checked when a pack is opened, and each image's crc32 when it is read, so a
truncated or altered pack is refused in one line rather than trained on. The index keeps each
image's pixel mean and mean square per channel, so the normalisation of any train split (any
`--val-size`, any seed) is exact and costs nothing to compute.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import io
import json
import os
import zlib
from pathlib import Path

import numpy as np

from resnetlab.errors import Error

MAGIC = b"RNLPACK1"
VERSION = 1
ALIGN = 4096  # bytes: the index and the data start on page boundaries
ENCODINGS = ("jpeg", "raw")
SPLITS = ("train", "test")  # stored; "val" is held out of "train" when loaded, as for folders
RECORD = np.dtype(
    [
        ("offset", "<u8"),  # bytes from the start of the data region
        ("length", "<u4"),  # bytes
        ("crc32", "<u4"),  # of the record's bytes
        ("width", "<u2"),  # pixels, as stored (upright, at most max_side)
        ("height", "<u2"),
        ("label", "<u4"),  # index into the header's classes
        ("mean", "<f4", (3,)),  # per RGB channel, [0, 1] units, of the stored pixels
        ("mean_sq", "<f4", (3,)),
    ]
)


class CorruptPack(Error):
    """A pack that is truncated, altered or not a pack at all."""


@dataclasses.dataclass(frozen=True)
class PackHeader:
    """What a pack's header says; `index` and `data` are byte offsets in the file."""

    encoding: str  # "jpeg" or "raw" (H x W x 3 uint8)
    max_side: int  # pixels
    quality: int  # JPEG quality the images were encoded at (raw: 0)
    classes: list[str]
    counts: dict[str, int]  # images per stored split
    index_sha256: str
    data_length: int  # bytes
    index: int = 0
    data: int = 0

    def to_json(self) -> bytes:
        fields = dataclasses.asdict(self)
        del fields["index"], fields["data"]  # implied by the header's length
        fields = {"version": VERSION, **fields, "record": RECORD.descr}
        return json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()


def _aligned(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


def layout(header_json: bytes, num_records: int) -> tuple[int, int]:
    """(index offset, data offset) for a header of that length and that many records."""
    index = _aligned(16 + len(header_json))
    return index, _aligned(index + num_records * RECORD.itemsize)


class Pack:
    """An open pack: the header, the index (N,) `RECORD` and the records, all memory-mapped.

    Opening checks the magic, the header, the file's length and the index's sha256 (a few
    milliseconds per 100k images). `record(i)` checks image i's crc32. The map is reopened after a
    fork or unpickling, so DataLoader workers share the page cache rather than copies."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path).expanduser()
        self.header, self.index = _read_header(self.path)
        self._map: np.ndarray | None = None
        self._pid = -1

    def __len__(self) -> int:
        return len(self.index)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_map": None, "_pid": -1}

    def split(self, name: str) -> np.ndarray:
        """Record numbers of stored split `name` ("train" or "test")."""
        start = 0 if name == "train" else self.header.counts["train"]
        return np.arange(start, start + self.header.counts[name], dtype=np.int64)

    def record(self, i: int) -> memoryview:
        """Image i's stored bytes, crc32 checked."""
        if self._map is None or self._pid != os.getpid():
            self._map = np.memmap(self.path, dtype=np.uint8, mode="r", offset=self.header.data)
            self._pid = os.getpid()
        entry = self.index[i]
        start = int(entry["offset"])
        data = memoryview(self._map[start : start + int(entry["length"])])
        if zlib.crc32(data) != int(entry["crc32"]):
            raise CorruptPack(
                f"{self.path}: image {i} fails its checksum; the pack is damaged, make it again"
            )
        return data

    def image_file(self, i: int) -> io.BytesIO:
        """Image i's JPEG as a file object for Pillow."""
        return io.BytesIO(self.record(i))

    def pixels(self, i: int) -> np.ndarray:
        """Image i of a raw pack: (H, W, 3) uint8."""
        entry = self.index[i]
        return np.frombuffer(self.record(i), np.uint8).reshape(int(entry["height"]), int(entry["width"]), 3)

    def stats(self, records: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per-channel (mean, std), [0, 1] units, over every pixel of `records`."""
        entries = self.index[records]
        weight = entries["width"].astype(np.float64) * entries["height"]
        mean = (entries["mean"] * weight[:, None]).sum(0) / weight.sum()
        mean_sq = (entries["mean_sq"] * weight[:, None]).sum(0) / weight.sum()
        return mean, np.sqrt(np.maximum(mean_sq - mean**2, 0.0))


def open_pack(path: str | os.PathLike) -> Pack:
    """The pack at `path`, checked; opened once per process while the file is unchanged."""
    path = Path(path).expanduser()
    try:
        info = path.stat()
    except OSError as exc:
        hint = f"; make one with `resnetlab data pack imagefolder:DIR --out {path}`"
        raise Error(
            f"{path}: {exc.strerror or exc}{hint if isinstance(exc, FileNotFoundError) else ''}"
        ) from None
    return _open(str(path.resolve()), info.st_size, info.st_mtime_ns)


@functools.lru_cache(maxsize=4)
def _open(path: str, size: int, mtime_ns: int) -> Pack:
    return Pack(path)


def _read_header(path: Path) -> tuple[PackHeader, np.ndarray]:
    try:
        with open(path, "rb") as f:
            start = f.read(16)
            if len(start) < 16 or start[:8] != MAGIC:
                raise CorruptPack(f"{path} is not a resnetlab pack (no {MAGIC.decode()} signature)")
            length = int.from_bytes(start[8:], "little")
            if length > 1 << 24:  # a header is a few kB even with 100k classes' names
                raise CorruptPack(f"{path}: damaged header (claims {length:,} bytes)")
            text = f.read(length)
            header = _parse_header(path, text)
            size = os.fstat(f.fileno()).st_size
            expected = header.data + header.data_length
            if size != expected:
                what = "truncated" if size < expected else "longer than its header says"
                raise CorruptPack(f"{path} is {what} ({size:,} bytes, expected {expected:,}); make it again")
            f.seek(header.index)
            raw = f.read(sum(header.counts.values()) * RECORD.itemsize)
    except OSError as exc:
        raise Error(f"cannot read pack {path}: {exc.strerror or exc}") from None
    if hashlib.sha256(raw).hexdigest() != header.index_sha256:
        raise CorruptPack(f"{path}: the index fails its checksum; the pack is damaged, make it again")
    index = np.frombuffer(raw, RECORD)
    ends = index["offset"].astype(np.uint64) + index["length"]
    if len(index) and (ends.max() > header.data_length or index["label"].max() >= len(header.classes)):
        raise CorruptPack(f"{path}: the index points outside the pack")
    return header, index


def _parse_header(path: Path, text: bytes) -> PackHeader:
    try:
        fields = json.loads(text)
        if not isinstance(fields, dict):
            raise ValueError("not an object")
        version = fields.pop("version")
        if version != VERSION:
            raise CorruptPack(f"{path} is a version {version} pack; this resnetlab reads version {VERSION}")
        if [tuple(map(_hashable, d)) for d in fields.pop("record")] != [
            tuple(map(_hashable, d)) for d in RECORD.descr
        ]:
            raise ValueError("unknown record layout")
        header = PackHeader(**fields)
        if header.encoding not in ENCODINGS or set(header.counts) != set(SPLITS):
            raise ValueError("unknown encoding or splits")
        numbers = [header.max_side, header.quality, header.data_length, *header.counts.values()]
        if not all(type(n) is int and n >= 0 for n in numbers) or not isinstance(header.index_sha256, str):
            raise ValueError("a size, count or checksum of the wrong type")
        if not isinstance(header.classes, list) or not all(isinstance(c, str) for c in header.classes):
            raise ValueError("class names that are not strings")
    except CorruptPack:
        raise
    except (ValueError, TypeError, KeyError, UnicodeDecodeError) as exc:
        raise CorruptPack(f"{path}: damaged header ({exc})") from None
    index, data = layout(text, sum(header.counts.values()))
    return dataclasses.replace(header, index=index, data=data)


def _hashable(value: object) -> object:
    return tuple(value) if isinstance(value, list) else value
