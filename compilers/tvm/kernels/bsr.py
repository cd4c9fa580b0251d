"""Block-sparse linear kernel written in TIR, with its weights packed as BSR constants.

Layout: the weight W (M x K) is cut into (bh x bw) blocks; only blocks holding a nonzero are
stored, block row by block row (BSR). Each stored block is transposed to (bw, bh) so the kernel's
innermost, vectorized loop runs over bh *output* units with unit stride: a 16x1 block is exactly
one AVX-512 register of fp32. That is why tall blocks are fast and wide ones are not
(docs/compilers.md).
The block data is fp32, or int8 codes after the ``int8`` transform (converted to fp32 in registers;
the per-row scale multiplies the accumulated sum once; fp32 weights use scale 1, which is exact).

Schedule (hand-written; MetaSchedule cannot schedule data-dependent loops), a :class:`BSRSchedule`:
  order "rows": parallel over block rows -> tile of NT batch rows; order "tiles": parallel over
  tiles of NT batch rows -> block rows; then U accumulator sets (independent FMA chains hide FMA
  latency at batch 1) -> stored blocks of the row -> bw -> NT -> vector of bh.
Rows are padded with zero blocks to a multiple of U so the unrolled loop needs no remainder.
Batched inputs: with ``x_transposed`` the kernel reads x as (K, batch), so the NT values a stored
block multiplies are adjacent (one cache line) instead of NT rows apart; the linear path gets that
layout from :func:`transpose_kernel`. Which schedule a layer runs is measured per workload and
kept beside the tuning database (``compilers.tvm.bsr_tuning``); untuned builds use
:func:`default_schedule`.

Conv layers run their own direct kernel with the same BSR packing (``kernels/bsr_conv.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .._api import load

__all__ = [
    "BSRSchedule", "BSRWeight", "bsr_linear_kernel", "default_schedule", "kernel_tiling",
    "pack_bsr", "schedule_candidates", "transpose_kernel",
]

# Relax's OpPatternKind.kOpaque. A hand kernel that reads or writes a plain copy (transpose)
# would otherwise be classed injective by AnnotateTIROpPattern and fused with its neighbour by
# FuseOps in the tuning database's legalize step, where FuseTIR then failed on TVM 0.27.0.post1
# ("Inconsistent buffers compute and x mapped to the same relax var") for a CSR layer after a
# legalized op. An op_pattern already set is kept, so these kernels stay calls of their own.
OPAQUE = 8


@dataclass(frozen=True)
class BSRWeight:
    data: np.ndarray  # (nnz_blocks, bw, bh) float32 or int8
    indices: np.ndarray  # (nnz_blocks,) int32: block column of each stored block
    indptr: np.ndarray  # (M / bh + 1,) int32: per block row, first group of U stored blocks
    shape: tuple[int, int]
    block: tuple[int, int]
    group: int  # U: blocks per unrolled group

    @property
    def nnz_blocks(self) -> int:
        return int(self.indices.shape[0])


def kernel_tiling(batch: int) -> tuple[int, int]:
    """(U, NT): accumulator sets and batch rows per tile, chosen for ~2-16 live registers."""
    if batch == 1:
        return 2, 1
    nt = max(d for d in range(1, 9) if batch % d == 0)
    return 1, nt


@dataclass(frozen=True)
class BSRSchedule:
    """How :func:`bsr_linear_kernel` runs a layer: U accumulator sets, NT batch rows per tile,
    x read as (K, batch) (``x_transposed``) or (batch, K), and the parallel loop (``order``)."""

    u: int
    nt: int
    x_transposed: bool = False
    order: str = "rows"  # "rows": parallel over block rows; "tiles": over batch tiles

    def name(self) -> str:
        return f"u{self.u}-nt{self.nt}-{'xt' if self.x_transposed else 'x'}-{self.order}"


def default_schedule(batch: int) -> BSRSchedule:
    """The untuned choice: :func:`kernel_tiling`, x transposed for batches of 8 or more (the
    measured winner on the 784-2000-2000 MLP at batch 64: 1.2-1.3x the row-major read)."""
    u, nt = kernel_tiling(batch)
    return BSRSchedule(u, nt, x_transposed=batch >= 8 and nt > 1)


def schedule_candidates(batch: int) -> list[BSRSchedule]:
    """The schedules the tuner measures for a batch (the default first)."""
    if batch == 1:
        return [BSRSchedule(2, 1), BSRSchedule(1, 1)]
    tiles = sorted({nt for nt in (4, 8) if batch % nt == 0} | {kernel_tiling(batch)[1]})
    out = [default_schedule(batch)]
    for nt in tiles:
        for xt in (True, False):
            for order in ("rows", "tiles"):
                cand = BSRSchedule(1, nt, xt, order)
                if cand not in out:
                    out.append(cand)
    return out


def pack_bsr(weight: np.ndarray, bh: int, bw: int, group: int) -> BSRWeight:
    """Pack a dense weight with zero blocks into :class:`BSRWeight` (exact: no value changes).

    float32 and int8 weights keep their dtype; any other dtype is packed as float32.
    """
    m, k = weight.shape
    if m % bh or k % bw:
        raise ValueError(
            f"weight shape {weight.shape} must be divisible by the block ({bh}, {bw})."
        )
    rows, cols = m // bh, k // bw
    dtype = np.int8 if weight.dtype == np.int8 else np.float32
    blocks = weight.astype(dtype).reshape(rows, bh, cols, bw).transpose(0, 2, 3, 1)
    nonzero = (blocks != 0).any(axis=(2, 3))
    data, indices, indptr = [], [], [0]
    for r in range(rows):
        cs = np.nonzero(nonzero[r])[0]
        pad = (-len(cs)) % group
        data.append(blocks[r, cs])
        data.append(np.zeros((pad, bw, bh), dtype))
        indices.append(np.concatenate([cs, np.zeros(pad, np.int64)]))
        indptr.append(indptr[-1] + (len(cs) + pad) // group)
    return BSRWeight(
        data=np.ascontiguousarray(np.concatenate(data), dtype=dtype),
        indices=np.concatenate(indices).astype(np.int32),
        indptr=np.asarray(indptr, dtype=np.int32),
        shape=(m, k),
        block=(bh, bw),
        group=group,
    )


def bsr_linear_kernel(
    batch: int, w: BSRWeight, relu: bool, *, x_transposed: bool = False,
    schedule: BSRSchedule | None = None,
):
    """A TIR PrimFunc ``(x, data, indices, indptr, scale, bias, y)``: y = act((x W^T) * s + b).

    ``x`` is (batch, K), or (K, batch) with ``x_transposed`` (the NT batch rows of a tile are
    then adjacent in memory). ``y`` is (batch, M).
    """
    T = load().T  # noqa: N806 - TVMScript convention
    m, k = w.shape
    bh, bw = w.block
    if schedule is None:
        schedule = BSRSchedule(*kernel_tiling(batch), x_transposed=x_transposed)
    u, nt, x_transposed = schedule.u, schedule.nt, schedule.x_transposed
    if batch % nt:
        raise ValueError(f"the tile of {nt} batch rows must divide the batch {batch}.")
    if schedule.order not in ("rows", "tiles"):
        raise ValueError(f"schedule order must be 'rows' or 'tiles', but got {schedule.order!r}.")
    if u != w.group or u not in (1, 2):
        raise ValueError(f"BSR group must equal the kernel's U={u} (1 or 2), but got {w.group}.")
    rows, nnz, n_tiles = m // bh, max(w.nnz_blocks, 1), batch // nt
    lo = -3.4e38 if not relu else 0.0  # max(v, lo) is the activation; -FLT_MAX means identity
    x_shape = (k, batch) if x_transposed else (batch, k)

    # Index of x[row, col] in its layout (called while the script is parsed).
    def xi(row, col):  # noqa: ANN001, ANN202
        return (col, row) if x_transposed else (row, col)

    # The one parallel loop runs over (block row, batch tile) pairs; ``order`` says which is outer.
    def row_of(t):  # noqa: ANN001, ANN202
        return t // n_tiles if schedule.order == "rows" else t % rows

    def tile_of(t):  # noqa: ANN001, ANN202
        return t % n_tiles if schedule.order == "rows" else t // rows

    @T.prim_func(private=True)
    def bsr_linear(
        x: T.Buffer(x_shape, "float32"),
        data: T.Buffer((nnz, bw, bh), str(w.data.dtype)),
        indices: T.Buffer((nnz,), "int32"),
        indptr: T.Buffer((rows + 1,), "int32"),
        scale: T.Buffer((m,), "float32"),
        bias: T.Buffer((m,), "float32"),
        y: T.Buffer((batch, m), "float32"),
    ):
        T.func_attr({"tir.noalias": True, "tir.is_scheduled": True})
        for t in T.parallel(rows * n_tiles):
            # "global" scope lowers to a stack alloca LLVM keeps in registers ("local" goes
            # through the workspace allocator and stays in memory: 2.5x slower, measured).
            acc = T.alloc_buffer((u, nt, bh), "float32", scope="global")
            for g in T.unroll(u):
                for ni in T.unroll(nt):
                    for i in T.vectorized(bh):
                        acc[g, ni, i] = T.float32(0)
            for jo in range(indptr[row_of(t)], indptr[row_of(t) + 1]):
                for g in T.unroll(u):
                    for kk in T.unroll(bw):
                        for ni in T.unroll(nt):
                            for i in T.vectorized(bh):
                                acc[g, ni, i] = acc[g, ni, i] + x[
                                    xi(tile_of(t) * nt + ni, indices[jo * u + g] * bw + kk)
                                ] * T.Cast("float32", data[jo * u + g, kk, i])
            for ni in T.unroll(nt):
                for i in T.vectorized(bh):
                    y[tile_of(t) * nt + ni, row_of(t) * bh + i] = T.max(
                        (acc[0, ni, i] + acc[u - 1, ni, i] * T.float32(u - 1))
                        * scale[row_of(t) * bh + i]
                        + bias[row_of(t) * bh + i],
                        T.float32(lo),
                    )

    return bsr_linear


def transpose_kernel(batch: int, k: int):
    """A TIR PrimFunc ``(x, xt)``: the (batch, K) input as (K, batch), for a batched BSR layer."""
    T = load().T  # noqa: N806 - TVMScript convention

    # The root block is for Relax's reshape detection (RewriteDataflowReshape), which asserts on
    # a single-input call_tir callee without one; TVMScript's TIRx verifier rejects a root block in
    # a hand-scheduled function, hence check_well_formed=False (the build lowers it fine).
    @T.prim_func(private=True, check_well_formed=False)
    def transpose(x: T.Buffer((batch, k), "float32"), xt: T.Buffer((k, batch), "float32")):
        T.func_attr({"tir.noalias": True, "tir.is_scheduled": True, "op_pattern": OPAQUE})
        with T.sblock("root"):
            for c in T.parallel(k):
                for n in range(batch):
                    xt[c, n] = x[n, c]

    return transpose
