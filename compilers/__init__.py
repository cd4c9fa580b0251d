"""Compiler backends for taskpack: compile a task's subnetwork per device and measure it.

``import compilers`` is light: it imports torch only. TVM is imported on the first TVM compile,
through ``compilers._tvm`` (the single adapter module).
"""

from __future__ import annotations

from ._base import TRANSFORMS, CompiledModel, Compiler
from .errors import (
    BuildFailed,
    CompilerError,
    DeviceLost,
    NumericsMismatch,
    RunTimedOut,
    TargetUnavailable,
)
from .measure import Measurement, measure
from .numerics import NumericsReport, check_numerics, fixed_inputs
from .realizability import LayerSpec, Realizability, layer_realizability
from .targets import Target

__all__ = [
    "TRANSFORMS",
    "BuildFailed",
    "CompiledModel",
    "Compiler",
    "CompilerError",
    "DeviceLost",
    "NumericsMismatch",
    "NumericsReport",
    "RunTimedOut",
    "Target",
    "TargetUnavailable",
    "check_numerics",
    "fixed_inputs",
    "get_compiler",
    "LayerSpec",
    "Measurement",
    "Realizability",
    "export_bundle",
    "layer_realizability",
    "load_bundle",
    "measure",
]


def export_bundle(*args: object, **kwargs: object):  # noqa: ANN201 - see compilers.export
    """Compile and write a deployable bundle; see :func:`compilers.export.export_bundle`."""
    from .export import export_bundle as _export_bundle

    return _export_bundle(*args, **kwargs)


def load_bundle(path: object):  # noqa: ANN201 - see compilers.export
    """Load a bundle folder; see :func:`compilers.export.load_bundle`."""
    from .export import load_bundle as _load_bundle

    return _load_bundle(path)


def get_compiler(name: str, **options: object) -> Compiler:
    """The backend called ``name`` ("eager" or "tvm"); options go to its constructor."""
    if name == "eager":
        from .eager import EagerCompiler

        return EagerCompiler(**options)
    if name == "tvm":
        from .tvm_backend import TVMCompiler

        return TVMCompiler(**options)
    raise ValueError(f"compiler name must be 'eager' or 'tvm', but got {name!r}.")
