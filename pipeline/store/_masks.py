"""Mask codec: Golomb coding of gaps between set bits, and the conditional per-task layer masks.

A bitmap of ``n`` positions with ``c`` set bits is coded as the ``c`` gaps (zeros before each set
bit). For i.i.d. bits of density ``d`` the gaps are geometric, and the Golomb code with the right
parameter ``m`` is the optimal prefix code for them, which lands within a few percent of the binary
entropy ``H(d)`` per position (measured in docs/store-format.md). Bitmaps denser than 1/2 are
inverted first, so the cost is symmetric in ``d``.

Each gap ``g`` is split as ``q = g // m`` (unary) and ``r = g % m`` (truncated binary). To decode
without a sequential loop, the three kinds of bits go to three consecutive sub-streams: all unary
parts (``q`` zeros then a one), then the first ``k-1`` bits of every remainder (fixed width, so
indexable), then the extra low bit of the remainders that need ``k`` bits. The total is bit for bit
the size of the classic interleaved Golomb code.
"""

from __future__ import annotations

import math

import numpy as np

from pipeline.errors import StoreError
from pipeline.store._bits import bits_to_int, int_to_bits, read_varint, write_varint


def _golomb_params(m: int) -> tuple[int, int]:
    """(k, u) of the truncated-binary remainder for Golomb parameter ``m`` (m >= 2)."""
    k = (m - 1).bit_length()
    return k, (1 << k) - m


