"""Unstructured sparse linear kernel (CSR) written in TIR, with its weights baked in as constants.

For weights pruned without a block structure (unstructured, n:m), where the BSR kernel has no
blocks to vectorise over. Layout: CSR (row by row: column indices and values of the nonzeros),
each row padded with zero entries (column 0) to a multiple of G so the unrolled loop needs no
remainder. x is read as (K, batch) (the importer puts the BSR kernels' ``transpose_kernel`` in
front), so one nonzero multiplies NB adjacent batch values: a vector load and one FMA with the
weight broadcast.

Schedule: parallel over rows -> G accumulator sets (independent FMA chains over interleaved
nonzeros; at batch 1 they are what keeps the FMA unit busy) -> batch tiles of NB lanes (NB the
largest of 16, 8, 4, 2, 1 dividing the batch) -> nonzeros of the row, G at a time -> NB lanes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .._api import load

__all__ = ["CSRWeight", "GROUP", "csr_linear_kernel", "pack_csr"]

GROUP = 4  # nonzeros per unrolled step: independent accumulators


@dataclass(frozen=True)
class CSRWeight:
    data: np.ndarray  # (nnz_padded,) float32
    indices: np.ndarray  # (nnz_padded,) int32: column of each entry
    indptr: np.ndarray  # (M + 1,) int32: per row, its first group of GROUP entries
    shape: tuple[int, int]

    @property
    def nnz(self) -> int:
        return int(np.count_nonzero(self.data))


def pack_csr(weight: np.ndarray) -> CSRWeight:
    """Pack a dense fp32 weight as row-padded CSR (exact: no value changes)."""
    m, k = weight.shape
    w = weight.astype(np.float32)
    data, indices, indptr = [], [], [0]
    for r in range(m):
        cols = np.nonzero(w[r])[0]
        pad = (-len(cols)) % GROUP
        data += [w[r, cols], np.zeros(pad, np.float32)]
        indices += [cols, np.zeros(pad, np.int64)]
        indptr.append(indptr[-1] + (len(cols) + pad) // GROUP)
    flat = np.concatenate(data) if data else np.zeros(0, np.float32)
    if flat.size == 0:  # an all-zero weight: one padded group keeps the buffers non-empty
        flat, indices = np.zeros(GROUP, np.float32), [np.zeros(GROUP, np.int64)]
    return CSRWeight(data=np.ascontiguousarray(flat, dtype=np.float32),
                     indices=np.concatenate(indices).astype(np.int32),
                     indptr=np.asarray(indptr, dtype=np.int32), shape=(m, k))


def lanes(batch: int) -> int:
    """NB: batch values per vector."""
    return max(v for v in (16, 8, 4, 2, 1) if batch % v == 0)


def csr_linear_kernel(batch: int, w: CSRWeight, relu: bool):
    """A TIR PrimFunc ``(xt, data, indices, indptr, bias, y)``: y = act(x W^T + b), with x
    given as (K, batch)."""
    T = load().T  # noqa: N806 - TVMScript convention
    m, k = w.shape
    g, nb = GROUP, lanes(batch)
    n_tiles, nnz = batch // nb, int(w.data.shape[0])
    lo = -3.4e38 if not relu else 0.0  # max(v, lo) is the activation; -FLT_MAX means identity

    @T.prim_func(private=True)
    def csr_linear(
        xt: T.Buffer((k, batch), "float32"),
        data: T.Buffer((nnz,), "float32"),
        indices: T.Buffer((nnz,), "int32"),
        indptr: T.Buffer((m + 1,), "int32"),
        bias: T.Buffer((m,), "float32"),
        y: T.Buffer((batch, m), "float32"),
    ):
        T.func_attr({"tir.noalias": True, "tir.is_scheduled": True})
        for r in T.parallel(m):
            for no in range(n_tiles):
                # "global": a stack alloca LLVM keeps in registers (see kernels/bsr.py)
                acc = T.alloc_buffer((g, nb), "float32", scope="global")
                for a in T.unroll(g):
                    for n in T.vectorized(nb):
                        acc[a, n] = T.float32(0)
                for jo in range(indptr[r], indptr[r + 1]):
                    for a in T.unroll(g):
                        for n in T.vectorized(nb):
                            acc[a, n] = acc[a, n] + xt[indices[jo * g + a], no * nb + n] * data[
                                jo * g + a]
                for n in T.serial(nb):
                    y[no * nb + n, r] = T.max(
                        acc[0, n] + acc[1, n] + acc[2, n] + acc[3, n] + bias[r], T.float32(lo))

    return csr_linear
