"""Packed store codecs: bit packing, Golomb mask coding, 1-D k-means codebooks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pipeline.errors import StoreError
from pipeline.store import fit_codebook
from pipeline.store._bits import pack_codes, read_varint, unpack_codes, write_varint
from pipeline.store._masks import (
    binary_entropy,
    decode_bitmap,
    decode_layer_mask,
    encode_bitmap,
    encode_layer_mask,
)


# ------------------------------------------------------------------------------------ bit packing
def test_pack_3bit_codes_lsb_first_exact_bytes() -> None:
    # codes 3,7,0,5,1,6,2 -> bit stream (LSB of each code first):
    # 110 111 000 101 100 011 010 -> bytes 0b00111011, 0b00011010, 0b00001011
    assert pack_codes(np.array([3, 7, 0, 5, 1, 6, 2]), 3) == bytes([0x3B, 0x1A, 0x0B])


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 6, 8, 16, 32])
def test_pack_roundtrip_every_width(bits: int) -> None:
    rng = np.random.default_rng(bits)
    codes = rng.integers(0, 1 << bits, size=1001, dtype=np.int64)
    buf = pack_codes(codes, bits)
    assert len(buf) == (1001 * bits + 7) // 8
    np.testing.assert_array_equal(unpack_codes(buf, 1001, bits), codes)


def test_pack_16bit_is_little_endian_u2() -> None:
    assert pack_codes(np.array([0x1234, 0xABCD]), 16) == bytes([0x34, 0x12, 0xCD, 0xAB])


def test_unpack_wrong_length_raises() -> None:
    with pytest.raises(StoreError, match=r"5 codes of 3 bits must take 2 bytes, found 3"):
        unpack_codes(b"\0\0\0", 5, 3)


def test_varint_roundtrip_and_truncation() -> None:
    out = bytearray()
    for v in (0, 127, 128, 300, 2**40):
        write_varint(out, v)
    pos, got = 0, []
    for _ in range(5):
        v, pos = read_varint(out, pos, "x")
        got.append(v)
    assert got == [0, 127, 128, 300, 2**40] and pos == len(out)
    with pytest.raises(StoreError, match="varint must end inside"):
        read_varint(b"\x80", 0, "x")


# ------------------------------------------------------------------------------------ mask codec
@pytest.mark.parametrize("density", [0.0, 0.001, 0.05, 0.5, 0.93, 1.0])
@pytest.mark.parametrize("n", [0, 1, 7, 20_000])
def test_bitmap_roundtrip(density: float, n: int) -> None:
    bits = np.random.default_rng(n).random(n) < density
    np.testing.assert_array_equal(decode_bitmap(encode_bitmap(bits), n, "t"), bits)


def test_bitmap_roundtrip_runs_and_edges() -> None:
    bits = np.zeros(10_000, bool)
    bits[[0, 9_999]] = True
    bits[100:900] = True  # one long run: gaps of 0 next to a gap of 9000
    np.testing.assert_array_equal(decode_bitmap(encode_bitmap(bits), 10_000, "t"), bits)


@pytest.mark.parametrize("density", [0.01, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5])
def test_bitmap_size_near_entropy(density: float) -> None:
    """Coded size <= 1.05 * n*H(d)/8 + 16 bytes (measured worst case ~3% at d=0.4)."""
    n = 200_000
    bits = np.random.default_rng(7).random(n) < density
    d = bits.mean()
    bound = 1.05 * n * binary_entropy(d) / 8 + 16
    size = len(encode_bitmap(bits))
    assert size <= bound, (density, size, bound)
    assert size >= n * binary_entropy(d) / 8 * 0.97  # sanity: no code beats entropy by much


def test_bitmap_checks_length_and_corruption() -> None:
    buf = encode_bitmap(np.random.default_rng(0).random(1000) < 0.1)
    with pytest.raises(StoreError, match="must cover 999 positions, found 1000"):
        decode_bitmap(buf, 999, "L")
    with pytest.raises(StoreError, match="flags byte"):
        decode_bitmap(b"\x07" + buf[1:], 1000, "L")
    with pytest.raises(StoreError, match="L:"):
        decode_bitmap(buf[:-8], 1000, "L")


def test_layer_mask_conditional_roundtrip() -> None:
    rng = np.random.default_rng(3)
    n = 5000
    union = rng.random(n) < 0.3
    splittable = rng.random(n) < 0.5
    mask = (union & (rng.random(n) < 0.5)) | (~union & (rng.random(n) < 0.05))
    own = mask & (~union | (splittable & (rng.random(n) < 0.2)))
    buf = encode_layer_mask(mask, own, union, splittable)
    got_mask, got_own = decode_layer_mask(buf, union, splittable, "L")
    np.testing.assert_array_equal(got_mask, mask)
    np.testing.assert_array_equal(got_own, own)
    with pytest.raises(StoreError, match="extra bytes"):
        decode_layer_mask(buf + b"\0", union, splittable, "L")


def test_layer_mask_empty_layer() -> None:
    e = np.zeros(0, bool)
    buf = encode_layer_mask(e, e, e, e)
    assert buf == bytes([3, 0, 0, 0]) * 3  # three empty bitmaps: len 3, flags 0, n 0, ones 0
    m, o = decode_layer_mask(buf, e, e, "L")
    assert m.size == 0 and o.size == 0


# ------------------------------------------------------------------------------------ codebooks
def test_fit_codebook_few_values_is_exact() -> None:
    v = torch.tensor([[0.5, -1.0], [0.5, 3.0]])
    cb, codes = fit_codebook(v, 2)
    assert torch.equal(cb, torch.tensor([-1.0, 0.5, 3.0]))
    assert torch.equal(codes, torch.tensor([[1, 0], [1, 2]]))


def test_fit_codebook_two_clusters_and_determinism() -> None:
    g = torch.Generator().manual_seed(0)
    v = torch.cat(
        [torch.randn(500, generator=g) * 0.01 - 2, torch.randn(300, generator=g) * 0.01 + 5]
    )
    cb, codes = fit_codebook(v, 1)
    assert cb.dtype == torch.float32 and cb.shape == (2,)
    assert torch.allclose(cb, torch.tensor([v[:500].mean(), v[500:].mean()]), atol=1e-6)
    assert torch.equal(codes, torch.cat([torch.zeros(500), torch.ones(300)]).long())
    cb2, codes2 = fit_codebook(v, 1)
    assert torch.equal(cb, cb2) and torch.equal(codes, codes2)


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 8])
def test_fit_codebook_quality_gaussian(bits: int) -> None:
    v = torch.randn(20_000, generator=torch.Generator().manual_seed(1))
    cb, codes = fit_codebook(v, bits)
    assert cb.numel() <= 2**bits and codes.dtype == torch.int64
    assert torch.all(cb[1:] > cb[:-1])
    q = cb[codes]
    mse = float(((q - v) ** 2).mean())
    # Lloyd-Max MSE for N(0,1) (8 bits: Panter-Dite 2.72 * 2^-16); samples may do slightly better
    optimal = {1: 0.3634, 2: 0.1175, 3: 0.03454, 4: 0.009497, 8: 4.2e-5}[bits]
    assert mse <= optimal * 1.05 + 1e-6
    assert (
        codes == torch.from_numpy(np.searchsorted((cb[1:] + cb[:-1]).numpy() / 2, v.numpy()))
    ).all()


def test_fit_codebook_errors() -> None:
    with pytest.raises(StoreError, match="finite, found 1 NaN/inf"):
        fit_codebook(torch.tensor([1.0, math.nan]), 2)
    with pytest.raises(StoreError, match="1 <= bits <= 16, found bits=0"):
        fit_codebook(torch.ones(3), 0)
    cb, codes = fit_codebook(torch.zeros(0), 3)
    assert cb.numel() == 0 and codes.numel() == 0
