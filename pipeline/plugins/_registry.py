"""The plugin registry (``train.plugins[].kind`` -> config and plugin class) and ``TrainPlugins``,
the one object the training loop calls: it forwards each hook to every plugin in recipe order."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from pipeline.errors import RecipeError
from pipeline.plugins._base import TrainPlugin
from pipeline.recipe import PluginConfig, register_plugin_config

if TYPE_CHECKING:
    from pipeline.data import Task
    from pipeline.methods import Method, Phase

__all__ = ["TrainPlugins", "plugin_class", "register_plugin"]

_PLUGINS: dict[str, type[TrainPlugin]] = {}


def register_plugin(kind: str, config: type[PluginConfig], plugin: type[TrainPlugin]) -> None:
    """Register a plugin: ``train.plugins: [{kind: <kind>}]`` validates into ``config`` and runs
    ``plugin``. The same pair twice is allowed; another class under a taken kind is an error."""
    if not (isinstance(plugin, type) and issubclass(plugin, TrainPlugin)):
        raise TypeError(f"a plugin must subclass pipeline.plugins.TrainPlugin, "
                        f"but got {plugin!r}.")
    known = _PLUGINS.get(kind)
    if known is not None and known is not plugin:
        raise ValueError(f"plugin kind {kind!r} is already registered to {known.__name__}.")
    register_plugin_config(kind, config)
    _PLUGINS[kind] = plugin


def plugin_class(kind: str) -> type[TrainPlugin]:
    try:
        return _PLUGINS[kind]
    except KeyError:
        raise RecipeError(f"train.plugins: unknown plugin {kind!r}; registered: "
                          f"{sorted(_PLUGINS)}") from None


class TrainPlugins:
    """The plugins of one task, called as one."""

    def __init__(self, plugins: Sequence[TrainPlugin]) -> None:
        self.plugins = list(plugins)

    @classmethod
    def build(cls, configs: Sequence[PluginConfig], method: Method) -> TrainPlugins:
        return cls([plugin_class(c.kind)(c, method) for c in configs])

    def begin_task(self, task: int, data: Task) -> None:
        for p in self.plugins:
            p.begin_task(task, data)

    def begin_phase(self, phase: Phase) -> None:
        for p in self.plugins:
            p.begin_phase(phase)

    def select(self, task: int, epoch: int, order: torch.Tensor) -> torch.Tensor:
        for p in self.plugins:
            order = p.select(task, epoch, order)
        return order

    def after_forward(self, task: int, idx: torch.Tensor, logits: torch.Tensor,
                      y: torch.Tensor) -> None:
        for p in self.plugins:
            p.after_forward(task, idx, logits, y)

    def after_backward(self, task: int) -> None:
        for p in self.plugins:
            p.after_backward(task)

    def after_epoch(self, task: int, epoch: int) -> None:
        for p in self.plugins:
            p.after_epoch(task, epoch)

    def end_phase(self) -> None:
        for p in reversed(self.plugins):  # undo in reverse order
            p.end_phase()

    def weight_grad_fraction(self, layer: str) -> float:
        return math.prod(p.weight_grad_fraction(layer) for p in self.plugins)

    def stats(self) -> dict[str, float]:
        return {f"{p.cfg.kind}/{k}": v for p in self.plugins for k, v in p.stats().items()}
