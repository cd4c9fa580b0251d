"""The transform registry: one ``apply_transforms`` that every backend and export goes through.

A :class:`Transform` rewrites a torch module before any backend sees it. Each registered transform
has a ``name`` (what recipes and ``CompileOptions.transforms`` say), an ``order`` (the canonical
position: transforms always run sorted by it, whatever order the caller lists them in) and
``changes_numerics`` (whether the result computes different numbers, e.g. int8, so the numerics
check compares against the transformed module instead of the original).

``apply_transforms(module, names, kernels=...)`` is the single entry point. ``kernels=True`` gives
the module a kernel backend (TVM) imports: block-sparse and int8 layers as custom ops.
``kernels=False`` gives the *reference form* of the same graph, with the same layer shapes and the
same numbers in standard torch layers (dense fp32 linears, dequantized int8 weights): what the
eager backend runs and what the ONNX file of a bundle is exported from.
"""

from __future__ import annotations

import abc
import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from torch import nn

__all__ = [
    "TRANSFORMS_VERSION",
    "Transform",
    "TransformContext",
    "apply_transforms",
    "changes_numerics",
    "check_transforms",
    "get_transform",
    "register_transform",
    "transform_names",
]

# Bumped when a transform changes what it builds, so compile and latency caches keyed by
# compilers.hashing do not serve results of the old transform (2: block-aware shrink; 3: batched
# block-sparse schedules, measured per workload; 4: shrink folds dead units with a constant
# output into the consumer's bias; 5: block-sparse convs lower to the direct conv kernel with a
# following max-pool fused, not im2col + the BSR kernel; 6: the conv kernel packs its weight in
# the block height it estimates fastest (1x1 blocks with several output rows per tile for a
# 2:4 / unstructured conv), not the pruning block's).
TRANSFORMS_VERSION = 6


@dataclass(frozen=True)
class TransformContext:
    """What a transform may look at besides the module.

    ``names``: every transform of this application, canonical order (a transform can adapt to the
    ones that follow it, e.g. shrink keeps block-sparse layers' shapes when block_sparse follows).
    ``kernels``: True for the kernel form (custom ops), False for the reference form.
    """

    names: tuple[str, ...]
    kernels: bool = True


class Transform(abc.ABC):
    """A torch-level rewrite of a module; subclasses set ``name`` and ``order``."""

    name: ClassVar[str] = ""
    order: ClassVar[int] = 100
    changes_numerics: ClassVar[bool] = False

    @abc.abstractmethod
    def apply(self, module: nn.Module, context: TransformContext) -> nn.Module:
        """Return the rewritten module (a new one, or ``module`` when nothing applies)."""


_REGISTRY: dict[str, Transform] = {}


def register_transform(transform: Transform | type[Transform], *, replace: bool = False) -> None:
    """Register ``transform`` (an instance or a class with a no-argument constructor)."""
    instance = transform() if isinstance(transform, type) else transform
    if not instance.name:
        raise ValueError(f"a transform must have a name, but {type(instance).__name__} has none.")
    if instance.name in _REGISTRY and not replace:
        raise ValueError(f"transform {instance.name!r} is already registered.")
    _REGISTRY[instance.name] = instance


def transform_names() -> tuple[str, ...]:
    """Registered transform names in canonical order."""
    return tuple(sorted(_REGISTRY, key=lambda n: (_REGISTRY[n].order, n)))


def get_transform(name: str) -> Transform:
    if name not in _REGISTRY:
        raise ValueError(f"transform must be one of {transform_names()}, but got {name!r}.")
    return _REGISTRY[name]


def check_transforms(transforms: Sequence[str]) -> tuple[str, ...]:
    """``transforms`` validated and in canonical order (the form every cache key hashes)."""
    if isinstance(transforms, str):
        raise TypeError(f"transforms must be a sequence of names, but got the string "
                        f"{transforms!r}.")
    known = transform_names()
    unknown = [t for t in transforms if t not in known]
    if unknown:
        raise ValueError(f"transforms must be a subset of {known}, but got {unknown}.")
    return tuple(t for t in known if t in transforms)


def changes_numerics(transforms: Sequence[str]) -> bool:
    """Whether any of ``transforms`` makes the module compute different numbers."""
    return any(get_transform(t).changes_numerics for t in check_transforms(transforms))


def apply_transforms(
    module: nn.Module, transforms: Sequence[str], *, kernels: bool = True
) -> nn.Module:
    """A transformed copy of ``module`` (in eval mode); ``module`` itself is left untouched."""
    names = check_transforms(transforms)
    context = TransformContext(names, kernels)
    model = copy.deepcopy(module).eval()
    for name in names:
        model = _REGISTRY[name].apply(model, context)
    return model.eval()
