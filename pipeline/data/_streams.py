"""``build_stream``: a recipe's ``benchmark`` section to a lazy ``Stream`` of tasks.

Each builder checks that the data its tasks need is present (so a missing data set fails before
training starts), then returns one ``TaskSpec`` per task; nothing is read until ``Stream.load``.
Data sets used by many tasks (MNIST for Permuted MNIST, CIFAR-100 for its splits) are read once per
stream and shared; data sets used by one task are read when that task loads and then dropped.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np

from pipeline.data import _local
from pipeline.data._cache import check_cached, load_cached
from pipeline.data._seeding import rng_for
from pipeline.data._tiny import TinyImageNet
from pipeline.data._transforms import (
    PAD_STEP,
    normalized,
    normalized_steps,
    padded,
    permuted,
    permuted_steps,
    rotated,
    rotated_steps,
    standardized,
    standardized_steps,
    to_unit,
    unit_steps,
)
from pipeline.data._types import Images, RawTask, SplitPolicy, Stream, TaskSpec, Transform
from pipeline.errors import RecipeError
from pipeline.recipe import BenchmarkConfig

Source = Callable[[], Images]
Built = tuple[tuple[int, int, int], list[TaskSpec]]

NATURAL_TASKS = 10  # Permuted and Rotated MNIST: the usual 10 tasks
ROTATION_STEP = 18.0  # Rotated MNIST: task i is turned by 18*i degrees, evenly over [0, 180)
MNIST_SHAPE = (1, 28, 28)


def build_stream(cfg: BenchmarkConfig) -> Stream:
    """The stream named by ``cfg.stream``; raises DataMissingError or RecipeError."""
    shape, specs = _BUILDERS[cfg.stream](cfg)
    policy = SplitPolicy(cfg.seed, cfg.val_fraction, cfg.train_limit, cfg.test_limit)
    return Stream(cfg.stream, shape, specs, policy)


def _mnist_shape(cfg: BenchmarkConfig) -> tuple[int, int, int]:
    """MNIST's (1, 28, 28), or (1, pad_to, pad_to) when the recipe pads the images."""
    side = cfg.pad_to or MNIST_SHAPE[1]
    return (1, side, side)


def _permuted_mnist(cfg: BenchmarkConfig) -> Built:
    _no_classes_per_task(cfg)
    n = _task_count(cfg, NATURAL_TASKS, maximum=None)  # any number of permutations is fine
    source = _cached_source("mnist", cfg)
    shape = _mnist_shape(cfg)
    specs = []
    for i in range(n):  # padded first: the permutation shuffles the border too
        perm = rng_for(cfg.seed, "permutation", i).permutation(int(np.prod(shape)))
        transform, steps = _gray(cfg, "mnist", permuted(perm), permuted_steps(perm))
        specs.append(TaskSpec(f"pmnist-{i}", 10, _whole(source, transform), {"steps": steps}))
    return shape, specs


def _rotated_mnist(cfg: BenchmarkConfig) -> Built:
    _no_classes_per_task(cfg)
    n = _task_count(cfg, NATURAL_TASKS, maximum=NATURAL_TASKS)
    source = _cached_source("mnist", cfg)
    specs = []
    for i in range(n):
        angle = ROTATION_STEP * i
        transform, steps = _gray(cfg, "mnist", rotated(angle), rotated_steps(angle))
        specs.append(TaskSpec(f"rmnist-{i} ({angle:g}deg)", 10, _whole(source, transform),
                              {"steps": steps}))
    return _mnist_shape(cfg), specs


def _split_mnist(cfg: BenchmarkConfig) -> Built:
    source = _cached_source("mnist", cfg)
    return _mnist_shape(cfg), _split(cfg, source, 10, 2, *_gray(cfg, "mnist"))


def _split_fmnist(cfg: BenchmarkConfig) -> Built:
    source = _cached_source("fashion-mnist", cfg)
    return _mnist_shape(cfg), _split(cfg, source, 10, 2, *_gray(cfg, "fashion-mnist"))


def _mnist_fmnist(cfg: BenchmarkConfig) -> Built:
    _no_classes_per_task(cfg)
    names = ["mnist", "fashion-mnist"][: _task_count(cfg, 2, maximum=2)]
    specs = []
    for name in names:
        check_cached(name, cfg.cache_dir)
        source = functools.partial(load_cached, name, cfg.cache_dir)
        transform, steps = _gray(cfg, name)
        specs.append(TaskSpec(name, 10, _whole(source, transform), {"steps": steps}))
    return _mnist_shape(cfg), specs


def _split_cifar100(cfg: BenchmarkConfig) -> Built:
    root = _local.require("cifar100", cfg.data_dir, cfg.stream)
    source = functools.cache(functools.partial(_local.load_cifar100, root))
    return (3, 32, 32), _split(cfg, source, 100, 10, normalized("cifar100"),
                                normalized_steps("cifar100"))


def _five_datasets(cfg: BenchmarkConfig) -> Built:
    _no_classes_per_task(cfg)
    order = ["cifar10", "mnist", "svhn", "fashion-mnist", "notmnist"]
    specs = []
    for name in order[: _task_count(cfg, len(order), maximum=len(order))]:
        if name in ("mnist", "fashion-mnist"):
            check_cached(name, cfg.cache_dir)
            source: Source = functools.partial(load_cached, name, cfg.cache_dir)
        else:
            root = _local.require(name, cfg.data_dir, cfg.stream)
            source = functools.partial(_LOCAL_LOADERS[name], root)
        specs.append(TaskSpec(name, 10, _whole(source, normalized(name, pad_to=32, channels=3)),
                              {"steps": normalized_steps(name, pad_to=32, channels=3)}))
    return (3, 32, 32), specs


