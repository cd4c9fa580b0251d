"""Bit-level helpers: dense packing of b-bit codes and LEB128 varints.

Bit order is little-endian throughout the store: bit ``j`` of a stream is bit ``j % 8`` (LSB first)
of byte ``j // 8``, and code ``i`` of width ``b`` occupies stream bits ``[i*b, (i+1)*b)`` with its
least significant bit first. For b in {8, 16, 32} this is exactly the little-endian ``uint8``,
``<u2`` and ``<u4`` array layout, so those widths take a zero-copy fast path.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pipeline.errors import StoreError

_FAST_DTYPES: dict[int, np.dtype[np.unsignedinteger[Any]]] = {
    8: np.dtype("<u1"), 16: np.dtype("<u2"), 32: np.dtype("<u4")
}


def packed_size(count: int, bits: int) -> int:
    """Bytes taken by ``count`` codes of ``bits`` bits (the last byte zero-padded)."""
    return (count * bits + 7) // 8


def pack_codes(codes: np.ndarray, bits: int) -> bytes:
    """Pack non-negative integer ``codes`` (each < 2**bits) densely, LSB first."""
    codes = np.asarray(codes).reshape(-1)
    if bits in _FAST_DTYPES:
        return codes.astype(_FAST_DTYPES[bits]).tobytes()
    # Spread every code into its `bits` bits (LSB first), then let packbits build the bytes:
    # a handful of vector ops instead of a per-code Python loop.
    shifts = np.arange(bits, dtype=np.uint64)
    planes = (codes.astype(np.uint64)[:, None] >> shifts) & np.uint64(1)
    return np.packbits(planes.astype(np.uint8).reshape(-1), bitorder="little").tobytes()


def unpack_codes(buf: bytes | memoryview, count: int, bits: int) -> np.ndarray:
    """Inverse of :func:`pack_codes`: ``count`` codes as ``int64``."""
    need = packed_size(count, bits)
    if len(buf) != need:
        raise StoreError(
            f"{count} codes of {bits} bits must take {need} bytes, found {len(buf)} bytes"
        )
    raw = np.frombuffer(buf, dtype=np.uint8)
    if bits in _FAST_DTYPES:
        return raw.view(_FAST_DTYPES[bits]).astype(np.int64)
    planes = np.unpackbits(raw, count=count * bits, bitorder="little").reshape(count, bits)
    weights = np.left_shift(np.int64(1), np.arange(bits, dtype=np.int64))
    return planes.astype(np.int64) @ weights


def bits_to_int(planes: np.ndarray, width: int) -> np.ndarray:
    """Rows of ``width`` LSB-first bits -> int64 values (``planes`` is [n, width] of 0/1)."""
    if width == 0:
        return np.zeros(planes.shape[0], dtype=np.int64)
    return planes.astype(np.int64) @ np.left_shift(np.int64(1), np.arange(width, dtype=np.int64))


def int_to_bits(values: np.ndarray, width: int) -> np.ndarray:
    """int values -> [n, width] uint8 bit planes, LSB first."""
    shifts = np.arange(width, dtype=np.int64)
    return ((values.astype(np.int64)[:, None] >> shifts) & 1).astype(np.uint8)


def write_varint(out: bytearray, value: int) -> None:
    """Append ``value`` (>= 0) as an unsigned LEB128 varint."""
    if value < 0:
        raise ValueError(f"varints hold values >= 0, got {value}")
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return


def read_varint(buf: bytes | memoryview, pos: int, what: str) -> tuple[int, int]:
    """Read an unsigned LEB128 varint at ``pos``; returns (value, next position)."""
    value = 0
    shift = 0
    while True:
        if pos >= len(buf):
            raise StoreError(
                f"{what}: a varint must end inside the stream, found its end at {pos}"
            )
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise StoreError(f"{what}: a varint must fit 64 bits, found a longer one")
