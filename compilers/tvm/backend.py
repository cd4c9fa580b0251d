"""The TVM backend: torch.export -> Relax -> (MetaSchedule) -> build, per target.

The module is prepared with :func:`compilers.transforms.apply_transforms` (kernel form); the
importer (:mod:`compilers.tvm.importer`) lowers the custom ops to the hand-written TIR kernels.
Dense ops go through Relax legalization and, when a tuning budget is given, MetaSchedule; a
persistent database makes every later build of the same workloads fast. The runtime thread count
is resolved here (see :mod:`compilers.threads`) and recorded on the model.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections import OrderedDict
from pathlib import Path

import torch
from torch import nn

from .._base import DEFAULT_CACHE_DIR, CompileOptions, Compiler
from ..errors import BuildFailed, TargetUnavailable
from ..hashing import compile_key, structure_key
from ..numerics import check_numerics, fixed_inputs
from ..targets import Target, cross_compiler_path
from ..threads import all_cores, default_threads
from ..transforms import apply_transforms, changes_numerics, quantization_error
from ._api import load
from .bsr_tuning import BSRScheduleTable
from .importer import constant_bytes, hand_kernels, import_relax
from .model import TVMModel
from .runtime import set_threads
from .tuning import TuningDatabase

__all__ = ["THREADS_FILE", "TVMCompiler", "to_tvm_target"]

logger = logging.getLogger(__name__)

_CACHE_SIZE = 32
THREADS_FILE = "threads.json"


def to_tvm_target(target: Target):  # noqa: ANN201 - tvm.target.Target
    """The ``tvm.target.Target`` for a taskpack :class:`Target` (detects the host ``-mcpu``)."""
    tvm = load().tvm
    if target.arch == "cuda":
        if not tvm.cuda(0).exist:
            raise TargetUnavailable(
                f"target {target.name!r} needs a CUDA GPU, but TVM found none on this machine."
            )
        return tvm.target.Target({"kind": "cuda"}, host={"kind": "llvm"})
    if target.arch == "aarch64":
        return tvm.target.Target(
            {
                "kind": "llvm",
                "mtriple": "aarch64-linux-gnu",
                "mcpu": target.mcpu or "generic",
                "mattr": ["+neon"],
                "num-cores": target.num_cores or 4,
            }
        )
    mcpu = target.mcpu or tvm.target.codegen.llvm_get_system_cpu()
    return tvm.target.Target(
        {"kind": "llvm", "mcpu": mcpu, "num-cores": target.num_cores or os.cpu_count() or 1}
    )


class TVMCompiler(Compiler):
    name = "tvm"

    def __init__(self, *, check: bool = True, rtol: float = 1e-4) -> None:
        self.check, self.rtol = check, rtol
        self._cache: OrderedDict[str, TVMModel] = OrderedDict()

    def compile(
        self,
        module: nn.Module,
        example_input: torch.Tensor,
        target: Target,
        options: CompileOptions | None = None,
    ) -> TVMModel:
        options = options or CompileOptions()
        api = load()
        transforms, tune_trials = options.transforms, options.tune_trials
        cache_dir = options.cache_dir if options.cache_dir is not None else DEFAULT_CACHE_DIR
        threads = self.resolve_threads(module, example_input, target, options)
        key = compile_key(
            module, example_input, target, transforms, backend=self.name,
            tune_trials=tune_trials, tvm=api.version, threads=threads,
        )
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        tvm_target = to_tvm_target(target)
        cross_compiler_path(target)  # fail early when an aarch64 target has no linker
        prepared = apply_transforms(module, transforms)
        db = TuningDatabase(cache_dir, target)  # holds the database's lock until closed
        try:
            # Tuned builds that run here measure each block-sparse layer's kernel schedule once per
            # workload (recorded beside the database); others take the default schedule.
            bsr_table = (BSRScheduleTable(db.folder, tvm_target)
                         if tune_trials > 0 and target.runs_locally and target.kind == "host"
                         else None)
            if bsr_table is not None:
                set_threads(threads)
            mod = import_relax(prepared, example_input,
                               bsr_table.choose if bsr_table is not None else None)
            kernels = hand_kernels(mod)
            start = time.perf_counter()
            tuned = 0
            schedules: dict[str, str] = {}
            try:
                if tune_trials > 0:
                    mod = db.legalize(mod, tvm_target)
                    tuned = db.tune(mod, tvm_target, tune_trials)
                    executable = db.apply(mod, tvm_target)
                    schedules = db.schedule_sources(mod, tvm_target)
                else:
                    executable = api.tvm.compile(mod, target=tvm_target)
            except (BuildFailed, TargetUnavailable):
                raise
            except Exception as exc:
                raise BuildFailed(f"building for target {target.name!r} failed: {exc}") from exc
        finally:
            db.close()
        build_s = time.perf_counter() - start
        logger.info("built %s for %s in %.2fs (%d workloads tuned, %d threads)", key,
                    target.name, build_s, tuned, threads)
        compiled = TVMModel(
            backend=self.name,
            target=target,
            input_shape=tuple(example_input.shape),
            transforms=transforms,
            tuned=tune_trials > 0,
            tuning_db_hash=db.digest() if tune_trials > 0 else None,
            compiler_version=f"tvm-{api.version}",
            key=key,
            notes={"build_s": build_s, "workloads_tuned": tuned, "schedules": schedules,
                   "tvm_target": str(tvm_target), "constant_bytes": constant_bytes(mod),
                   "hand_kernels": kernels,
                   "bsr_schedules": bsr_table.chosen if bsr_table is not None else []},
            threads=threads,
            executable=executable,
        )
        if self.check and target.kind != "aarch64":
            inputs = fixed_inputs(example_input)
            # int8 changes what the model computes: the build must match the quantized module
            # (same tolerance); the quantization error against the original is recorded apart.
            numerics_change = changes_numerics(transforms)
            reference = prepared if numerics_change else module
            compiled.numerics = check_numerics(compiled, reference, inputs, rtol=self.rtol)
            if "int8" in transforms:
                compiled.notes["int8_error"] = quantization_error(module, prepared, inputs)
        self._cache[key] = compiled
        if len(self._cache) > _CACHE_SIZE:
            self._cache.popitem(last=False)
        return compiled

    def resolve_threads(self, module: nn.Module, example_input: torch.Tensor, target: Target,
                        options: CompileOptions) -> int:
        """Explicit threads (options, then target), else 1 at batch 1, else measured once.

        Batch > 1 on a target that runs here: the dense build (untuned, no transforms) is timed
        at 1 thread and at every core, the faster count is kept and recorded in
        ``<cache_dir>/threads.json`` under (target key, workload), so it is measured once per
        workload. Targets that cannot run here use every core they declare.
        """
        requested = options.requested_threads(target) or default_threads(example_input)
        if requested is not None:
            return requested
        cores = target.num_cores or all_cores()
        if not target.runs_locally or target.kind == "cuda" or cores <= 1:
            return max(1, cores)
        cache_dir = options.cache_dir if options.cache_dir is not None else DEFAULT_CACHE_DIR
        table = Path(cache_dir) / THREADS_FILE
        workload = structure_key(module, example_input, target, (), purpose="threads")
        entry = f"{target.key()}-{workload}"
        known = json.loads(table.read_text()) if table.is_file() else {}
        if entry in known:
            return int(known[entry]["threads"])
        dense = TVMCompiler(check=False).compile(
            module, example_input, target, CompileOptions(cache_dir=Path(cache_dir), threads=1))
        timings = {n: _quick_time(dense, example_input, n) for n in (1, cores)}
        best = min(timings, key=timings.__getitem__)
        known[entry] = {"threads": best, "ms": {str(n): t * 1e3 for n, t in timings.items()},
                        "input_shape": list(example_input.shape)}
        table.parent.mkdir(parents=True, exist_ok=True)
        tmp = table.with_suffix(".tmp")
        tmp.write_text(json.dumps(known, indent=1, sort_keys=True))
        os.replace(tmp, table)
        logger.info("threads for %s at batch %d: %d (ms by threads: %s)", target.name,
                    example_input.shape[0], best, timings)
        return best


def _quick_time(compiled: TVMModel, x: torch.Tensor, threads: int) -> float:
    """Seconds per run at ``threads`` threads: best of 3 samples of >= 10 ms each."""
    compiled.threads = threads
    compiled.time_per_run(x, 2)
    one = max(compiled.time_per_run(x, 1), 1e-7)
    number = max(1, math.ceil(0.01 / one))
    return min(compiled.time_per_run(x, number) for _ in range(3))
