"""Direct block-sparse conv2d kernel written in TIR (no im2col matrix).

The weight viewed as (O, C*kh*kw) is packed as BSR (:func:`~.bsr.pack_bsr`, group 1); each stored
block column k = (c, i, j) is baked in as the *offset* of its input value in a per-image padded
copy of the input, so the kernel never builds the (C*kh*kw, H_out*W_out) patch matrix.

Per image (the parallel loop): the input is copied into a zeroed buffer ``xp`` of shape
(C, H + 2*ph, sw, ceil((W + 2*pw) / sw)): padded, with each row split into its ``sw`` column
phases, so output columns ow, ow+1, ... read adjacent values for any stride and dilation. Then
for each output row and each tile of V adjacent output columns, for each block row: bh x V
accumulators (bh registers of V lanes, vectorized over the output *positions*), and per stored
(bh x bw) block and column kk, one vector load of V input values and bh FMAs with the weight
broadcast; the epilogue (scale, bias, ReLU) stores bh contiguous runs of V outputs straight into
NCHW. V = W_out when it fits, else the tile in 8..15 that wastes least (:func:`conv_tile`), the
last tile of a row shifted left to end at W_out (it recomputes a few columns; same values).

The block height is the kernel's own (:func:`choose_conv_blocking`, from the stored values of
each height): a 2:4-pruned or unstructured weight keeps nearly every 16x1 block it touches, so it
is packed in short blocks (down to 1x1), and a tile then covers several adjacent output rows
(:func:`conv_rows`) so that enough accumulators are independent FMA chains.

A max-pool after the conv (window = stride, no padding, floor; the importer fuses it) is applied
before the store: a tile's accumulators cover the window's rows one after the other, keeping the
max per lane, the window's columns are adjacent lanes (max by shuffles), and scale, bias and ReLU
follow on the pooled values (exact: x * s + b is non-decreasing in x for s >= 0), so only the
pooled output is written.

Why (docs/compilers.md, "Block-sparse conv"): the im2col path wrote a (C*kh*kw, N*H_out*W_out)
matrix, 9x the input, far beyond L2 at batch 64 (19 MB for a 32->64 conv at 16x16), read back
once per block row, and its vectors ran along output channels, so its NCHW store was a scatter.
"""

from __future__ import annotations

import numpy as np

from .._api import load
from .bsr import OPAQUE, BSRWeight

__all__ = [
    "BSRConvGeometry", "bsr_conv2d_kernel", "choose_conv_blocking", "conv_arrays", "conv_offsets",
    "conv_rows", "conv_tile",
]

MAX_LANES = 16  # V: output columns per tile (16 fp32 = one AVX-512 register)
STACK_BYTES = 1024  # TVM's kMaxStackAlloca: a larger "global" buffer goes to the workspace pool
MIN_CHAINS = 8  # independent accumulators that hide the FMA latency
# Relative time per stored weight value by block height (batch 64, 1 thread, Zen 4, measured on
# three convs of a split-FMNIST AlexNet): an input vector feeds bh FMAs, so short blocks pay more
# loads per FMA. ROW_COST: a block row's fixed work (zeroing, epilogue), in the same unit.
BLOCK_COST = {16: 1.0, 8: 1.0, 4: 1.05, 2: 1.2, 1: 1.7}
ROW_COST = 1.2


