"""A persistent MetaSchedule tuning database, shared by every compile of every task.

MetaSchedule keys records by the *workload* (the structural hash of a fused TIR function), so one
database per (TVM version, target code-generation settings) is reused across trials and tasks:
a layer shape tuned once is never tuned again, and building an already-tuned model only applies
the records (well under 2 s). Folder: ``<cache_dir>/tvm-<version>/<arch>-<target key>/``.

Dense layers at small batch are matrix-vector products that MetaSchedule's small budgets schedule
badly here (strided weight reads, reduction not vectorized: 7.5 ms for an MLP 784-2000-2000-10 at
batch 1, where PyTorch takes ~1.4 ms). For those workloads :func:`gemv_schedule` adds one more
candidate to the database: a fixed schedule that streams the ``[K, N]`` weight row by row with the
``N`` axis vectorized (what DLight's CPU GEMV rule would do, but that rule only handles ``[N, K]``
weights and so applies to none of the imported linear layers). It is measured by the same runner
as MetaSchedule's candidates and stored as an ordinary tuning record, so the database's best record
(MetaSchedule's or this one) is what a build applies. :meth:`TuningDatabase.schedule_sources` says
which won for each workload.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import tempfile
from collections.abc import Iterator
from pathlib import Path

from ._tvm import load
from .errors import BuildFailed
from .targets import Target

__all__ = ["GEMV_MARK", "TuningDatabase", "gemv_schedule"]

logger = logging.getLogger(__name__)

# Block annotation that marks (in the IR and in the record's trace) the fixed GEMV schedule.
GEMV_MARK = "taskpack.dense_schedule"
# The fixed schedule keeps the (batch x N) accumulator in L1/L2: larger products are left to
# MetaSchedule (a GEMM needs tiling over N and the batch as well).
_GEMV_MAX_ACC_BYTES = 64 * 1024


def _cost_model() -> str:
    """MetaSchedule's XGBoost cost model when xgboost is installed, else random search."""
    try:
        import xgboost  # noqa: F401
    except ImportError:
        return "random"
    return "xgb"


@contextlib.contextmanager
def _named_handlers() -> Iterator[None]:
    """Detach unnamed handlers from MetaSchedule's logger while it (re)configures logging.

    MetaSchedule's logging setup references every handler of its logger by name in a dictConfig;
    a handler someone else attached without a name (pytest's log capture does) makes it fail
    with "'NoneType' object has no attribute 'format'". They are put back afterwards.
    """
    lg = logging.getLogger("tvm.s_tir.meta_schedule")
    unnamed = [h for h in lg.handlers if h.get_name() is None]
    for h in unnamed:
        lg.removeHandler(h)
    try:
        yield
    finally:
        for h in unnamed:
            lg.addHandler(h)


def _is_scheduled(func) -> bool:  # noqa: ANN001
    attrs = getattr(func, "attrs", None)
    return bool(attrs is not None and "tir.is_scheduled" in attrs and attrs["tir.is_scheduled"])


def _in_process_builder(api):  # noqa: ANN001, ANN202
    """A MetaSchedule builder that compiles candidates in this process.

    The stock LocalBuilder ships each candidate to a popen worker; on apache-tvm 0.27.0.post1
    every such build takes ~30 s here (measured; the same build in-process takes 0.05 s), which
    makes small tuning budgets useless. Building in-process loses crash isolation only.
    """
    ms, local_builder = api.ms, api.local_builder

    @api.derived_object
    class InProcessBuilder(ms.builder.PyBuilder):
        def build(self, build_inputs):  # noqa: ANN001, ANN202
            results = []
            for item in build_inputs:
                try:
                    lib = local_builder.default_build(item.mod, item.target, item.params)
                    results.append(ms.builder.BuilderResult(local_builder.default_export(lib),
                                                            None))
                except Exception as exc:  # noqa: BLE001 - reported to MetaSchedule as a failure
                    results.append(ms.builder.BuilderResult(None, f"{type(exc).__name__}: {exc}"))
            return results

    return InProcessBuilder()


def _strategy(ms, trials: int):  # noqa: ANN001, ANN202
    """Replay-trace for small budgets (no cost model to warm up); evolutionary otherwise."""
    if trials < 32:
        return "replay-trace"
    return ms.search_strategy.EvolutionarySearch(population_size=256, init_measured_ratio=0.2)


