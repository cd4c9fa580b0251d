"""The one place that imports Apache TVM.

Everything else in ``compilers`` (all of it in ``compilers.tvm``) gets TVM through :func:`load`, so
``import compilers`` stays light (no TVM import at all) and a machine without TVM gets one clear
error naming the package to install instead of an ImportError from deep inside a backend."""

from __future__ import annotations

import contextlib
import functools
import inspect
import sys
from collections.abc import Iterator
from types import FrameType, SimpleNamespace

from ..errors import TargetUnavailable

__all__ = ["available", "load", "rpc_tracker_class"]


@contextlib.contextmanager
def _cheap_stack() -> Iterator[None]:
    """Make ``inspect.stack()`` cheap while TVM's tensor-intrinsic library is imported.

    ``tvm.s_tir.tensor_intrin`` (imported by MetaSchedule's first TuneContext) parses ~500
    TVMScript functions, and each ``@T.prim_func`` calls ``inspect.stack()``, which resolves
    the source of every frame. Frames of the import machinery (``<frozen importlib...>``) have
    no file, so ``inspect.getmodule`` scans all of ``sys.modules`` for each one: with torch
    loaded that made the import take 60-200 s here (measured with cProfile). TVMScript only
    reads ``frame`` from deeper frames and ``code_context`` of the first three, so those are
    kept exact and the rest skip the source lookup.
    """
    real = inspect.stack

    def stack(context: int = 1) -> list[inspect.FrameInfo]:
        frame: FrameType | None = sys._getframe(1)  # noqa: SLF001 - what inspect.stack walks
        out: list[inspect.FrameInfo] = []
        while frame is not None:
            if len(out) < 3:
                out.append(inspect.FrameInfo(frame, *inspect.getframeinfo(frame, context)))
            else:
                code = frame.f_code
                out.append(inspect.FrameInfo(frame, code.co_filename, frame.f_lineno,
                                             code.co_name, None, None))
            frame = frame.f_back
        return out

    inspect.stack = stack
    try:
        yield
    finally:
        inspect.stack = real


@functools.cache
def load() -> SimpleNamespace:
    """Import TVM and the sub-modules ``compilers`` uses; cached after the first call."""
    try:
        import tvm
        from tvm import relax, rpc
        from tvm.ir.utils import derived_object
        from tvm.relax.frontend.torch import from_exported_program
        from tvm.s_tir import meta_schedule as ms
        from tvm.s_tir.meta_schedule.builder import local_builder
        from tvm.script import tirx as T
        from tvm.support import cc, utils

        with _cheap_stack():
            import tvm.s_tir.tensor_intrin  # noqa: F401 - see _cheap_stack
    except ImportError as exc:  # pragma: no cover - exercised only without tvm
        raise TargetUnavailable(
            "the `tvm` backend needs Apache TVM: `pip install apache-tvm==0.27.0.post1` "
            f"(installed with taskpack's default dependencies); import failed with: {exc}"
        ) from exc
    return SimpleNamespace(
        tvm=tvm,
        relax=relax,
        rpc=rpc,
        cc=cc,
        utils=utils,
        ms=ms,
        T=T,
        from_exported_program=from_exported_program,
        derived_object=derived_object,
        local_builder=local_builder,
        version=str(tvm.__version__),
    )


def rpc_tracker_class() -> type:
    """TVM's RPC tracker (it needs ``tornado``, which TVM itself does not require)."""
    load()
    try:
        from tvm.rpc.tracker import Tracker
    except ImportError as exc:
        raise TargetUnavailable(
            f"a TVM RPC tracker needs the `tornado` package (pip install tornado): {exc}"
        ) from exc
    return Tracker


def available() -> bool:
    """True when TVM can be imported here."""
    try:
        load()
    except TargetUnavailable:
        return False
    return True
