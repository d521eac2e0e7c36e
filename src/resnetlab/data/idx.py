"""The IDX file format of MNIST and Fashion-MNIST, gzipped or raw.

An IDX file is a 4-byte magic (two zero bytes, a type code, the number of dimensions), one
big-endian uint32 per dimension, then the values in C order, big-endian
(http://yann.lecun.com/exdb/mnist/, "FILE FORMATS").
"""

from __future__ import annotations

import gzip
import struct
import zlib
from dataclasses import dataclass
from math import prod

import numpy as np

from resnetlab.errors import Error

_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_GZIP_MAGIC = b"\x1f\x8b"


@dataclass(frozen=True)
class IdxHeader:
    dtype: np.dtype  # big-endian, as stored
    shape: tuple[int, ...]
    offset: int  # bytes before the first value

    @property
    def nbytes(self) -> int:
        return prod(self.shape) * self.dtype.itemsize


def parse_header(data: bytes, source: str = "IDX data") -> IdxHeader:
    """Read the magic and the dimensions; `source` names the file in error messages."""
    if len(data) < 4 or data[:2] != b"\0\0" or data[2] not in _DTYPES:
        raise Error(f"{source} is not an IDX file (bad magic {data[:4].hex() or 'empty'})")
    ndim = data[3]
    offset = 4 + 4 * ndim
    if len(data) < offset:
        raise Error(f"{source} is truncated inside its IDX header")
    shape = struct.unpack(f">{ndim}I", data[4:offset])
    return IdxHeader(_DTYPES[data[2]], shape, offset)


def parse_idx(data: bytes, source: str = "IDX data") -> np.ndarray:
    """The array an IDX file holds, in native byte order; the size must match the header exactly."""
    header = parse_header(data, source)
    if len(data) != header.offset + header.nbytes:
        raise Error(
            f"{source} holds {len(data) - header.offset} data bytes but its header "
            f"{header.shape} needs {header.nbytes}; the file is truncated or corrupt"
        )
    values = np.frombuffer(data, dtype=header.dtype, offset=header.offset).reshape(header.shape)
    return values.astype(header.dtype.newbyteorder("="))  # a native, writable copy


def is_gzip(stored: bytes) -> bool:
    return stored[:2] == _GZIP_MAGIC


def unpack(stored: bytes, source: str) -> bytes:
    """The decompressed bytes of a gzipped file, told apart by its magic; raw bytes unchanged."""
    if not is_gzip(stored):
        return stored
    try:
        return gzip.decompress(stored)
    except (OSError, EOFError, zlib.error) as exc:
        raise Error(f"{source} is not a valid gzip file ({exc}); delete it and fetch it again") from None
