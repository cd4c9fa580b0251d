"""ContinualNet: a shared backbone of masked layers plus one head per task."""

from __future__ import annotations

import torch
from torch import nn

from pipeline.models._layers import MaskedLayer, Mode, TaskBatchNorm


class ContinualNet(nn.Module):
    """``forward(x, task)`` runs the backbone and the head of ``task``.

    The backbone maps inputs to a ``feature_dim`` vector. Heads are plain ``nn.Linear`` modules,
    never masked, added one per task by :meth:`add_task`.
    """

    def __init__(self, backbone: nn.Module, feature_dim: int, head_bias: bool = True) -> None:
        super().__init__()
        self.backbone = backbone
        self.feature_dim = feature_dim
        self.head_bias = head_bias
        self.heads = nn.ModuleList()

    @property
    def num_tasks(self) -> int:
        return len(self.heads)

    def add_task(self, num_classes: int) -> int:
        """Add a head (and per-task norms); returns the new task's index."""
        # initialised on the CPU (the same values whatever the device), then moved beside
        # the backbone
        device = next(self.backbone.parameters()).device
        self.heads.append(nn.Linear(self.feature_dim, num_classes, bias=self.head_bias)
                          .to(device))
        for m in self.backbone.modules():
            if isinstance(m, TaskBatchNorm):
                m.add_task()
                m.norms[-1].to(device)
        return len(self.heads) - 1

    def forward(self, x: torch.Tensor, task: int) -> torch.Tensor:
        for m in self._task_norms():
            m.task = task
        return self.heads[task](self.backbone(x))

    def _task_norms(self) -> list[TaskBatchNorm]:
        if not hasattr(self, "_norm_cache"):
            self._norm_cache = [m for m in self.backbone.modules() if isinstance(m, TaskBatchNorm)]
        return self._norm_cache

    def masked_layers(self) -> dict[str, MaskedLayer]:
        """Prunable layers by qualified name (e.g. ``backbone.0``), in forward order."""
        return {n: m for n, m in self.named_modules() if isinstance(m, MaskedLayer)}

    def layer_shapes(self) -> dict[str, tuple[int, ...]]:
        return {n: tuple(m.weight.shape) for n, m in self.masked_layers().items()}

    def set_mode(self, mode: Mode, density: float | None = None,
                 masks: dict[str, torch.Tensor] | None = None) -> None:
        for name, layer in self.masked_layers().items():
            layer.set_mode(mode, density, None if masks is None else masks[name])

    def task_param_names(self, task: int) -> list[str]:
        """Names of the parameters and buffers that belong to ``task`` alone (head, own BN)."""
        prefixes = [f"heads.{task}."]
        for name, m in self.named_modules():
            if isinstance(m, TaskBatchNorm):
                prefixes.append(f"{name}.norms.{task}.")
        state = dict(self.named_parameters()) | dict(self.named_buffers())
        return [n for n in state if any(n.startswith(p) for p in prefixes)]

    def num_prunable(self) -> int:
        return sum(m.weight.numel() for m in self.masked_layers().values())
