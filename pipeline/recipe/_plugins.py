"""``train.plugins``: training-efficiency plugins, one config class per registered ``kind``.

Every plugin acts on the current task's own trainable positions and its own data only, so a
forget-free method stays forget-free with any of them (docs/training.md).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import Field, field_validator

from pipeline.recipe._kinds import KindRegistry
from pipeline.recipe._section import _Section

__all__ = ["DataRemovalPlugin", "DataSievingPlugin", "GradientMaskingPlugin",
           "LayerFreezingPlugin", "PluginConfig", "PluginField", "register_plugin_config"]


class PluginConfig(_Section):
    """Base of every ``train.plugins`` entry; ``kind`` picks the registered plugin."""

    kind: str


PLUGINS: KindRegistry[PluginConfig] = KindRegistry("plugin", PluginConfig)


def register_plugin_config(kind: str, config: type[PluginConfig]) -> None:
    """Make ``train.plugins: [{kind: <kind>, ...}]`` validate into ``config``."""
    PLUGINS.register(kind, config)


if TYPE_CHECKING:  # what a checker sees: the base config
    PluginField = PluginConfig
else:
    PluginField = PLUGINS.field()

Epoch = Annotated[int, Field(ge=0, le=10_000)]


class DataRemovalPlugin(PluginConfig):
    """SparCL's dynamic data removal: at the listed epochs drop the task's examples with the
    fewest forgetting events (correct, then wrong), never-learned ones counting most."""

    kind: Literal["data_removal"] = "data_removal"
    fraction: float = Field(default=0.3, gt=0, lt=1,
                            description="fraction of the task's training examples removed in "
                            "all, in equal parts at the listed epochs")
    at_epochs: list[Epoch] = Field(default=[1, 2, 3, 4], min_length=1, max_length=64,
                                   description="epochs (0-based) at whose start a part is removed")

    @field_validator("at_epochs")
    @classmethod
    def _distinct(cls, v: list[int]) -> list[int]:
        if len(set(v)) != len(v) or 0 in v:
            raise ValueError(f"must be distinct epochs >= 1, got {v}")
        return sorted(v)


class GradientMaskingPlugin(PluginConfig):
    """SparCL's dynamic gradient masking: keep only the largest trainable weight gradients of
    each masked layer; the gradient mask is recomputed every ``interval`` steps."""

    kind: Literal["gradient_masking"] = "gradient_masking"
    keep: float = Field(default=0.8, gt=0, le=1,
                        description="fraction of a layer's non-zero weight-gradient entries kept")
    interval: int = Field(default=30, ge=1, le=1_000_000,
                          description="steps between two gradient-mask updates")


class LayerFreezingPlugin(PluginConfig):
    """SPFDE's progressive layer freezing: front to back, a masked layer whose weights moved
    less than ``tolerance`` (relative) over an epoch stops training for the rest of the phase."""

    kind: Literal["layer_freezing"] = "layer_freezing"
    warmup_epochs: int = Field(default=1, ge=1, le=10_000,
                               description="epochs every layer trains before any may freeze")
    tolerance: float = Field(default=0.01, gt=0, le=1e6,
                             description="a layer freezes when ||dW|| / ||W|| over the last "
                             "epoch is below this")
    max_frozen: float = Field(default=0.5, gt=0, lt=1,
                              description="at most this fraction of the masked layers freezes "
                              "(the front ones); the head never does")


class DataSievingPlugin(PluginConfig):
    """SPFDE's data sieving: after the warm-up, every epoch trains only on the task's examples
    with the highest last-seen loss."""

    kind: Literal["data_sieving"] = "data_sieving"
    keep: float = Field(default=0.6, gt=0, le=1,
                        description="fraction of the task's training examples kept per epoch")
    warmup_epochs: int = Field(default=1, ge=1, le=10_000,
                               description="epochs on every example before sieving starts")
    refresh_every: int = Field(default=0, ge=0, le=10_000,
                               description="every this many epochs train on all examples "
                               "again to refresh their losses; 0 = never")


register_plugin_config("data_removal", DataRemovalPlugin)
register_plugin_config("gradient_masking", GradientMaskingPlugin)
register_plugin_config("layer_freezing", LayerFreezingPlugin)
register_plugin_config("data_sieving", DataSievingPlugin)
