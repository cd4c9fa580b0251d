"""The fixed GEMV schedule: one more tuning candidate for small-batch dense layers.

Dense layers at small batch are matrix-vector products that MetaSchedule's small budgets schedule
badly here (strided weight reads, reduction not vectorized). :func:`gemv_schedule` streams the
``[K, N]`` weight row by row with the ``N`` axis vectorized (what DLight's CPU GEMV rule would do,
but that rule only handles ``[N, K]`` weights and so applies to none of the imported linear
layers). ``TuningDatabase`` measures it like any candidate and stores it as an ordinary record.
"""

from __future__ import annotations

from ._api import load

__all__ = ["GEMV_MARK", "gemv_schedule", "is_gemv_record"]

# Block annotation that marks (in the IR and in the record's trace) the fixed GEMV schedule.
GEMV_MARK = "taskpack.dense_schedule"
# The fixed schedule keeps the (batch x N) accumulator in L1/L2: larger products are left to
# MetaSchedule (a GEMM needs tiling over N and the batch as well).
_GEMV_MAX_ACC_BYTES = 64 * 1024


def _index_var(api, rng):  # noqa: ANN001, ANN202
    """The variable a buffer-region dimension indexes exactly (``[v, v+1)``), else None."""
    try:
        if int(rng.extent) != 1:
            return None
    except (TypeError, ValueError):
        return None
    return rng.min if isinstance(rng.min, api.tvm.tirx.Var) else None


def _vector_lanes(api, tvm_target) -> int:  # noqa: ANN001
    try:
        bits = int(api.tvm.target.codegen.llvm_get_vector_width(tvm_target))
    except Exception:  # noqa: BLE001 - no LLVM query for this target: assume 128-bit SIMD
        bits = 128
    return max(4, bits // 32)


def gemv_schedule(func, tvm_target):  # noqa: ANN001, ANN201 - PrimFunc, Target -> Schedule | None
    """A fixed schedule for ``y[b.., n] = sum_k x[b.., k] * w[k, n]`` (+ injective epilogue).

    Returns None unless ``func`` is exactly that (one reduction block, the first, over a
    ``[K, N]`` weight) with a small ``batch x N`` accumulator on an LLVM CPU target. Loop order
    ``[n_par] k_o n_o b k_i(unrolled) n_i(vectorized)``: the weight is read row by row
    (contiguously), the accumulator row stays in L1, and ``n`` is split across the target's cores.
    """
    api = load()
    tirx, s_tir = api.tvm.tirx, api.tvm.s_tir
    if not isinstance(func, tirx.PrimFunc) or tvm_target.kind.name != "llvm":
        return None
    try:
        sch = s_tir.Schedule(func)
        root = sch.get_sblock("root")
        blocks = sch.get_child_blocks(root)
    except Exception:  # noqa: BLE001 - not a single-root block function: not ours
        return None
    reduce_kind = tirx.IterVar.CommReduce
    reductions = [b for b in blocks
                  if any(iv.iter_type == reduce_kind for iv in sch.get(b).iter_vars)]
    if len(reductions) != 1 or not sch.get(blocks[0]).same_as(sch.get(reductions[0])):
        return None
    mm = reductions[0]
    stmt = sch.get(mm)
    ivs = list(stmt.iter_vars)
    if len(ivs) < 2 or ivs[-1].iter_type != reduce_kind or any(
        iv.iter_type != tirx.IterVar.DataPar for iv in ivs[:-1]
    ):
        return None
    k, n = ivs[-1].var, ivs[-2].var
    if len(stmt.writes) != 1 or len(stmt.reads) != 2:
        return None
    out = _index_var(api, stmt.writes[0].region[-1])
    if out is None or not out.same_as(n):
        return None
    weight = vector = False
    for read in stmt.reads:
        idx = [_index_var(api, r) for r in read.region]
        if any(v is None for v in idx):
            return None
        if len(idx) == 2 and idx[0].same_as(k) and idx[1].same_as(n):
            weight = True
        elif idx[-1].same_as(k) and not any(v.same_as(n) for v in idx):
            vector = True
    loops = sch.get_loops(mm)
    if not (weight and vector) or len(loops) != len(ivs):
        return None
    try:
        extents = [int(iv.dom.extent) for iv in ivs]
    except (TypeError, ValueError):
        return None  # symbolic shapes
    big_n, big_k = extents[-2], extents[-1]
    batch = 1
    for e in extents[:-2]:
        batch *= e
    lanes = _vector_lanes(api, tvm_target)
    vec = big_n if big_n <= lanes else next((v for v in (lanes, 8, 4) if big_n % v == 0), None)
    if vec is None or batch * big_n * 4 > _GEMV_MAX_ACC_BYTES:
        return None
    kb = next(v for v in (4, 2, 1) if big_k % v == 0)
    cores = int(tvm_target.attrs["num-cores"]) if "num-cores" in tvm_target.attrs else 1

    *batch_loops, n_loop, k_loop = loops
    n_o, n_i = sch.split(n_loop, [None, vec])
    k_o, k_i = sch.split(k_loop, [None, kb])
    n_par = None
    if cores > 1 and (big_n // vec) % cores == 0:
        n_par, n_o = sch.split(n_o, [cores, None])
    sch.reorder(*([n_par] if n_par is not None else []), k_o, n_o, *batch_loops, k_i, n_i)
    if kb > 1:
        sch.unroll(k_i)
    sch.vectorize(n_i)
    if n_par is not None:
        sch.parallel(n_par)
    sch.annotate(mm, GEMV_MARK, "gemv")
    name = stmt.name_hint
    sch.decompose_reduction(mm, k_o)
    epilogue = [b for b in sch.get_child_blocks(root)
                if sch.get(b).name_hint not in (f"{name}_init", f"{name}_update")]
    for block in epilogue[:-1]:  # bias add, relu, ...: one elementwise loop nest
        try:
            sch.compute_inline(block)
        except Exception:  # noqa: BLE001 - a block that cannot be inlined stays a loop nest
            continue
    for block in sch.get_child_blocks(root):
        if sch.get(block).name_hint in (f"{name}_init", f"{name}_update"):
            continue
        nest = sch.get_loops(block)
        fused = sch.fuse(*nest) if len(nest) > 1 else nest[0]
        total = int(sch.get(fused).extent)
        if total % vec == 0 and total > vec:
            sch.vectorize(sch.split(fused, [None, vec])[1])
        elif total <= lanes:
            sch.vectorize(fused)
    return sch


def is_gemv_record(record) -> bool:  # noqa: ANN001
    return GEMV_MARK in str(record.trace)
