"""A persistent MetaSchedule tuning database, shared by every compile of every task.

MetaSchedule keys records by the *workload* (the structural hash of a fused TIR function), so one
database per (TVM version, target code-generation settings) is reused across trials and tasks:
a layer shape tuned once is never tuned again, and building an already-tuned model only applies
the records (well under 2 s). Folder: ``<cache_dir>/tvm-<version>/<arch>-<target key>/``.
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
from pathlib import Path

from ._tvm import load
from .errors import BuildFailed
from .targets import Target

__all__ = ["TuningDatabase"]

logger = logging.getLogger(__name__)


def _cost_model() -> str:
    """MetaSchedule's XGBoost cost model when xgboost is installed, else random search."""
    try:
        import xgboost  # noqa: F401
    except ImportError:
        return "random"
    return "xgb"


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

    def _untuned_tasks(self, mod, tvm_target, trials: int) -> list:  # noqa: ANN001
        api = load()
        tasks = api.ms.relax_integration.extract_tasks(mod, tvm_target)
        missing = []
        for task in tasks:
            workload_mod = task.dispatched[0]
            if any(_is_scheduled(f) for f in workload_mod.functions.values()):
                continue  # hand-written kernels (block-sparse) are already scheduled
            if self._db.has_workload(workload_mod):
                workload = self._db.commit_workload(workload_mod)
                if len(self._db.get_top_k(workload, trials)) >= min(trials, 1):
                    continue
            missing.append(task)
        return missing

    def tune(self, mod, tvm_target, trials_per_task: int, *, seed: int = 0) -> int:  # noqa: ANN001
        """Tune every workload of ``mod`` not yet in the database; returns how many were tuned."""
        api = load()
        ms = api.ms
        tasks = self._untuned_tasks(mod, tvm_target, trials_per_task)
        if not tasks:
            return 0
        logger.info("tuning %d workloads x %d trials", len(tasks), trials_per_task)
        # MetaSchedule sets its console handler to its logger's level and then resets the logger
        # to DEBUG: without this, every tuning call prints its scheduler tables to stdout.
        logging.getLogger("tvm.s_tir.meta_schedule").setLevel(
            logging.INFO if logger.isEnabledFor(logging.DEBUG) else logging.ERROR)
        with tempfile.TemporaryDirectory(prefix="taskpack-ms-") as work_dir:
            contexts, weights = ms.relax_integration.extracted_tasks_to_tune_contexts(
                extracted_tasks=tasks, work_dir=work_dir, seed=seed, space=_space(ms),
                strategy=_strategy(ms, trials_per_task),
            )
            try:
                ms.tune.tune_tasks(
                    tasks=contexts,
                    task_weights=weights,
                    work_dir=work_dir,
                    max_trials_global=trials_per_task * len(tasks),
                    max_trials_per_task=trials_per_task,
                    num_trials_per_iter=min(64, trials_per_task),
                    database=self._db,
                    builder=_in_process_builder(api),
                    runner=ms.runner.LocalRunner(timeout_sec=30),
                    cost_model=_cost_model(),
                )
            except Exception as exc:  # tvm raises its own error types
                raise BuildFailed(f"MetaSchedule tuning failed for {tvm_target}: {exc}") from exc
        return len(tasks)

    def apply(self, mod, tvm_target):  # noqa: ANN001, ANN201
        """Build ``mod`` with the database's best schedules (untuned workloads stay default)."""
        api = load()
        return api.ms.relax_integration.compile_relax(self._db, mod, tvm_target, params=None)
