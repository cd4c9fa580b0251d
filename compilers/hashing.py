"""Content hashes that key the compile and latency caches.

Two keys, because the search asks two questions: *what does this model compute* (numerics: the key
covers every weight value) and *how fast is this structure* (latency: the key covers layer types,
shapes and the zero pattern of the weights, not their values, so two candidates with the same masks
share one measurement).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence

import torch
from torch import nn

from .targets import Target
from .transforms._base import TRANSFORMS_VERSION

__all__ = ["compile_key", "structure_key"]


def _describe(module: nn.Module) -> list[object]:
    return [(name, type(m).__name__, repr(m)) for name, m in module.named_modules() if name]


def _digest(
    module: nn.Module,
    example_input: torch.Tensor,
    target: Target,
    transforms: Sequence[str],
    extra: dict[str, object],
    values: bool,
) -> str:
    h = hashlib.sha256()
    meta = {
        "modules": _describe(module),
        "input": [list(example_input.shape), str(example_input.dtype)],
        "target": target.to_dict(),
        "transforms": list(transforms),
        "transforms_version": TRANSFORMS_VERSION,  # a cached build/timing of older transforms
        **extra,
    }
    h.update(json.dumps(meta, sort_keys=True, default=str).encode())
    for name, tensor in list(module.state_dict().items()):
        h.update(name.encode())
        t = tensor.detach().cpu().contiguous()
        h.update(str(tuple(t.shape)).encode())
        if values:
            h.update(t.numpy().tobytes())
        elif t.dtype.is_floating_point:
            h.update((t != 0).numpy().tobytes())
    return h.hexdigest()[:24]


def compile_key(
    module: nn.Module,
    example_input: torch.Tensor,
    target: Target,
    transforms: Sequence[str],
    **extra: object,
) -> str:
    """Hash of (weights and structure, input shape, target, transforms, extra settings)."""
    return _digest(module, example_input, target, transforms, extra, values=True)


def structure_key(
    module: nn.Module,
    example_input: torch.Tensor,
    target: Target,
    transforms: Sequence[str],
    **extra: object,
) -> str:
    """Hash of (layer types, shapes, nonzero pattern, input shape, target, transforms)."""
    return _digest(module, example_input, target, transforms, extra, values=False)
