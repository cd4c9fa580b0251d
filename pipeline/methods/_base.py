"""The contract between the runner and a continual-learning method.

Per task the runner calls, in this order::

    begin_task(task, store, data)                 # may read what earlier tasks committed
    for phase in phases(task):                    # fresh optimizer per phase; a generator may
                                                  # build a phase from the one before it
        every step:  loss -> backward -> after_backward -> optimizer step -> after_step
        every epoch: select_examples (which training examples), after_epoch (may stop)
    end_task(task) -> TaskMasks                   # the task's subnetwork, best state restored
    (a Compressor turns the masks and live weights into what is committed)
    after_commit(task, store)                     # read back what the store now holds

and, once per run, ``setup()`` after the backbone is built; ``state_dict`` / ``load_state_dict``
for what a resumed run needs beyond the model and the store; ``infer_task`` when the method can
evaluate without a task id. Every hook except ``end_task`` has a default, so a method states only
what differs. The runner never asks which method it runs.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar, Literal

import torch
import torch.nn.functional as F

from pipeline.models import ContinualNet, Mode
from pipeline.recipe import MethodConfig, Recipe

if TYPE_CHECKING:
    from pipeline.data import Task
    from pipeline.recipe import PruneConfig, QuantizeConfig
    from pipeline.store import PackedStore

__all__ = ["CompressionPasses", "MaskMode", "Method", "Phase", "TaskMasks", "masked_snapshot",
           "task_snapshot"]


@dataclass
class TaskMasks:
    """What a task ended up using, per layer: m_t, own_t = newly claimed, shared_t = reused."""

    mask: dict[str, torch.Tensor]
    own: dict[str, torch.Tensor]
    shared: dict[str, torch.Tensor]
    stats: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class MaskMode:
    """How the masked layers run: ``dense``, ``scores`` (top-``density`` of each layer's scores,
    straight-through) or ``mask`` (the given ``masks``)."""

    mode: Mode = "dense"
    density: float | None = None
    masks: dict[str, torch.Tensor] | None = None

    def apply(self, model: ContinualNet) -> None:
        model.set_mode(self.mode, self.density, self.masks)


@dataclass
class Phase:
    """One stretch of training with its own optimizer.

    ``epochs`` None means ``train.epochs``; ``lr`` None means ``train.lr``; ``optimizer`` None
    means ``train.optimizer``. Tensors a phase must not change belong in no group; positions of
    a masked layer's weight that must not change go in ``frozen`` (layer name -> bool tensor of
    the weight's shape): their gradient is zero, set in the layer's backward (cheaper than
    zeroing it in ``after_backward``, which remains for other gates). Give each
    phase new group dicts: an optimizer writes its lr into the dicts it is given, so a dict
    reused by a later phase would carry the earlier phase's (decayed) lr. (The trainer merges
    groups with equal settings into new dicts, ``merge_groups``: one optimizer pass for all.)
    """

    name: str
    param_groups: list[dict]
    mode: MaskMode = field(default_factory=MaskMode)
    epochs: int | None = None
    lr: float | None = None
    optimizer: Literal["adam", "sgd", "rmsprop"] | None = None
    frozen: dict[str, torch.Tensor] | None = None


@dataclass(frozen=True)
class CompressionPasses:
    """Settings of the passes that compress a task's own weights (pruning, quantization)."""

    prune: PruneConfig
    quantize: QuantizeConfig