def _tinyimagenet(cfg: BenchmarkConfig) -> Built:
    data = TinyImageNet(_local.require("tinyimagenet", cfg.data_dir, cfg.stream))
    wnids = data.wnids
    per_task = _classes_per_task(cfg, len(wnids), default=5)
    n = _task_count(cfg, len(wnids) // per_task, maximum=len(wnids) // per_task)
    order = [wnids[j] for j in rng_for(cfg.seed, "class_order").permutation(len(wnids))]
    transform = normalized("tinyimagenet")
    specs = []
    for i in range(n):
        chosen = order[i * per_task : (i + 1) * per_task]
        make = _whole(functools.partial(data.load, chosen), transform)
        specs.append(TaskSpec(f"tinyimagenet-{i}", per_task, make,
                              {"steps": normalized_steps("tinyimagenet"), "classes": chosen}))
    return (3, 64, 64), specs


def _gray(cfg: BenchmarkConfig, dataset: str, transform: Transform = to_unit,
          steps: list[dict] | None = None) -> tuple[Transform, list[dict]]:
    """An MNIST-family transform and its steps as data: zero-padded first when
    ``benchmark.pad_to`` asks for it, standardized last when ``benchmark.normalize`` does."""
    steps = unit_steps() if steps is None else steps
    if cfg.pad_to is not None:
        transform = padded(transform, cfg.pad_to)
        steps = [{**PAD_STEP, "to": cfg.pad_to}, *steps]
    if cfg.normalize:
        return standardized(dataset, transform), steps + standardized_steps(dataset)
    return transform, steps


def _split(
    cfg: BenchmarkConfig, source: Source, n_classes: int, default: int, transform: Transform,
    steps: list[dict],
) -> list[TaskSpec]:
    """Tasks of ``classes_per_task`` consecutive classes each, in natural class order."""
    per_task = _classes_per_task(cfg, n_classes, default)
    natural = n_classes // per_task
    specs = []
    for i in range(_task_count(cfg, natural, maximum=natural)):
        classes = list(range(i * per_task, (i + 1) * per_task))
        name = f"{cfg.stream}-{i} ({','.join(map(str, classes))})"
        specs.append(TaskSpec(name, per_task, _classes_task(source, classes, transform),
                              {"steps": steps, "classes": classes}))
    return specs


def _whole(source: Source, transform: Transform) -> Callable[[], RawTask]:
    """A task holding all that ``source`` returns, labels unchanged."""

    def make() -> RawTask:
        return RawTask(*source(), transform=transform)

    return make


def _classes_task(
    source: Source, classes: list[int], transform: Transform
) -> Callable[[], RawTask]:
    """A task of the examples whose label is in ``classes``, relabelled 0..len(classes)-1."""

    def make() -> RawTask:
        data = source()
        lut = np.full(max(int(data.train_y.max()), int(data.test_y.max()), *classes) + 1, -1)
        lut[classes] = np.arange(len(classes))
        train = np.isin(data.train_y, classes)
        test = np.isin(data.test_y, classes)
        return RawTask(
            data.train_x[train],
            lut[data.train_y[train]],
            data.test_x[test],
            lut[data.test_y[test]],
            transform=transform,
        )

    return make


def _cached_source(name: str, cfg: BenchmarkConfig) -> Source:
    check_cached(name, cfg.cache_dir)
    return functools.cache(functools.partial(load_cached, name, cfg.cache_dir))


def _task_count(cfg: BenchmarkConfig, natural: int, maximum: int | None) -> int:
    n = cfg.tasks if cfg.tasks is not None else natural
    if maximum is not None and n > maximum:
        raise RecipeError(
            f"`benchmark.tasks <= {maximum}` must hold for stream {cfg.stream!r}, got {n}"
        )
    return n


def _classes_per_task(cfg: BenchmarkConfig, n_classes: int, default: int) -> int:
    per_task = cfg.classes_per_task if cfg.classes_per_task is not None else default
    if per_task > n_classes:
        raise RecipeError(
            f"`benchmark.classes_per_task <= {n_classes}` must hold for stream {cfg.stream!r} "
            f"(it has {n_classes} classes), got {per_task}"
        )
    return per_task


def _no_classes_per_task(cfg: BenchmarkConfig) -> None:
    if cfg.classes_per_task is not None:
        raise RecipeError(
            f"benchmark.classes_per_task applies only to split streams (split_mnist, split_fmnist,"
            f" split_cifar100, tinyimagenet), got {cfg.classes_per_task} for {cfg.stream!r}"
        )


_LOCAL_LOADERS: dict[str, Callable[..., Images]] = {
    "cifar10": _local.load_cifar10,
    "svhn": _local.load_svhn,
    "notmnist": _local.load_notmnist,
}

_BUILDERS: dict[str, Callable[[BenchmarkConfig], Built]] = {
    "permuted_mnist": _permuted_mnist,
    "rotated_mnist": _rotated_mnist,
    "split_mnist": _split_mnist,
    "split_fmnist": _split_fmnist,
    "mnist_fmnist": _mnist_fmnist,
    "split_cifar100": _split_cifar100,
    "five_datasets": _five_datasets,
    "tinyimagenet": _tinyimagenet,
}
