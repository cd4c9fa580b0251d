"""A persistent MetaSchedule tuning database, shared by every compile of every task.

MetaSchedule keys records by the *workload* (the structural hash of a fused TIR function), so one
database per (TVM version, target code-generation settings) is reused across trials and tasks:
a layer shape tuned once is never tuned again, and building an already-tuned model only applies
the records (well under 2 s). Folder: ``<cache_dir>/tvm-<version>/<arch>-<target key>/``.

Small-batch dense workloads also get the fixed GEMV schedule of :mod:`compilers.tvm.dense_schedule`
as a measured candidate, so the database's best record (MetaSchedule's or that one) is what a
build applies; :meth:`TuningDatabase.schedule_sources` says which won for each workload.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..errors import BuildFailed
from ..targets import Target
from ._api import load
from .dense_schedule import GEMV_MARK, gemv_schedule, is_gemv_record

__all__ = ["GEMV_MARK", "TuningDatabase", "gemv_schedule"]

logger = logging.getLogger(__name__)



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
    py_builder: Any = ms.builder.PyBuilder  # a base class only known at run time (TVM is lazy)

    @api.derived_object
    class InProcessBuilder(py_builder):
        def build(self, build_inputs):  # noqa: ANN001, ANN202
            results = []
            for item in build_inputs:
                try:
                    with warnings.catch_warnings():
                        # TVM 0.27's default_build calls its own deprecated tvm.build
                        warnings.filterwarnings("ignore", message="build is deprecated",
                                                category=DeprecationWarning)
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


DB_FILES = ("database_workload.json", "database_tuning_record.json")
# folder -> [open lock file, handles open in this process]: the lock is taken once per process
# (flock would make a second handle in the same process wait for the first forever)
_HELD: dict[Path, list[Any]] = {}
_HELD_GUARD = threading.Lock()


def _acquire(folder: Path) -> None:
    with _HELD_GUARD:
        held = _HELD.get(folder)
        if held is None:
            f = open(folder / ".lock", "a+b")  # noqa: SIM115 - closed in _release
            fcntl.flock(f, fcntl.LOCK_EX)
            _HELD[folder] = held = [f, 0]
        held[1] += 1


def _release(folder: Path) -> None:
    with _HELD_GUARD:
        held = _HELD[folder]
        held[1] -= 1
        if held[1] == 0:
            fcntl.flock(held[0], fcntl.LOCK_UN)
            held[0].close()
            del _HELD[folder]


class TuningDatabase:
    def __init__(self, cache_dir: str | Path, target: Target) -> None:
        api = load()
        self.folder = Path(cache_dir) / f"tvm-{api.version}" / f"{target.arch}-{target.key()}"
        self.folder.mkdir(parents=True, exist_ok=True)
        # One process at a time: TVM's JSON database numbers workloads by their line, so two
        # processes appending to one file at once point records at the wrong workloads (seen:
        # two benchmark processes sharing the default cache made it unreadable).
        self._closed = False
        _acquire(self.folder.resolve())
        try:
            self._db = self._open(api)
        except Exception as exc:  # noqa: BLE001 - TVM raises its own error types from C++
            # A record that no longer replays on its workload (kernels changed under the same
            # structural hash, or two processes appended at once) makes TVM refuse the whole
            # file. Tuning is a cache: keep the old files aside and start an empty database.
            stamp = time.strftime("%Y%m%d-%H%M%S")
            for name in DB_FILES:
                path = self.folder / name
                if path.exists():
                    path.rename(path.with_name(f"{name}.unreadable-{stamp}"))
            logger.warning("tuning database %s could not be read (%s); moved it aside (*.%s) "
                           "and started an empty one", self.folder,
                           (str(exc).strip().splitlines() or [type(exc).__name__])[-1],
                           f"unreadable-{stamp}")
            self._db = self._open(api)

    def close(self) -> None:
        """Release the database to other processes (a closed database is not used again)."""
        if not self._closed:
            self._closed = True
            _release(self.folder.resolve())

    def _open(self, api):  # noqa: ANN001, ANN202
        return api.ms.database.JSONDatabase(
            path_workload=str(self.folder / DB_FILES[0]),
            path_tuning_record=str(self.folder / DB_FILES[1]),
            allow_missing=True,
        )

    @property
    def database(self):  # noqa: ANN201 - a tvm Database
        return self._db

    def digest(self) -> str:
        """sha256 (16 hex) of the database files: which tuning a build was made with."""
        h = hashlib.sha256()
        for name in DB_FILES:
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
            records = [r for r in self._records(task.dispatched[0]) if not is_gemv_record(r)]
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
                      and not any(is_gemv_record(r) for r in self._records(t.dispatched[0]))]
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
                "default" if not best else "gemv" if is_gemv_record(best[0]) else "metaschedule"
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
