"""int8 transform (placeholder until implemented: raises so no result is ever faked)."""

from __future__ import annotations

from torch import nn

from .errors import BuildFailed

__all__ = ["to_int8"]


def to_int8(module: nn.Module) -> nn.Module:
    raise BuildFailed("the int8 transform is not implemented yet in this build of compilers.")