def _space(ms):  # noqa: ANN001, ANN202
    """Post-order-apply with TVM's default LLVM rules, minus two mutators.

    In apache-tvm 0.27.0.post1 constructing ``MutateParallel`` or ``MutateComputeLocation``
    inside a TuneContext segfaults (tvm::ffi::ToJSONGraph), so evolutionary search mutates tile
    sizes and unroll factors only; parallel/compute-location choices still vary between the
    sampled design spaces. Probabilities keep TVM's default tile:unroll ratio (0.9:0.03).
    """
    mutators = {ms.mutator.MutateTileSize(): 0.9, ms.mutator.MutateUnroll(): 0.1}
    return ms.space_generator.PostOrderApply(
        sch_rules="from-target", postprocs="from-target", mutator_probs=mutators
    )


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


def _is_gemv_record(record) -> bool:  # noqa: ANN001
    return GEMV_MARK in str(record.trace)


class TuningDatabase:
    def __init__(self, cache_dir: str | Path, target: Target) -> None:
        api = load()
        self.folder = Path(cache_dir) / f"tvm-{api.version}" / f"{target.arch}-{target.key()}"
        self.folder.mkdir(parents=True, exist_ok=True)
        self._db = api.ms.database.JSONDatabase(
            path_workload=str(self.folder / "database_workload.json"),
            path_tuning_record=str(self.folder / "database_tuning_record.json"),
            allow_missing=True,
        )

    @property
    def database(self):  # noqa: ANN201 - a tvm Database
        return self._db

    def digest(self) -> str:
        """sha256 (16 hex) of the database files: which tuning a build was made with."""
        h = hashlib.sha256()
        for name in ("database_workload.json", "database_tuning_record.json"):
            path = self.folder / name
            if path.exists():
                h.update(path.read_bytes())
        return h.hexdigest()[:16]

    @staticmethod
    def legalize(mod, tvm_target):  # noqa: ANN001, ANN205
        """Lower Relax ops to fused TIR: the form whose workloads MetaSchedule extracts."""
        relax = load().relax
        seq = load().tvm.transform.Sequential(
            [
                relax.transform.DecomposeOpsForInference(),
                relax.transform.CanonicalizeBindings(),
                relax.pipeline.zero_pipeline(),
            ]
        )
        with tvm_target:
            return seq(mod)

    def _tasks(self, mod, tvm_target) -> list:  # noqa: ANN001
        """MetaSchedule's extracted workloads of ``mod``, less hand-scheduled kernels."""
        tasks = load().ms.relax_integration.extract_tasks(mod, tvm_target)
        return [task for task in tasks
                if not any(_is_scheduled(f) for f in task.dispatched[0].functions.values())]

    def _records(self, workload_mod) -> list:  # noqa: ANN001
        if not self._db.has_workload(workload_mod):
            return []
        return list(self._db.get_top_k(self._db.commit_workload(workload_mod), 1 << 30))

    def _untuned_tasks(self, tasks: list, trials: int) -> list:
        """Tasks without a MetaSchedule record (the fixed GEMV record does not count)."""
        missing = []
        for task in tasks:
            records = [r for r in self._records(task.dispatched[0]) if not _is_gemv_record(r)]
            if len(records) < min(trials, 1):
                missing.append(task)
        return missing

    def tune(self, mod, tvm_target, trials_per_task: int, *, seed: int = 0) -> int:  # noqa: ANN001
        """Tune every workload of ``mod`` not yet in the database; returns how many were tuned.

        MetaSchedule searches each new workload; then every matrix-vector workload also gets the
        fixed :func:`gemv_schedule` candidate, measured by the same runner, so the database holds
        the faster of the two.
        """
        api = load()
        ms = api.ms
        all_tasks = self._tasks(mod, tvm_target)
        tasks = self._untuned_tasks(all_tasks, trials_per_task)
        gemv_tasks = [t for t in all_tasks
                      if gemv_schedule(t.dispatched[0]["main"], tvm_target) is not None
                      and not any(_is_gemv_record(r) for r in self._records(t.dispatched[0]))]
        if not tasks and not gemv_tasks:
            return 0
        # MetaSchedule sets its console handler to its logger's level and then resets the logger
        # to DEBUG: without this, every tuning call prints its scheduler tables to stdout.
        logging.getLogger("tvm.s_tir.meta_schedule").setLevel(
            logging.INFO if logger.isEnabledFor(logging.DEBUG) else logging.ERROR)
        builder = _in_process_builder(api)
        runner = ms.runner.LocalRunner(timeout_sec=30)
        if tasks:
            logger.info("tuning %d workloads x %d trials", len(tasks), trials_per_task)
            self._tune_tasks(tasks, tvm_target, trials_per_task, seed, builder, runner)
        added = self._add_gemv_candidates(gemv_tasks, tvm_target, builder, runner)
        return len({t.task_name for t in tasks} | set(added))

    def _tune_tasks(self, tasks, tvm_target, trials, seed, builder, runner) -> None:  # noqa: ANN001
        ms = load().ms
        with tempfile.TemporaryDirectory(prefix="taskpack-ms-") as work_dir, _named_handlers():
            contexts, weights = ms.relax_integration.extracted_tasks_to_tune_contexts(
                extracted_tasks=tasks, work_dir=work_dir, seed=seed, space=_space(ms),
                strategy=_strategy(ms, trials),
            )
            try:
                ms.tune.tune_tasks(
                    tasks=contexts,
                    task_weights=weights,
                    work_dir=work_dir,
                    max_trials_global=trials * len(tasks),
                    max_trials_per_task=trials,
                    num_trials_per_iter=min(64, trials),
                    database=self._db,
                    builder=builder,
                    runner=runner,
                    cost_model=_cost_model(),
                )
            except Exception as exc:  # tvm raises its own error types
                raise BuildFailed(f"MetaSchedule tuning failed for {tvm_target}: {exc}") from exc

    def _add_gemv_candidates(self, tasks, tvm_target, builder, runner) -> list[str]:  # noqa: ANN001
        """Measure :func:`gemv_schedule` on each matching workload and commit it as a record."""
        ms = load().ms
        scheduled = []
        for task in tasks:
            workload_mod = task.dispatched[0]
            sch = gemv_schedule(workload_mod["main"], tvm_target)
            if sch is not None:
                scheduled.append((task, workload_mod, sch))
        if not scheduled:
            return []
        built = builder.build([ms.builder.BuilderInput(sch.mod, tvm_target)
                               for _, _, sch in scheduled])
        inputs, kept = [], []
        for (task, workload_mod, sch), result in zip(scheduled, built, strict=True):
            if result.error_msg:
                logger.warning("GEMV schedule for %s did not build: %s", task.task_name,
                               result.error_msg)
                continue
            args_info = ms.arg_info.ArgInfo.from_prim_func(sch.mod["main"])
            inputs.append(ms.runner.RunnerInput(result.artifact_path, "cpu", args_info))
            kept.append((task, workload_mod, sch, args_info))
        added = []
        for (task, workload_mod, sch, args_info), future in zip(
            kept, runner.run(inputs), strict=True
        ):
            result = future.result()
            if result.error_msg or not result.run_secs:
                logger.warning("GEMV schedule for %s did not run: %s", task.task_name,
                               result.error_msg)
                continue
            self._db.commit_tuning_record(ms.database.TuningRecord(
                sch.trace, self._db.commit_workload(workload_mod),
                [float(s) for s in result.run_secs], tvm_target, args_info,
            ))
            added.append(task.task_name)
        return added

    def schedule_sources(self, mod, tvm_target) -> dict[str, str]:  # noqa: ANN001
        """Per workload of (legalized) ``mod``: which schedule a build applies.

        ``"gemv"`` (the fixed schedule won), ``"metaschedule"`` (a searched record won), or
        ``"default"`` (no record: the workload builds with TVM's default lowering).
        """
        sources = {}
        for task in self._tasks(mod, tvm_target):
            workload_mod = task.dispatched[0]
            best = (self._db.get_top_k(self._db.commit_workload(workload_mod), 1)
                    if self._db.has_workload(workload_mod) else [])
            sources[task.task_name] = (
                "default" if not best else "gemv" if _is_gemv_record(best[0]) else "metaschedule"
            )
        return sources

    def apply(self, mod, tvm_target):  # noqa: ANN001, ANN201
        """Build ``mod`` with the database's best schedules (untuned workloads stay default).

        Records are looked up by the same extracted workloads that :meth:`tune` stored them
        under. MetaSchedule's own ``compile_relax`` re-runs fusion first, which adds attributes
        (``op_pattern``) to every function, so its lookups never match our records on TVM 0.27
        and it silently built every "tuned" model with default schedules.
        """
        api = load()
        scheduled = {}
        for task in self._tasks(mod, tvm_target):
            workload_mod = task.dispatched[0]
            if not self._db.has_workload(workload_mod):
                continue
            sch = self._db.query_schedule(workload_mod, tvm_target, workload_name="main")
            if sch is None:
                continue
            func = sch.mod["main"].with_attr("tir.is_scheduled", True)
            scheduled[mod.get_global_var(task.task_name)] = func.without_attr("global_symbol")
        if scheduled:
            mod = api.tvm.IRModule({**dict(mod.functions.items()), **scheduled}, attrs=mod.attrs,
                                   global_infos=mod.global_infos)
        return api.tvm.compile(mod, target=tvm_target)
