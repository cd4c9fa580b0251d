"""Weight-only int8 linear kernel written in TIR, fed by int8 weight constants.

Why a hand-written kernel and not Relax ``dequantize`` + ``matmul``: with the weight as a constant,
Relax's FoldConstant evaluates ``dequantize`` at build time and bakes an fp32 weight into the
library (the int8 bytes are gone); with the weight as a runtime input, FuseOps keeps
``dequantize(+transpose)`` and ``matmul`` in separate kernels, so every call writes and re-reads a
full fp32 weight. Both read 4 bytes per weight; batch 1 is memory bound, so int8 only pays off when
the kernel itself reads the int8 bytes (measured on TVM 0.27, see docs/compilers.md).

Layout: the weight W (M x K, int8) is cut into tiles of V output rows and stored transposed per
tile, ``data[M/V, K, V]``, so the innermost, vectorized loop runs over V output units with unit
stride (16 int8 -> one AVX-512 register of fp32 after conversion), like the block-sparse kernel.
V is the largest of 16, 8, 4, 2, 1 dividing M (no padding, no slicing: a 10-way head runs V=2;
keep wide layers on a grid of 16). The per-row scale is applied once to the accumulated dot
product, then the bias.

Schedule: parallel over row tiles -> tile of NT batch rows -> U accumulator sets (independent FMA
chains over interleaved k at batch 1) -> k -> NT -> vector of V.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .._api import load
from .bsr import kernel_tiling

__all__ = ["Int8Weight", "VECTORS", "int8_linear_kernel", "pack_int8"]

VECTORS = (16, 8, 4, 2, 1)  # output units per vector, best first: 16 fp32 lanes = one AVX-512 reg


@dataclass(frozen=True)
class Int8Weight:
    data: np.ndarray  # (M / V, K, V) int8
    scale: np.ndarray  # (M,) float32
    shape: tuple[int, int]  # (M, K)


def pack_int8(q: np.ndarray, scale: np.ndarray) -> Int8Weight:
    """Pack int8 codes ``q`` (M x K) with per-row ``scale`` into :class:`Int8Weight` (exact)."""
    if q.dtype != np.int8 or q.ndim != 2:
        raise ValueError(f"q must be a 2-D int8 array, but got {q.ndim}-D {q.dtype}.")
    m, k = q.shape
    if scale.shape != (m,):
        raise ValueError(f"scale must have shape ({m},), but got {scale.shape}.")
    v = next(v for v in VECTORS if m % v == 0)
    data = q.reshape(m // v, v, k).transpose(0, 2, 1)
    return Int8Weight(np.ascontiguousarray(data), scale.astype(np.float32), (m, k))


def _accumulators(batch: int, k: int) -> tuple[int, int]:
    """(U, NT) as for the BSR kernel; U must divide K (the k loop has no remainder)."""
    u, nt = kernel_tiling(batch)
    while k % u:
        u //= 2
    return u, nt


def int8_linear_kernel(batch: int, w: Int8Weight, relu: bool):
    """A TIR PrimFunc ``(x, data, scale, bias, y)`` computing y = act((x q^T) * scale + b)."""
    T = load().T  # noqa: N806 - TVMScript convention
    m, k = w.shape
    tiles, _, v = (int(d) for d in w.data.shape)
    u, nt = _accumulators(batch, k)
    n_tiles, k_outer = batch // nt, k // u
    lo = -3.4e38 if not relu else 0.0  # max(v, lo) is the activation; -FLT_MAX means identity

    @T.prim_func(private=True)
    def int8_linear(
        x: T.Buffer((batch, k), "float32"),
        data: T.Buffer((tiles, k, v), str(w.data.dtype)),
        scale: T.Buffer((m,), "float32"),
        bias: T.Buffer((m,), "float32"),
        y: T.Buffer((batch, m), "float32"),
    ):
        T.func_attr({"tir.noalias": True, "tir.is_scheduled": True})
        for r in T.parallel(tiles):
            for no in range(n_tiles):
                # "global" scope: a stack alloca LLVM keeps in registers (see kernels.py).
                acc = T.alloc_buffer((u, nt, v), "float32", scope="global")
                for g in T.unroll(u):
                    for ni in T.unroll(nt):
                        for i in T.vectorized(v):
                            acc[g, ni, i] = T.float32(0)
                for ko in range(k_outer):
                    for g in T.unroll(u):
                        for ni in T.unroll(nt):
                            for i in T.vectorized(v):
                                acc[g, ni, i] = acc[g, ni, i] + x[
                                    no * nt + ni, ko * u + g
                                ] * T.Cast("float32", data[r, ko * u + g, i])
                for g in T.unroll(1, u):
                    for ni in T.unroll(nt):
                        for i in T.vectorized(v):
                            acc[0, ni, i] = acc[0, ni, i] + acc[g, ni, i]
                for ni in T.unroll(nt):
                    for i in T.vectorized(v):
                        y[no * nt + ni, r * v + i] = T.max(
                            acc[0, ni, i] * scale[r * v + i] + bias[r * v + i], T.float32(lo)
                        )

    return int8_linear
