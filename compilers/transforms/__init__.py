"""Compile-time transforms of a task's subnetwork, applied to the torch module before any backend.

Every backend (eager, TVM), the bundle export (its ONNX file and its TVM library) and the search's
latency path prepare a module with :func:`apply_transforms`; nothing else applies transforms. New
transforms subclass :class:`Transform` and call :func:`register_transform`.
"""

from __future__ import annotations

from . import (
    _builtin,  # noqa: F401 - registers shrink, block_sparse, int8
    _csr,  # noqa: F401 - registers csr_sparse
)
from ._base import (
    TRANSFORMS_VERSION,
    Transform,
    TransformContext,
    apply_transforms,
    changes_numerics,
    check_transforms,
    get_transform,
    register_transform,
    transform_names,
)
from ._block_sparse import (
    BLOCK_SHAPES,
    MAX_BLOCK_DENSITY,
    block_density,
    choose_block_shape,
    to_block_sparse,
)
from ._builtin import BlockSparseTransform, Int8Transform, ShrinkTransform
from ._csr import MAX_CSR_DENSITY, CSRSparseTransform, to_csr_sparse
from ._int8 import dequantize_int8, quantization_error, to_int8
from ._shrink import shrink

# The built-in transforms, canonical order (``transform_names()`` also lists later ones).
TRANSFORMS: tuple[str, ...] = transform_names()

__all__ = [
    "BLOCK_SHAPES", "MAX_BLOCK_DENSITY", "MAX_CSR_DENSITY", "TRANSFORMS", "TRANSFORMS_VERSION",
    "BlockSparseTransform", "CSRSparseTransform", "Int8Transform", "ShrinkTransform",
    "Transform", "TransformContext", "apply_transforms", "block_density", "changes_numerics",
    "check_transforms", "choose_block_shape", "dequantize_int8", "get_transform",
    "quantization_error", "register_transform", "shrink", "to_block_sparse", "to_csr_sparse",
    "to_int8", "transform_names",
]
