"""ContinualNet: a shared backbone of masked layers plus one head per task, or one shared head.

``head: per_task`` (default) gives every task its own unmasked ``nn.Linear``. ``head: shared``
gives the net one output layer, a ``MaskedLinear`` named ``head`` that is masked per task like
every other layer (SupSup masks its classifier too); every task then has the same class count,
which is what evaluation without a task id needs (docs/task-inference.md).
"""

from __future__ import annotations

import torch
from torch import nn

from pipeline.models._layers import MaskedLayer, MaskedLinear, Mode, TaskBatchNorm


class ContinualNet(nn.Module):
    """``forward(x, task)`` runs the backbone and the head of ``task``.

    The backbone maps inputs to a ``feature_dim`` vector. Per-task heads are plain ``nn.Linear``
    modules, never masked, added one per task by :meth:`add_task`. With ``shared_classes`` set,
    the net has instead one masked output layer ``head`` (no bias: a bias would be shared by
    every task and trained by each) and ``add_task`` only adds the per-task norms. Every task
    must have ``shared_classes`` classes; the head has ``shared_outputs`` outputs (default: as
    many), the ones past the classes being SupSup's superfluous outputs.
    """

    def __init__(self, backbone: nn.Module, feature_dim: int, head_bias: bool = True,
                 shared_classes: int | None = None, shared_outputs: int | None = None) -> None:
        super().__init__()
        self.backbone = backbone
        self.feature_dim = feature_dim
        self.head_bias = head_bias
        self.heads = nn.ModuleList()
        self.shared_classes = shared_classes
        self._tasks = 0
        if shared_classes is not None:
            outputs = shared_classes if shared_outputs is None else shared_outputs
            if outputs < shared_classes:
                raise ValueError(f"a shared head with {outputs} outputs cannot hold "
                                 f"{shared_classes} classes")
            self.head = MaskedLinear(feature_dim, outputs)

    @property
    def num_tasks(self) -> int:
        return self._tasks if self.shared_classes is not None else len(self.heads)

    def output_layer(self, task: int) -> nn.Module:
        """The layer that turns features into ``task``'s logits (its head, or the shared one)."""
        return self.head if self.shared_classes is not None else self.heads[task]

    def add_task(self, num_classes: int) -> int:
        """Add a head (and per-task norms); returns the new task's index."""
        # initialised on the CPU (the same values whatever the device), then moved beside
        # the backbone
        device = next(self.backbone.parameters()).device
        if self.shared_classes is None:
            self.heads.append(nn.Linear(self.feature_dim, num_classes, bias=self.head_bias)
                              .to(device))
        elif num_classes != self.shared_classes:
            raise ValueError(f"a shared head is for {self.shared_classes} classes, but task "
                             f"{self._tasks} has {num_classes} classes")
        self._tasks += 1
        for m in self.backbone.modules():
            if isinstance(m, TaskBatchNorm):
                m.add_task()
                m.norms[-1].to(device)
        return self.num_tasks - 1

    def forward(self, x: torch.Tensor, task: int) -> torch.Tensor:
        for m in self._task_norms():
            m.task = task
        return self.output_layer(task)(self.backbone(x))

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

    def set_frozen(self, frozen: dict[str, torch.Tensor] | None) -> None:
        """Positions of each masked layer whose weight gradient is zero (in the layer's
        backward, whatever the mode); None: no layer has any. Layers missing from ``frozen``
        have none."""
        for name, layer in self.masked_layers().items():
            f = None if frozen is None else frozen.get(name)
            layer.frozen = None if f is None else f.to(layer.weight.device)

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
