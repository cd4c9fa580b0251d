"""Import torchvision next to the CPU build of torch.

PyPI's torchvision 0.28.0 is a CUDA build; with the CPU torch 2.13.0 its compiled ops do not
load, and its import then fails registering fake kernels for two ops whose schemas are missing
(``torchvision::nms`` and ``torchvision::qnms``). Defining those two schemas first lets the
pure-Python parts (transforms, functional ops) import and work. Nothing here calls those ops.
"""

from __future__ import annotations

import functools
from types import ModuleType


@functools.cache
def import_torchvision() -> ModuleType:
    import torch

    try:
        import torchvision
    except RuntimeError as first:
        if "torchvision::" not in str(first):
            raise
        for op in ("nms", "qnms"):
            if not _has_op(torch, op):
                schema = (
                    "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor"
                    if op == "nms"
                    else "(Tensor dets, Tensor scores, float iou_threshold, "
                    "float scale, int zero_point) -> Tensor"
                )
                _LIBS.append(torch.library.Library("torchvision", "FRAGMENT"))
                _LIBS[-1].define(op + schema)
        import sys

        for name in [m for m in sys.modules if m.startswith("torchvision")]:
            del sys.modules[name]
        import torchvision
    return torchvision


_LIBS: list = []  # keep the Library objects alive: dropping them unregisters the schemas


def _has_op(torch: ModuleType, name: str) -> bool:
    try:
        getattr(torch.ops.torchvision, name)
        return True
    except (AttributeError, RuntimeError):
        return False
