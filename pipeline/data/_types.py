"""The objects a stream hands out: ``Split``, ``Task`` and the lazy ``Stream``.

A stream holds only small recipes for its tasks (``TaskSpec``); ``Stream.load(i)`` builds
task ``i`` on demand, so a 40-task TinyImageNet stream never holds more than the task being
trained. The validation split and the quick-run limits are cut here, once, for every stream.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import torch

from pipeline.data._seeding import rng_for
from pipeline.errors import InputError

Transform = Callable[[np.ndarray], torch.Tensor]


@dataclass(frozen=True, eq=False)  # tensors have no truth value: compare by identity
class Split:
    """Inputs ``x`` (float32, ``[N, C, H, W]``) and task-local labels ``y`` (int64, ``[N]``)."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def to(self, device: torch.device) -> Split:
        """The split on ``device`` (itself when it is there already)."""
        if self.x.device == device:
            return self
        return Split(self.x.to(device), self.y.to(device))


@dataclass(frozen=True, eq=False)  # tensors have no truth value: compare by identity
class Task:
    """One task of a stream; ``val`` is carved from the training split, never from test."""

    index: int
    name: str
    num_classes: int
    train: Split
    val: Split
    test: Split

    def to(self, device: torch.device) -> Task:
        """The task with every split on ``device`` (training data lives where training runs)."""
        return Task(self.index, self.name, self.num_classes, self.train.to(device),
                    self.val.to(device), self.test.to(device))


@dataclass(frozen=True)
class RawTask:
    """A task before splitting: uint8 images ``[N, C, H, W]``, local int64 labels, a transform.

    Splitting and subsampling work on indices of the uint8 arrays, so only the examples that are
    kept are ever converted to float.
    """

    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    transform: Transform


@dataclass(frozen=True)
class TaskSpec:
    """What a stream knows about a task without loading it."""

    name: str
    num_classes: int
    make: Callable[[], RawTask]
    # what ``make``'s transform does, as data (see _transforms.SCALE_STEP); for split streams
    # also "classes": the original class of each local label
    preprocess: dict = field(default_factory=dict)


@dataclass(frozen=True)
class SplitPolicy:
    """How every task is cut: seeded validation fraction, then optional seeded limits."""

    seed: int
    val_fraction: float
    train_limit: int | None = None
    test_limit: int | None = None


class Stream:
    """An ordered sequence of tasks, built lazily; every task has the same input shape."""

    def __init__(
        self,
        name: str,
        input_shape: tuple[int, int, int],
        specs: list[TaskSpec],
        policy: SplitPolicy,
    ) -> None:
        self.name = name
        self.input_shape = input_shape
        self._specs = list(specs)
        self._policy = policy

    def __len__(self) -> int:
        return len(self._specs)

    def __repr__(self) -> str:
        return f"Stream({self.name!r}, tasks={len(self)}, input_shape={self.input_shape})"

    def task_info(self, i: int) -> tuple[str, int]:
        """``(name, num_classes)`` of task ``i`` without loading any data."""
        spec = self._spec(i)
        return spec.name, spec.num_classes

    def task_preprocess(self, i: int) -> dict:
        """What task ``i``'s inputs go through, as data (steps on uint8 images), unloaded."""
        return dict(self._spec(i).preprocess)

    def load(self, i: int) -> Task:
        """Build task ``i``: read its data, cut train/val, apply the limits, convert to float."""
        spec = self._spec(i)
        raw = spec.make()
        train_idx, val_idx, test_idx = split_indices(
            len(raw.train_y), len(raw.test_y), self._policy, i
        )

        def take(x: np.ndarray, y: np.ndarray, idx: np.ndarray) -> Split:
            return Split(x=raw.transform(x[idx]), y=torch.from_numpy(y[idx].astype(np.int64)))

        return Task(
            index=i,
            name=spec.name,
            num_classes=spec.num_classes,
            train=take(raw.train_x, raw.train_y, train_idx),
            val=take(raw.train_x, raw.train_y, val_idx),
            test=take(raw.test_x, raw.test_y, test_idx),
        )

    def _spec(self, i: int) -> TaskSpec:
        if not 0 <= i < len(self._specs):
            raise IndexError(
                f"task index must be in [0, {len(self._specs)}) for stream {self.name!r}, got {i}"
            )
        return self._specs[i]


def split_indices(
    n_train: int, n_test: int, policy: SplitPolicy, task: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sorted index arrays (train, val) into the training split and (test) into the test split.

    Validation is a seeded ``val_fraction`` of the training split (at least one example, and at
    least one left for training); ``train_limit`` then subsamples what is left, ``test_limit`` the
    test split. Each draw has its own seed stream, so changing a limit never moves the val split.
    """
    if n_train < 2:
        raise InputError(
            f"a task needs at least 2 training examples to cut a val split, got {n_train}"
        )
    n_val = min(max(1, round(policy.val_fraction * n_train)), n_train - 1)
    order = rng_for(policy.seed, "val", task).permutation(n_train)
    val_idx, train_idx = np.sort(order[:n_val]), np.sort(order[n_val:])
    train_idx = _limit(train_idx, policy.train_limit, rng_for(policy.seed, "train_limit", task))
    test_idx = _limit(
        np.arange(n_test), policy.test_limit, rng_for(policy.seed, "test_limit", task)
    )
    return train_idx, val_idx, test_idx


def _limit(idx: np.ndarray, limit: int | None, rng: np.random.Generator) -> np.ndarray:
    if limit is None or len(idx) <= limit:
        return idx
    return np.sort(rng.choice(idx, size=limit, replace=False))


class Images(NamedTuple):
    """A whole data set in memory: uint8 images ``[N, C, H, W]`` and int64 labels ``[N]``."""

    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