class Method(ABC):
    """A continual-learning method, trained task after task inside one ``ContinualNet``.

    Constructed as ``Method(model, cfg, recipe)``: ``cfg`` is the validated ``method`` section,
    ``recipe`` the whole recipe (None in unit tests that build a method by hand).

    ``end_task_repeatable``: whether ``end_task`` gives the same masks when called again on a
    model restored to its state right after an earlier ``end_task`` (true when it only reads the
    trained tensors, as WSN's top-c of the scores). A search interrupted mid-task reuses the
    task's trained checkpoint only then; otherwise the task is trained again (end_task prunes,
    cuts or re-initialises, and a second call would do it twice).
    """

    end_task_repeatable: ClassVar[bool] = True

    def __init__(self, model: ContinualNet, cfg: MethodConfig,
                 recipe: Recipe | None = None) -> None:
        self.model = model
        self.cfg = cfg
        self.recipe = recipe

    def from_store(self, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Tensors read from the store (host memory), moved beside the model's weights: the
        one place a method's store reads cross to the training device."""
        device = next(self.model.parameters()).device
        return {k: v.to(device) for k, v in tensors.items()}

    # ---- once per run -------------------------------------------------------------------
    def setup(self) -> None:  # noqa: B027 - optional hook
        """Prepare the backbone once, before the first task (e.g. a fixed random backbone)."""

    # ---- per task -----------------------------------------------------------------------
    def begin_task(self, task: int, store: PackedStore | None = None,  # noqa: B027
                   data: Task | None = None) -> None:
        """Get ready to train ``task`` (its head exists); ``store`` holds the earlier tasks,
        ``data`` is the task's data (both None in unit tests that drive a method by hand)."""

    @abstractmethod
    def phases(self, task: int) -> Iterable[Phase]:
        """The training phases of ``task``, in order. A generator runs on after each phase has
        trained (its best state restored), so a phase can depend on the one before it."""

    def eval_mode(self, task: int) -> MaskMode:
        """How masked layers run when the live model is evaluated during ``task``."""
        return MaskMode()

    def loss(self, task: int, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, y)

    def after_backward(self, task: int) -> None:  # noqa: B027 - optional hook
        """Between ``backward()`` and ``step()``: gate gradients here."""

    def after_step(self, task: int) -> None:  # noqa: B027 - optional hook
        """After each optimizer step (e.g. re-apply constraints, grow/drop connections)."""

    def select_examples(self, task: int, epoch: int, n: int) -> torch.Tensor | None:
        """Indices of the ``n`` training examples to use this epoch; None = all of them."""
        return None

    def after_epoch(self, task: int, epoch: int, val_acc: float) -> bool:
        """After each epoch's validation; return True to end the phase early."""
        return False

    @abstractmethod
    def end_task(self, task: int) -> TaskMasks:
        """Fix the task's subnetwork once training is over (best state already restored)."""

    def compression(self) -> CompressionPasses | None:
        """The passes that compress this method's tasks (the method section's ``prune`` and
        ``quantize``, driven by the recipe's plan or the search); None = commit as trained."""
        return CompressionPasses(self.cfg.prune, self.cfg.quantize)

    def prune_scope(self, task: int, masks: TaskMasks) -> tuple[dict[str, torch.Tensor],
                                                                 dict[str, torch.Tensor] | None]:
        """Which positions of the ended ``task``'s mask pruning may remove, and what ranks them
        (lowest first; None = the weights' magnitude). Default: the task's own positions, since
        a shared position holds an earlier task's value the task was trained with. A method
        whose tasks only mask a fixed backbone can give the whole mask (SupSup)."""
        return masks.own, None

    def after_commit(self, task: int, store: PackedStore) -> None:  # noqa: B027
        """``task`` is in the store: align the live model with what the store holds. Also
        called on resume with the last committed task, so it must depend on the store only."""

    # ---- resume and evaluation ----------------------------------------------------------
    def state_dict(self) -> dict[str, torch.Tensor]:
        """Method state a resumed run needs beyond the model's tensors and the store."""
        return {}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:  # noqa: B027
        """Restore what ``state_dict`` returned."""

    def infer_task(self, x: torch.Tensor, store: PackedStore) -> torch.Tensor:
        """The task id of each input, for evaluation without a task id."""
        raise NotImplementedError(f"method {self.cfg.kind!r} cannot infer the task of an input")


def masked_snapshot(model: ContinualNet, masks: list[dict[str, torch.Tensor]],
                    task: int) -> dict[str, torch.Tensor]:
    """Task ``task``'s live tensors: each masked layer's weight times the task's mask, plus the
    task's own head and norms (``masks``: one mask per layer for every ended task)."""
    if not 0 <= task < len(masks):
        raise IndexError(f"task {task} has not ended; {len(masks)} task(s) have")
    return task_snapshot(model, masks[task], task)


def task_snapshot(model: ContinualNet, mask: dict[str, torch.Tensor],
                  task: int) -> dict[str, torch.Tensor]:
    """Task ``task``'s live tensors under its ``mask`` (one per masked layer): each masked
    layer's weight times the mask, plus the task's own head and norms, cloned."""
    out = {f"{n}.weight": (layer.weight.detach() * mask[n]).clone()
           for n, layer in model.masked_layers().items()}
    state = dict(model.named_parameters()) | dict(model.named_buffers())
    for name in model.task_param_names(task):
        out[name] = state[name].detach().clone()
    return out