def _golomb_cost(gaps: np.ndarray, m: int) -> int:
    """Exact size in bits of ``gaps`` coded with Golomb parameter ``m``."""
    unary = int((gaps // m).sum()) + gaps.size
    if m == 1:
        return unary
    k, u = _golomb_params(m)
    return unary + gaps.size * (k - 1) + int(np.count_nonzero(gaps % m >= u))


def _best_m(gaps: np.ndarray, n: int) -> int:
    """Cheapest Golomb parameter for ``gaps``: closed form for geometric gaps, checked exactly."""
    d = gaps.size / n
    if d >= 0.5:
        m0 = 1
    else:
        # Gallager & van Voorhis: optimal m for P(g) = (1-d)^g d.
        m0 = max(1, math.ceil(math.log(2 - d) / -math.log1p(-d)))
    candidates = {max(1, m0 + j) for j in (-2, -1, 0, 1, 2)}
    candidates |= {1 << max(0, (m0 - 1).bit_length() - 1), 1 << (m0 - 1).bit_length()}
    return min(sorted(candidates), key=lambda m: _golomb_cost(gaps, m))


def encode_bitmap(bits: np.ndarray) -> bytes:
    """Code a 1-D bool array; the length is stored too so decoding can check its context."""
    bits = np.asarray(bits, dtype=bool).reshape(-1)
    n = bits.size
    ones = int(np.count_nonzero(bits))
    inverted = ones * 2 > n
    if inverted:
        bits = ~bits
        ones = n - ones
    out = bytearray([1 if inverted else 0])
    write_varint(out, n)
    write_varint(out, ones)
    if ones == 0:
        return bytes(out)
    pos = np.flatnonzero(bits)
    gaps = np.diff(pos, prepend=-1) - 1
    m = _best_m(gaps, n)
    q = gaps // m
    unary_len = int(q.sum()) + ones
    stream = [np.zeros(unary_len, dtype=np.uint8)]
    stream[0][np.cumsum(q + 1) - 1] = 1  # each unary part ends with its one
    if m > 1:
        k, u = _golomb_params(m)
        r = gaps % m
        v = np.where(r < u, r, r + u)  # truncated binary: short codes keep r, long codes r + u
        long_ = r >= u
        head = np.where(long_, v >> 1, v)  # first k-1 bits of every remainder
        stream.append(int_to_bits(head, k - 1).reshape(-1))
        stream.append((v[long_] & 1).astype(np.uint8))
    write_varint(out, m)
    write_varint(out, unary_len)
    out += np.packbits(np.concatenate(stream), bitorder="little").tobytes()
    return bytes(out)


def decode_bitmap(buf: bytes | memoryview, n: int, what: str) -> np.ndarray:
    """Inverse of :func:`encode_bitmap`; ``n`` is the length the context expects."""
    if len(buf) < 1 or buf[0] > 1:
        raise StoreError(
            f"{what}: a bitmap must start with a flags byte 0 or 1, found {bytes(buf[:1])!r}"
        )
    inverted = buf[0] == 1
    stored_n, p = read_varint(buf, 1, what)
    if stored_n != n:
        raise StoreError(f"{what}: the bitmap must cover {n} positions, found {stored_n}")
    ones, p = read_varint(buf, p, what)
    if ones > n:
        raise StoreError(
            f"{what}: a bitmap of {n} positions must have <= {n} set bits, found {ones}"
        )
    out = np.zeros(n, dtype=bool)
    if ones:
        m, p = read_varint(buf, p, what)
        unary_len, p = read_varint(buf, p, what)
        payload = (
            np.frombuffer(buf, dtype=np.uint8, offset=p) if p < len(buf) else np.zeros(0, np.uint8)
        )
        k, u = _golomb_params(m) if m > 1 else (1, 0)
        fixed = unary_len + ones * (k - 1)
        if m < 1 or fixed > payload.size * 8:
            raise StoreError(
                f"{what}: the bitmap payload must hold {fixed} bits, found {payload.size * 8}"
            )
        stream = np.unpackbits(payload, bitorder="little")
        ends = np.flatnonzero(stream[:unary_len])
        if ends.size != ones or ends[-1] != unary_len - 1:
            raise StoreError(f"{what}: the unary stream must end {ones} codes, found {ends.size}")
        gaps = (np.diff(ends, prepend=-1) - 1) * m
        if m > 1:
            head = bits_to_int(stream[unary_len:fixed].reshape(ones, k - 1), k - 1)
            long_ = head >= u
            n_long = int(np.count_nonzero(long_))
            if fixed + n_long > stream.size:
                raise StoreError(f"{what}: the bitmap payload is shorter than its codes")
            low = stream[fixed : fixed + n_long].astype(np.int64)
            r = head.copy()
            r[long_] = ((head[long_] << 1) | low) - u
            gaps += r
        positions = np.cumsum(gaps + 1) - 1
        if positions[-1] >= n:
            raise StoreError(f"{what}: set bits must lie below {n}, found one at {positions[-1]}")
        out[positions] = True
    return ~out if inverted else out


def encode_layer_mask(
    mask: np.ndarray, own: np.ndarray, union: np.ndarray, splittable: np.ndarray
) -> bytes:
    """Code a task's layer mask conditioned on what earlier tasks hold (all args flat bool arrays).

    Three bitmaps, each length-prefixed: (1) ``mask`` over the positions of ``union`` (M_{t-1}),
    (2) ``own`` over the positions outside ``union`` (fresh own codes; there own == mask), and
    (3) ``own`` over the masked ``union`` positions with enough free bits (``splittable``).
    Splitting is rare, so (3) is usually a handful of bytes.
    """
    out = bytearray()
    split_domain = union & mask & splittable
    for part in (mask[union], own[~union], own[split_domain]):
        coded = encode_bitmap(part)
        write_varint(out, len(coded))
        out += coded
    return bytes(out)


def decode_layer_mask(
    buf: bytes | memoryview, union: np.ndarray, splittable: np.ndarray, what: str
) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of :func:`encode_layer_mask`: returns flat (mask, own)."""
    pos = 0

    def next_bitmap(n: int, name: str) -> np.ndarray:
        nonlocal pos
        length, pos = read_varint(buf, pos, what)
        if pos + length > len(buf):
            raise StoreError(f"{what}: the {name} must end inside its stream, found it cut short")
        bits = decode_bitmap(buf[pos : pos + length], n, f"{what} {name}")
        pos += length
        return bits

    n_union = int(np.count_nonzero(union))
    mask = np.zeros(union.size, dtype=bool)
    mask[union] = next_bitmap(n_union, "shared bitmap")
    mask[~union] = next_bitmap(union.size - n_union, "fresh-own bitmap")
    own = mask & ~union
    split_domain = union & mask & splittable
    own[split_domain] = next_bitmap(int(np.count_nonzero(split_domain)), "split bitmap")
    if pos != len(buf):
        raise StoreError(
            f"{what}: the layer mask stream must end after 3 bitmaps, found extra bytes"
        )
    return mask, own


def binary_entropy(d: float) -> float:
    """H(d) in bits."""
    if d <= 0.0 or d >= 1.0:
        return 0.0
    return -(d * math.log2(d) + (1 - d) * math.log2(1 - d))
