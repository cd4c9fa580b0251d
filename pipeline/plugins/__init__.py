"""Training-efficiency plugins (``train.plugins``): one registered class per plugin, chosen by
``kind``; the training loop calls them through ``TrainPlugins`` and counts the cost with
``TrainCost``. A new plugin is a ``TrainPlugin`` subclass plus a ``PluginConfig`` subclass,
registered with ``register_plugin(kind, Config, Class)``; see docs/training.md."""

from __future__ import annotations

from pipeline.plugins._base import TrainPlugin
from pipeline.plugins._cost import TrainCost
from pipeline.plugins._registry import TrainPlugins, plugin_class, register_plugin
from pipeline.plugins.sparcl import DataRemoval, GradientMasking
from pipeline.plugins.spfde import DataSieving, LayerFreezing

__all__ = [
    "DataRemoval",
    "DataSieving",
    "GradientMasking",
    "LayerFreezing",
    "TrainCost",
    "TrainPlugin",
    "TrainPlugins",
    "plugin_class",
    "register_plugin",
]
