"""The ``base`` section: a fixed backbone every task may read and none owns (format v2).

SupSup-style methods never train the backbone: it is a *signed constant* per layer, every weight
``+scale`` or ``-scale`` (SupSup's "signed Kaiming constant", scale = gain / sqrt(fan_in)). The
store keeps it as what it is, one sign bit per position plus one float32 scale per layer, never
as an RNG seed (a seed ties the file to one PyTorch version's generator).

Layout, per layer in store order, concatenated: the scale as ``<f4``, then ``ceil(n / 8)`` bytes
of sign bits in flat C order, little-endian bit order (bit j is bit ``j % 8`` of byte ``j // 8``,
as the codes), 1 = negative. The lengths follow from the layer shapes, so the section has no
header of its own.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from pipeline.errors import StoreError

__all__ = ["BASE_BITS", "base_size", "decode_base", "encode_base"]

BASE_BITS = 1  # bits of each position's budget the base's sign takes


def base_size(layers: dict[str, tuple[int, ...]]) -> int:
    """Bytes of the base section for these layers."""
    return sum(4 + (math.prod(s) + 7) // 8 for s in layers.values())


def encode_base(weights: dict[str, torch.Tensor], layers: dict[str, tuple[int, ...]]) -> bytes:
    """The base section for ``weights`` (name -> float32 tensor); each layer's entries must all
    be ``+scale`` or ``-scale`` for one finite ``scale > 0`` (bit for bit)."""
    if not isinstance(weights, dict) or set(weights) != set(layers):
        got = set(weights) if isinstance(weights, dict) else set()
        raise StoreError(f"the base must give every store layer, found missing "
                         f"{sorted(set(layers) - got)} and unknown {sorted(got - set(layers))}")
    out = bytearray()
    for name, shape in layers.items():
        w = weights[name]
        what = f"base layer '{name}'"
        if not isinstance(w, torch.Tensor) or w.dtype != torch.float32 or \
                tuple(w.shape) != shape:
            raise StoreError(f"{what} must be a float32 tensor of shape {shape}")
        flat = w.detach().to("cpu").reshape(-1).numpy()
        scale = np.float32(np.abs(flat[0])) if flat.size else np.float32(1.0)
        if not (np.isfinite(scale) and scale > 0) or \
                not np.array_equal(np.abs(flat).view(np.uint32),
                                   np.full(flat.size, scale, np.float32).view(np.uint32)):
            raise StoreError(f"{what} must be a signed constant (every entry +scale or -scale, "
                             "scale > 0 and finite), found other values")
        out += np.asarray(scale, "<f4").tobytes()
        out += np.packbits(np.signbit(flat), bitorder="little").tobytes()
    return bytes(out)


def decode_base(buf: bytes | memoryview,
                layers: dict[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
    """Flat float32 weights per layer from the base section (checked: length, scales)."""
    if len(buf) != base_size(layers):
        raise StoreError(f"section 'base' must hold {base_size(layers)} bytes for the store's "
                         f"layers, found {len(buf)}")
    out: dict[str, np.ndarray] = {}
    pos = 0
    for name, shape in layers.items():
        n = math.prod(shape)
        scale = np.frombuffer(buf[pos:pos + 4], "<f4")[0]
        if not (np.isfinite(scale) and scale > 0):
            raise StoreError(f"base layer '{name}': the scale must be finite and > 0, "
                             f"found {scale}")
        pos += 4
        nbytes = (n + 7) // 8
        negative = np.unpackbits(np.frombuffer(buf[pos:pos + nbytes], np.uint8), count=n,
                                 bitorder="little").astype(bool)
        pos += nbytes
        out[name] = np.where(negative, -scale, scale).astype(np.float32)
    return out
