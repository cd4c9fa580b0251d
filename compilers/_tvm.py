"""The one place that imports Apache TVM.

Everything else in ``compilers`` gets TVM through :func:`load`, so ``import compilers`` stays light
(no TVM import at all) and a machine without TVM gets one clear error naming the package to
install instead of an ImportError from deep inside a backend.
"""

from __future__ import annotations

import functools
from types import SimpleNamespace

from .errors import TargetUnavailable

__all__ = ["available", "load", "rpc_tracker_class"]


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
