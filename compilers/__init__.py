"""Compiler backends for taskpack: compile a task's subnetwork per device and measure it.

``import compilers`` is light: it imports torch only. TVM is imported on the first TVM compile,
through ``compilers.tvm`` (the only subpackage that imports it; the ``tvm`` backend is registered
by name and imported on first use).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

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

if TYPE_CHECKING:  # annotations only: compilers.export and compilers.tvm import TVM
    import torch
    from torch import nn

    from .export import Bundle
    from .tvm import TVMCompiler

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


def export_bundle(
    module: nn.Module,
    example_input: torch.Tensor,
    target: Target,
    root: str | Path,
    *,
    task: int,
    store_hash: str,
    transforms: tuple[str, ...] = ("shrink", "block_sparse"),
    tune_trials: int = 0,
    cache_dir: str | Path | None = None,
    threads: int | None = None,
    compiler: TVMCompiler | None = None,
) -> Path:
    """Compile and write a deployable bundle; see :func:`compilers.export.export_bundle`.

    Defined here with the same signature so that ``import compilers`` does not import TVM.
    """
    from .export import export_bundle as _export_bundle

    return _export_bundle(
        module, example_input, target, root, task=task, store_hash=store_hash,
        transforms=transforms, tune_trials=tune_trials, cache_dir=cache_dir, threads=threads,
        compiler=compiler,
    )


def load_bundle(path: str | Path) -> Bundle:
    """Load a bundle folder; see :func:`compilers.export.load_bundle`."""
    from .export import load_bundle as _load_bundle

    return _load_bundle(path)
