"""The fixed GEMV schedule for dense layers and its place in the tuning database."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("tvm")

from compilers import Target  # noqa: E402
from compilers.tvm import import_relax, load, to_tvm_target  # noqa: E402
from compilers.tvm.tuning import (  # noqa: E402
    GEMV_MARK,
    TuningDatabase,
    _in_process_builder,
    gemv_schedule,
)


def _mlp(batch: int = 1) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(48, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(),
                          nn.Linear(64, 10)).eval()
    return model, torch.randn(batch, 48, generator=torch.Generator().manual_seed(1))


def _legalized(model: nn.Module, x: torch.Tensor):  # noqa: ANN202
    tvm_target = to_tvm_target(Target.host())
    return TuningDatabase.legalize(import_relax(model, x), tvm_target), tvm_target


def _run(executable, x: torch.Tensor) -> np.ndarray:  # noqa: ANN001
    api = load()
    vm = api.relax.VirtualMachine(executable, api.tvm.cpu())
    return vm["main"](api.tvm.runtime.tensor(x.numpy())).numpy()


def test_gemv_schedule_covers_every_linear_and_is_exact() -> None:
    api = load()
    model, x = _mlp()
    mod, tvm_target = _legalized(model, x)
    prims = {gv: f for gv, f in mod.functions.items() if isinstance(f, api.tvm.tirx.PrimFunc)}
    assert len(prims) == 3
    scheduled = {}
    for gv, func in prims.items():
        sch = gemv_schedule(func, tvm_target)
        assert sch is not None, gv.name_hint
        assert GEMV_MARK in str(sch.trace)
        scheduled[gv] = sch.mod["main"].with_attr("tir.is_scheduled", True)
    new = api.tvm.IRModule({**dict(mod.functions.items()), **scheduled})
    out = _run(api.tvm.compile(new, target=tvm_target), x)
    with torch.no_grad():
        np.testing.assert_allclose(out, model(x).numpy(), rtol=1e-5, atol=1e-5)


def test_gemv_schedule_declines_large_batches_and_convolutions() -> None:
    api = load()
    model, x = _mlp(batch=512)  # 512 x 64 accumulator: a GEMM, left to MetaSchedule
    mod, tvm_target = _legalized(model, x)
    hidden = [f for gv, f in mod.functions.items()
              if isinstance(f, api.tvm.tirx.PrimFunc) and "relu" in gv.name_hint]
    assert len(hidden) == 2
    assert all(gemv_schedule(f, tvm_target) is None for f in hidden)
    conv = nn.Sequential(nn.Conv2d(1, 4, 3)).eval()
    mod, tvm_target = _legalized(conv, torch.randn(1, 1, 6, 6))
    prims = [f for f in mod.functions.values() if isinstance(f, api.tvm.tirx.PrimFunc)]
    assert prims and all(gemv_schedule(f, tvm_target) is None for f in prims)


def test_gemv_candidates_are_records_the_build_applies(tmp_path) -> None:  # noqa: ANN001
    api = load()
    model, x = _mlp()
    mod, tvm_target = _legalized(model, x)
    db = TuningDatabase(tmp_path, Target.host())
    assert set(db.schedule_sources(mod, tvm_target).values()) == {"default"}
    added = db._add_gemv_candidates(  # noqa: SLF001 - MetaSchedule search itself is not run here
        db._tasks(mod, tvm_target), tvm_target, _in_process_builder(api),  # noqa: SLF001
        api.ms.runner.LocalRunner(timeout_sec=30),
    )
    assert len(added) == 3
    assert set(db.schedule_sources(mod, tvm_target).values()) == {"gemv"}
    # the database on disk holds them: a fresh handle sees the records, and builds fast
    again = TuningDatabase(tmp_path, Target.host())
    start = time.perf_counter()
    executable = again.apply(mod, tvm_target)
    assert time.perf_counter() - start < 2.0
    with torch.no_grad():
        np.testing.assert_allclose(_run(executable, x), model(x).numpy(), rtol=1e-5, atol=1e-5)
    db.close()
    again.close()


def test_an_unreadable_database_is_moved_aside_not_fatal(tmp_path, caplog) -> None:  # noqa: ANN001
    """TVM refuses a whole database file over one bad record (seen: a record that no longer
    replays on its workload after the kernels changed). Tuning is a cache: the build goes on."""
    first = TuningDatabase(tmp_path, Target.host())
    folder = first.folder
    first.close()
    (folder / "database_workload.json").write_text('["not a workload"\n')
    (folder / "database_tuning_record.json").write_text("{broken\n")
    with caplog.at_level("WARNING", logger="compilers.tvm.tuning"):
        db = TuningDatabase(tmp_path, Target.host())
    assert "could not be read" in caplog.text and "moved it aside" in caplog.text
    kept = sorted(p.name.split(".unreadable-")[0] for p in folder.glob("*.unreadable-*"))
    assert kept == ["database_tuning_record.json", "database_workload.json"]
    model, x = _mlp()
    mod, tvm_target = _legalized(model, x)
    assert set(db.schedule_sources(mod, tvm_target).values()) == {"default"}  # empty, usable
    db.close()


def test_one_process_at_a_time_holds_a_tuning_database(tmp_path) -> None:  # noqa: ANN001
    """Two processes appending to one JSON database corrupt it (workloads are numbered by line),
    so a database is locked while a process has it open; handles in one process share the lock."""
    import subprocess
    import sys

    db = TuningDatabase(tmp_path, Target.host())
    again = TuningDatabase(tmp_path, Target.host())  # same process: no wait
    probe = ("import fcntl, sys; f = open(sys.argv[1], 'a+b')\n"
             "try:\n    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB); print('free')\n"
             "except BlockingIOError:\n    print('held')")

    def other_process_sees() -> str:
        return subprocess.run([sys.executable, "-c", probe, str(db.folder / ".lock")],
                              capture_output=True, text=True, check=True).stdout.strip()

    assert other_process_sees() == "held"
    db.close()
    assert other_process_sees() == "held"  # `again` still has it
    again.close()
    assert other_process_sees() == "free"
