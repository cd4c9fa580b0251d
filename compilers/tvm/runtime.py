"""The TVM runtime around a compiled model: its thread pool and its serialization noise.

Threads: ``runtime.config_threadpool(mode, n, cpus)`` (src/runtime/thread_pool.cc) sets TVM's
maximum concurrency to ``len(cpus)`` (1 takes the serial launch path: no pool wake-up at all) and
the pool's used workers to ``n``. The pool is thread-local and sized when first created, so the
first call in a thread configures every core (creating the pool at full size) before narrowing it.
``TVM_NUM_THREADS`` is not enough for a per-model setting: it is read only while nothing has been
configured, and the pool keeps the size it was created with. TVM also re-binds the calling thread's
CPU affinity when it configures the pool; that is undone (see ``_keep_affinity``).

Noise: TVM 0.27 logs ``Scope Saving:`` / ``Scope Loaded:`` (``LOG(WARNING)`` straight to
``std::cerr`` in src/runtime/vm/executable.cc, one line per constant, empty scope) whenever a Relax
executable is exported or loaded; :func:`quiet_vm_serialization` drops exactly those lines.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import threading
from collections.abc import Iterator
from typing import Any

from ..threads import all_cores
from ._api import load

__all__ = ["config_threadpool", "quiet_vm_serialization", "set_threads"]

_BIG_CORES = 1  # ThreadGroup::kBig: the default affinity mode of TVM's own pool
_configured: dict[int, int] = {}  # python thread id -> threads last configured in it


def config_threadpool() -> Any:  # noqa: ANN401 - a tvm PackedFunc
    """TVM's ``runtime.config_threadpool`` global function (tests replace this)."""
    return load().tvm.get_global_func("runtime.config_threadpool")


def _cpus(n: int) -> list[str]:
    return [str(i) for i in range(n)]


def set_threads(n: int, session: Any = None) -> None:  # noqa: ANN401 - an RPC session
    """Make TVM run the next calls (in this thread, or on ``session``'s device) on n threads."""
    if session is not None:
        # An array cannot cross TVM 0.27's RPC (ffi.Array): the remote pool gets the worker
        # count only (its max concurrency stays the device's default).
        session.get_function("runtime.config_threadpool")(_BIG_CORES, n)
        return
    tid = threading.get_ident()
    if _configured.get(tid) == n:
        return
    fn = config_threadpool()
    with _keep_affinity():
        if tid not in _configured:  # the first configuration creates the pool: at full size
            cores = max(all_cores(), n)
            fn(_BIG_CORES, cores, _cpus(cores))
        fn(_BIG_CORES, n, _cpus(n))
    _configured[tid] = n


@contextlib.contextmanager
def _keep_affinity() -> Iterator[None]:
    """Restore the calling thread's CPU affinity after TVM reconfigured its pool.

    TVM binds the calling ("main") thread to its first ``n`` cores when it configures the pool
    (``SetMainThreadFullCpuAffinity``); at 1 thread that pinned the whole Python main thread, and
    with it torch, to core 0. TVM's worker threads keep the binding TVM gives them.
    """
    if not hasattr(os, "sched_getaffinity"):  # pragma: no cover - not Linux
        yield
        return
    before = os.sched_getaffinity(0)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


@contextlib.contextmanager
def quiet_vm_serialization() -> Iterator[None]:
    """Drop TVM's ``Scope Saving:`` / ``Scope Loaded:`` lines from stderr; keep the others."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            text = tmp.read().decode(errors="replace")
            kept = [line for line in text.splitlines(keepends=True)
                    if "Scope Saving:" not in line and "Scope Loaded:" not in line]
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()
