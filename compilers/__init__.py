"""Compiler backends for taskpack: compile a task's subnetwork per device and measure it.

``import compilers`` is light: it imports torch only. TVM is imported on the first TVM compile,
through ``compilers.tvm`` (the only subpackage that imports it; the ``tvm`` backend is registered
by name and imported on first use).
"""

from __future__ import annotations

from ._base import TRANSFORMS, CompiledModel, CompileOptions, Compiler
from ._registry import compiler_names, get_compiler, register_compiler
from .eager import EagerCompiler
from .errors import (
    BuildFailed,
    CompilerError,
    DeviceLost,
    NumericsMismatch,
    RunTimedOut,
    TargetUnavailable,
)
from .export import export_bundle, load_bundle  # importing it does not import TVM
from .measure import Measurement, measure
from .numerics import NumericsReport, check_numerics, fixed_inputs
from .realizability import LayerSpec, Realizability, layer_realizability
from .targets import Target
from .transforms import (
    Transform,
    TransformContext,
    apply_transforms,
    check_transforms,
    register_transform,
    transform_names,
)

__all__ = [
    "TRANSFORMS",
    "BuildFailed",
    "CompileOptions",
    "CompiledModel",
    "Compiler",
    "CompilerError",
    "DeviceLost",
    "LayerSpec",
    "Measurement",
    "NumericsMismatch",
    "NumericsReport",
    "Realizability",
    "RunTimedOut",
    "Target",
    "TargetUnavailable",
    "Transform",
    "TransformContext",
    "apply_transforms",
    "check_numerics",
    "check_transforms",
    "compiler_names",
    "export_bundle",
    "fixed_inputs",
    "get_compiler",
    "layer_realizability",
    "load_bundle",
    "measure",
    "register_compiler",
    "register_transform",
    "transform_names",
]

register_compiler("eager", EagerCompiler)
register_compiler("tvm", "compilers.tvm:TVMCompiler")  # imported on first use (TVM is heavy)

