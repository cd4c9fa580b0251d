"""Seeded random generators keyed by purpose, so that no draw depends on another.

``rng_for(seed, "val", 3)`` always gives the same generator, whatever else was drawn before and
whatever the global RNG state is. Purposes are hashed with CRC32 (stable across processes, unlike
``hash``), and the seed is reduced to 64 bits because ``SeedSequence`` needs non-negative entropy.
"""

from __future__ import annotations

import zlib

import numpy as np


def rng_for(seed: int, purpose: str, *keys: int) -> np.random.Generator:
    """A generator determined only by ``(seed, purpose, *keys)``."""
    entropy = [seed & 0xFFFF_FFFF_FFFF_FFFF, zlib.crc32(purpose.encode()), *keys]
    return np.random.default_rng(np.random.SeedSequence(entropy))
