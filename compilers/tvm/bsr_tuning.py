"""Measured schedule choice for the block-sparse kernel, kept beside the MetaSchedule database.

MetaSchedule cannot schedule the BSR kernel (its loops depend on the packed data), so its tiling,
input layout and loop order (:class:`~compilers.tvm.kernels.bsr.BSRSchedule`) are chosen here: on
a tuned build for a target that runs on this machine, every candidate of
:func:`~compilers.tvm.kernels.bsr.schedule_candidates` is built alone with the layer's real packed
weights and timed in turns, best of 5 samples each, at the build's threads (an ``x_transposed``
candidate of a linear layer is charged the transpose kernel it needs); the fastest is recorded in
``<tuning database folder>/bsr_schedules.json`` under the workload (shape, block, batch, kept-block
fraction in 5% steps, dtype, ReLU), so each workload is measured once per database, like
MetaSchedule's records.
Untuned builds and targets that cannot run here use :func:`default_schedule`.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ._api import load
from .kernels.bsr import (
    BSRSchedule,
    bsr_linear_kernel,
    default_schedule,
    pack_bsr,
    schedule_candidates,
    transpose_kernel,
)

__all__ = ["BSR_SCHEDULES_FILE", "BSRScheduleTable"]

logger = logging.getLogger(__name__)
BSR_SCHEDULES_FILE = "bsr_schedules.json"
ROUNDS = 5  # samples per candidate, taken in turns


def _timer(func: Any, args: list[Any], tvm_target: Any) -> Callable[[], float]:  # noqa: ANN401
    """A call timing one sample (>= 2 ms) of a standalone PrimFunc, in seconds per call."""
    api = load()
    lib = api.tvm.compile(api.tvm.IRModule({"main": func.with_attr("global_symbol", "main")}),
                          target=tvm_target)
    once = lib.mod.time_evaluator("main", api.tvm.cpu(0), number=1, repeat=1)
    one = max(once(*args).mean, 1e-7)
    number = max(1, math.ceil(0.002 / one))
    timer = lib.mod.time_evaluator("main", api.tvm.cpu(0), number=number, repeat=1)
    return lambda: float(timer(*args).mean)


class BSRScheduleTable:
    """The measured BSR schedules of one tuning database folder (``TuningDatabase.folder``)."""

    def __init__(self, folder: str | Path, tvm_target: Any) -> None:  # noqa: ANN401
        self.path = Path(folder) / BSR_SCHEDULES_FILE
        self.tvm_target = tvm_target
        self.chosen: list[str] = []  # schedule names in the order layers asked (build notes)

    def _load(self) -> dict[str, Any]:
        return json.loads(self.path.read_text()) if self.path.is_file() else {}

    def _save(self, table: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(table, indent=1, sort_keys=True))
        os.replace(tmp, self.path)

    @staticmethod
    def workload(weight: np.ndarray, bh: int, bw: int, batch: int, relu: bool) -> str:
        """Shape, block, batch, dtype, ReLU and the kept-block fraction in steps of 5%: the
        search's trials differ in their masks, and one measurement serves a density band."""
        m, k = weight.shape
        kept = pack_bsr(weight, bh, bw, 1).nnz_blocks / max(1, (m // bh) * (k // bw))
        dtype = np.dtype(weight.dtype).name
        return (f"{m}x{k}-b{bh}x{bw}-n{batch}-kept{round(kept * 20) * 5:02d}pct-{dtype}"
                f"-relu{int(relu)}")

    def choose(self, weight: np.ndarray, bh: int, bw: int, batch: int, relu: bool,
               *, transposes_input: bool = True) -> BSRSchedule:
        """The recorded schedule of this workload, else measured now and recorded."""
        key = self.workload(weight, bh, bw, batch, relu)
        table = self._load()
        if key in table:
            entry = table[key]
            schedule = BSRSchedule(entry["u"], entry["nt"], entry["x_transposed"], entry["order"])
        else:
            timings = self._measure(weight, bh, bw, batch, relu, transposes_input)
            best = min(timings, key=lambda s: timings[s])
            schedule = best
            table = self._load()  # another build may have written meanwhile
            table[key] = {"u": best.u, "nt": best.nt, "x_transposed": best.x_transposed,
                          "order": best.order,
                          "ms": {s.name(): t * 1e3 for s, t in timings.items()}}
            self._save(table)
            logger.info("BSR schedule for %s: %s (ms by schedule: %s)", key, best.name(),
                        {s.name(): round(t * 1e3, 4) for s, t in timings.items()})
        self.chosen.append(schedule.name())
        return schedule

    def _measure(self, weight: np.ndarray, bh: int, bw: int, batch: int, relu: bool,
                 transposes_input: bool) -> dict[BSRSchedule, float]:
        api = load()
        dev = api.tvm.cpu(0)
        m, k = weight.shape
        rng = np.random.default_rng(0)
        x = rng.standard_normal((batch, k)).astype(np.float32)
        ones, zeros = np.ones(m, np.float32), np.zeros(m, np.float32)
        y = api.tvm.runtime.tensor(np.zeros((batch, m), np.float32), dev)
        timers: dict[BSRSchedule, Callable[[], float]] = {}
        for cand in schedule_candidates(batch):
            packed = pack_bsr(weight, bh, bw, cand.u)
            func = bsr_linear_kernel(batch, packed, relu, schedule=cand)
            xin = np.ascontiguousarray(x.T) if cand.x_transposed else x
            args = [api.tvm.runtime.tensor(a, dev) for a in
                    (xin, packed.data, packed.indices, packed.indptr, ones, zeros)] + [y]
            timers[cand] = _timer(func, args, self.tvm_target)
        xt = api.tvm.runtime.tensor(np.zeros((k, batch), np.float32), dev)
        transpose = _timer(transpose_kernel(batch, k), [api.tvm.runtime.tensor(x, dev), xt],
                           self.tvm_target)
        # Candidates take turns, ROUNDS times, and keep their best sample: a burst of load from
        # another process then hits every candidate alike instead of one unlucky candidate.
        best = dict.fromkeys(timers, float("inf"))
        best_transpose = float("inf")
        for _ in range(ROUNDS):
            for cand, timer in timers.items():
                best[cand] = min(best[cand], timer())
            best_transpose = min(best_transpose, transpose())
        timings = {}
        for cand, seconds in best.items():
            charged = cand.x_transposed and transposes_input
            timings[cand] = seconds + (best_transpose if charged else 0.0)
        return timings


def default_choice(weight: np.ndarray, bh: int, bw: int, batch: int, relu: bool,
                   **_: Any) -> BSRSchedule:  # noqa: ANN401
    """The untuned choice (same signature as :meth:`BSRScheduleTable.choose`)."""
    return default_schedule(batch)
