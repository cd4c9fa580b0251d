"""Continual-learning methods: one registered class per method, chosen by ``method.kind``.

A new method is a ``Method`` subclass plus a config (a ``MethodConfig`` subclass), registered
with ``register_method(kind, Config, Class)``; see docs/extending.md.
"""

from __future__ import annotations

from pipeline.methods._base import (
    CompressionPasses,
    MaskMode,
    Method,
    Phase,
    TaskMasks,
    task_snapshot,
)
from pipeline.methods._registry import build_method, method_class, method_names, register_method
from pipeline.methods.clnp import CLNP
from pipeline.methods.exssnet import ExSSNeT
from pipeline.methods.nispa import NISPA
from pipeline.methods.packnet import PackNet
from pipeline.methods.supsup import SupSup
from pipeline.methods.tsn import TSN
from pipeline.methods.wsn import WSN

__all__ = [
    "CLNP",
    "ExSSNeT",
    "NISPA",
    "PackNet",
    "SupSup",
    "TSN",
    "WSN",
    "CompressionPasses",
    "MaskMode",
    "Method",
    "Phase",
    "TaskMasks",
    "task_snapshot",
    "build_method",
    "method_class",
    "method_names",
    "register_method",
]
