"""A reader for the IDX format of (Fashion-)MNIST, gzipped or not, in plain numpy.

Format: two zero bytes, a type code (0x08 = uint8, the only one these data sets use), the number of
dimensions, then one big-endian uint32 per dimension, then the data in C order.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from pipeline.errors import InputError

_GZIP_MAGIC = b"\x1f\x8b"
_UINT8 = 0x08


def read_idx_bytes(path: Path) -> bytes:
    """The (decompressed) bytes of an IDX file."""
    raw = Path(path).read_bytes()
    return gzip.decompress(raw) if raw[:2] == _GZIP_MAGIC else raw


def parse_idx(data: bytes, source: str = "<bytes>") -> np.ndarray:
    """The array held by the IDX bytes ``data``; ``source`` names the file in errors."""
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise InputError(f"{source} is not an IDX file: it must start with two zero bytes")
    if data[2] != _UINT8:
        raise InputError(
            f"{source}: only uint8 IDX data (type 0x08) is supported, got {data[2]:#x}"
        )
    ndim = data[3]
    header = 4 + 4 * ndim
    shape = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    expected = header + int(np.prod(shape, dtype=np.int64))
    if len(data) != expected:
        raise InputError(
            f"{source}: the IDX header says shape {shape} ({expected} bytes), "
            f"but the file has {len(data)} bytes"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape).copy()


def read_idx(path: Path) -> np.ndarray:
    return parse_idx(read_idx_bytes(path), str(path))


def write_idx(path: Path, array: np.ndarray, compress: bool = False) -> None:
    """Write a uint8 array as IDX (used by tests to build fixtures in the real layout)."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, _UINT8, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    data = header + array.tobytes()
    Path(path).write_bytes(gzip.compress(data) if compress else data)