def conv_tile(wo: int, bh: int, pool: int = 1) -> int:
    """Adjacent output columns per tile; times the pool width, the accumulators' vector length.

    The bh x V accumulators must stay under TVM's stack-alloca limit, else they live in a
    workspace buffer in memory (2.7x slower on a 32->64 conv at 16x16, measured): 16x1 blocks
    take at most 15 lanes."""
    top = max(1, min(MAX_LANES, (STACK_BYTES - 1) // (4 * bh)) // pool)
    if wo <= top:
        return wo
    # fewest computed columns (tiles * V), then the longest vector
    return min(range(max(1, min(8 // pool, top)), top + 1), key=lambda v: (-(-wo // v) * v, -v))


def conv_rows(geo: BSRConvGeometry, bh: int) -> int:
    """Pooled output rows per tile for blocks of height ``bh``: 1 for tall blocks (bh >= 8 is
    already bh independent FMA chains), else the most rows whose ``rows * pool_h`` x bh x V
    accumulators stay under the stack-alloca limit (:func:`conv_tile`)."""
    if bh >= MIN_CHAINS:
        return 1
    pkh, pkw = geo.pool
    v = conv_tile(geo.out_w, bh, pkw) * pkw
    fit = (STACK_BYTES - 1) // (4 * pkh * bh * v)
    return max(1, min(geo.out_h, fit))


def choose_conv_blocking(weight: np.ndarray, geo: BSRConvGeometry) -> tuple[int, int]:
    """(bh, rows): the block height the conv kernel packs the (O, C*kh*kw) ``weight`` with
    (blocks of width 1; any height packs the same nonzeros exactly) and :func:`conv_rows`.

    The layer's pruning block (16x1) keeps every zero inside a kept block: a 2:4 or unstructured
    weight at 10% density keeps ~40% of its 16x1 blocks, and the kernel multiplies all of them.
    Shorter blocks store fewer zeros but reuse each input vector fewer times; the estimate is
    stored values x :data:`BLOCK_COST` (measured per-value cost, x 8 / chains when fewer than 8
    FMA chains are independent) + :data:`ROW_COST` per block row (its loop and epilogue). On a
    2:4-pruned 64->128 3x3 conv (10.8% dense after shrink) 1x1 blocks ran 2.2x faster than 16x1
    at batch 64; a weight whose 16x1 blocks are full keeps 16x1."""
    o = weight.shape[0]
    best: tuple[float, int, int] | None = None
    for bh in sorted(BLOCK_COST, reverse=True):
        if o % bh:
            continue
        rows = conv_rows(geo, bh)
        chains = rows * geo.pool[0] * bh
        stored = int((weight.reshape(o // bh, bh, -1) != 0).any(axis=1).sum()) * bh
        cost = stored * BLOCK_COST[bh] * max(1.0, MIN_CHAINS / chains) + ROW_COST * (o // bh)
        if best is None or cost < best[0]:
            best = (cost, bh, rows)
    assert best is not None  # height 1 divides every O
    return best[1], best[2]


class BSRConvGeometry:
    """Shapes of one conv: input (N, C, H, W), kernel, stride, padding, dilation, an optional
    non-overlapping max-pool after it (window = stride = ``pool``, no padding, floor), and the
    padded, phase-split per-image buffer ``(C, Hp, sw, Wq)`` the kernel reads."""

    def __init__(self, shape: tuple[int, int, int, int], kernel: tuple[int, int],
                 stride: tuple[int, int], padding: tuple[int, int],
                 dilation: tuple[int, int], pool: tuple[int, int] = (1, 1)) -> None:
        self.n, self.c, self.h, self.w = shape
        self.kh, self.kw = kernel
        (self.sh, self.sw), (self.ph, self.pw), (self.dh, self.dw) = stride, padding, dilation
        self.pool = pool
        self.ho = (self.h + 2 * self.ph - self.dh * (self.kh - 1) - 1) // self.sh + 1
        self.wo = (self.w + 2 * self.pw - self.dw * (self.kw - 1) - 1) // self.sw + 1
        self.out_h, self.out_w = self.ho // pool[0], self.wo // pool[1]
        if self.out_h < 1 or self.out_w < 1:
            raise ValueError(f"conv output would be empty ({self.out_h}x{self.out_w}).")
        self.hp = self.h + 2 * self.ph
        self.wq = -(-(self.w + 2 * self.pw) // self.sw)  # columns per phase
        self.row = self.sw * self.wq  # floats per padded input row

    @property
    def padded_size(self) -> int:
        return self.c * self.hp * self.row


def conv_offsets(w: BSRWeight, geo: BSRConvGeometry) -> np.ndarray:
    """(nnz, bw) int32: for each stored block and column kk, the offset in ``xp`` of the input
    value that weight column k = indices*bw + kk = (c, i, j) multiplies at conv output (0, 0)."""
    bw = w.block[1]
    if w.nnz_blocks == 0:  # the kernel's buffers are never empty
        return np.zeros((1, bw), np.int32)
    k = w.indices.astype(np.int64)[:, None] * bw + np.arange(bw)[None, :]
    c, rem = np.divmod(k, geo.kh * geo.kw)
    i, j = np.divmod(rem, geo.kw)
    col = j * geo.dw
    off = (c * geo.hp + i * geo.dh) * geo.row + (col % geo.sw) * geo.wq + col // geo.sw
    return np.ascontiguousarray(off, dtype=np.int32)


def conv_arrays(w: BSRWeight, geo: BSRConvGeometry) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The kernel's (data, offsets, indptr) constants; an all-zero weight gets one zero block
    (its indptr stays all 0) because the kernel's buffers are never empty."""
    data = w.data if w.nnz_blocks else np.zeros((1, *w.data.shape[1:]), w.data.dtype)
    return data, conv_offsets(w, geo), w.indptr


def bsr_conv2d_kernel(geo: BSRConvGeometry, w: BSRWeight, relu: bool, rows: int = 1):
    """A TIR PrimFunc ``(x, data, offsets, indptr, scale, bias, y)``:
    y = maxpool(act(conv2d(x, W) * s + b)) in NCHW (no pool when ``geo.pool`` is (1, 1)), with
    ``W`` packed by ``pack_bsr(.., group=1)`` from the (O, C*kh*kw) view and ``offsets`` from
    :func:`conv_offsets` (:func:`conv_arrays` gives all three constants). The pool is taken
    before the scale, bias and ReLU, which is exact for scales >= 0 (1 for fp32 weights; int8
    row scales max|row| / 127).

    ``rows`` > 1 (:func:`conv_rows`; short blocks): each tile computes that many adjacent pooled
    output rows at once, so the accumulators are ``rows * pool_h`` x bh independent FMA chains
    sharing each weight broadcast (one chain of bh = 1 would wait on the FMA latency); the last
    group of rows is shifted up to end at the output's last row (it recomputes a few rows; same
    values)."""
    T = load().T  # noqa: N806 - TVMScript convention
    ro = max(1, min(rows, geo.out_h))  # pooled output rows per tile
    m, k = w.shape
    bh, bw = w.block
    if w.group != 1:
        raise ValueError(f"the conv kernel takes BSR group 1, but got {w.group}.")
    if k != geo.c * geo.kh * geo.kw:
        raise ValueError(f"weight has {k} columns, but the conv has C*kh*kw = "
                         f"{geo.c * geo.kh * geo.kw}.")
    rows, nnz = m // bh, max(w.nnz_blocks, 1)  # from here on, rows counts block rows
    n, c, h, wd = geo.n, geo.c, geo.h, geo.w
    ph, pw, sh, sw, wq, row, hp = geo.ph, geo.pw, geo.sh, geo.sw, geo.wq, geo.row, geo.hp
    (pkh, pkw), oh_, ow_ = geo.pool, geo.out_h, geo.out_w
    vp = conv_tile(ow_, bh, pkw)  # output columns per tile
    v = vp * pkw  # conv columns per tile: the accumulators' lanes
    wtiles = -(-ow_ // vp)
    if ro > 1 and 4 * ro * pkh * bh * v >= STACK_BYTES:
        raise ValueError(f"{ro} rows of {pkh} x {bh} x {v} accumulators exceed the stack-alloca "
                         f"limit ({STACK_BYTES} bytes); see conv_rows().")
    lo = -3.4e38 if not relu else 0.0  # max(v, lo) is the activation; -FLT_MAX means identity
    chunks = -(-geo.padded_size // MAX_LANES)  # xp is zeroed in whole vectors

    def first(p):  # noqa: ANN001, ANN202 - first q of phase p inside the input (q*S+p >= pw)
        return (pw - p + sw - 1) // sw

    def last(p):  # noqa: ANN001, ANN202 - one past the last q of phase p inside the input
        return (wd + pw - p + sw - 1) // sw

    def ow0(t):  # noqa: ANN001, ANN202 - first output column of tile t (last one shifted left)
        return T.min(t * vp, ow_ - vp)

    def pooled(res, i, lane):  # noqa: ANN001, ANN202 - max over the pool window's columns
        out = res[i, lane * pkw]
        for e in range(1, pkw):
            out = T.max(out, res[i, lane * pkw + e])
        return out

    @T.macro
    def copy_padded(xp, x, b):  # noqa: ANN001, ANN202 - image b of x, zero-padded, into xp
        for e in range(chunks):
            for lane in T.vectorized(MAX_LANES):
                xp[e * MAX_LANES + lane] = T.float32(0)
        if sw == 1:  # rows stay contiguous: one vector copy per input row
            for ci, hi in T.grid(c, h):
                for wi in T.vectorized(wd):
                    xp[(ci * hp + hi + ph) * row + pw + wi] = x[b, ci, hi, wi]
        else:  # phase p holds padded columns p, p + sw, ...: a strided read per phase
            for ci, hi, p in T.grid(c, h, sw):
                for q in range(first(p), last(p)):
                    xp[(ci * hp + hi + ph) * row + p * wq + q] = x[b, ci, hi, q * sw + p - pw]

    @T.prim_func(private=True)
    def bsr_conv2d(
        x: T.Buffer((n, c, h, wd), "float32"),
        data: T.Buffer((nnz, bw, bh), str(w.data.dtype)),
        offsets: T.Buffer((nnz, bw), "int32"),
        indptr: T.Buffer((rows + 1,), "int32"),
        scale: T.Buffer((m,), "float32"),
        bias: T.Buffer((m,), "float32"),
        y: T.Buffer((n, m, oh_, ow_), "float32"),
    ):
        T.func_attr({"tir.noalias": True, "tir.is_scheduled": True, "op_pattern": OPAQUE})
        for b in T.parallel(n):
            xp = T.alloc_buffer((chunks * MAX_LANES,), "float32", scope="global")
            copy_padded(xp, x, b)
            for oh, t, r in T.grid(oh_, wtiles, rows):
                # "global" scope: stack allocas that LLVM keeps in registers (see bsr.py)
                acc = T.alloc_buffer((bh, v), "float32", scope="global")
                res = T.alloc_buffer((bh, v), "float32", scope="global")
                for d in range(pkh):  # the conv rows of one pooled row: max in registers
                    for i in T.unroll(bh):
                        for lane in T.vectorized(v):
                            acc[i, lane] = T.float32(0)
                    for jo in range(indptr[r], indptr[r + 1]):
                        for kk in T.unroll(bw):
                            for i in T.unroll(bh):
                                for lane in T.vectorized(v):
                                    acc[i, lane] = acc[i, lane] + xp[
                                        (oh * pkh + d) * sh * row + ow0(t) * pkw
                                        + offsets[jo, kk] + lane
                                    ] * T.Cast("float32", data[jo, kk, i])
                    for i in T.unroll(bh):
                        for lane in T.vectorized(v):
                            res[i, lane] = T.if_then_else(
                                d == 0, acc[i, lane], T.max(res[i, lane], acc[i, lane]))
                # the pool window's columns are lanes next to each other; scale, bias and ReLU
                # after the max: x * s + b is non-decreasing in x for s >= 0, so they commute
                for i in T.unroll(bh):
                    for lane in T.vectorized(vp):
                        y[b, r * bh + i, oh, ow0(t) + lane] = T.max(
                            pooled(res, i, lane) * scale[r * bh + i] + bias[r * bh + i],
                            T.float32(lo))

    if ro == 1:
        return bsr_conv2d
    qn = ro * pkh  # conv rows per tile, each its own accumulators
    groups = -(-oh_ // ro)

    def oh0(g):  # noqa: ANN001, ANN202 - first pooled row of group g (last one shifted up)
        return T.min(g * ro, oh_ - ro)

    def pooled_rows(acc, pr, i, lane):  # noqa: ANN001, ANN202 - max over the pool window
        out = acc[pr * pkh, i, lane * pkw]
        for d in range(pkh):
            for e in range(pkw):
                if d or e:
                    out = T.max(out, acc[pr * pkh + d, i, lane * pkw + e])
        return out

    @T.prim_func(private=True)
    def bsr_conv2d_rows(
        x: T.Buffer((n, c, h, wd), "float32"),
        data: T.Buffer((nnz, bw, bh), str(w.data.dtype)),
        offsets: T.Buffer((nnz, bw), "int32"),
        indptr: T.Buffer((rows + 1,), "int32"),
        scale: T.Buffer((m,), "float32"),
        bias: T.Buffer((m,), "float32"),
        y: T.Buffer((n, m, oh_, ow_), "float32"),
    ):
        T.func_attr({"tir.noalias": True, "tir.is_scheduled": True, "op_pattern": OPAQUE})
        for b in T.parallel(n):
            xp = T.alloc_buffer((chunks * MAX_LANES,), "float32", scope="global")
            copy_padded(xp, x, b)
            for g, t, r in T.grid(groups, wtiles, rows):
                acc = T.alloc_buffer((qn, bh, v), "float32", scope="global")
                for q in T.unroll(qn):
                    for i in T.unroll(bh):
                        for lane in T.vectorized(v):
                            acc[q, i, lane] = T.float32(0)
                for jo in range(indptr[r], indptr[r + 1]):
                    for kk in T.unroll(bw):
                        for q in T.unroll(qn):
                            for i in T.unroll(bh):
                                for lane in T.vectorized(v):
                                    acc[q, i, lane] = acc[q, i, lane] + xp[
                                        (oh0(g) * pkh + q) * sh * row + ow0(t) * pkw
                                        + offsets[jo, kk] + lane
                                    ] * T.Cast("float32", data[jo, kk, i])
                for pr in T.unroll(ro):
                    for i in T.unroll(bh):
                        for lane in T.vectorized(vp):
                            y[b, r * bh + i, oh0(g) + pr, ow0(t) + lane] = T.max(
                                pooled_rows(acc, pr, i, lane) * scale[r * bh + i]
                                + bias[r * bh + i], T.float32(lo))

    return bsr_conv2d_rows
