"""Every stream, built from tiny fake data in the real layouts.

``StreamContract`` holds what must be true of any stream (shapes, local labels, val carved from
train, test untouched, seeded determinism, task-count limits, missing data); each stream
subclasses it with its expected sizes and adds the checks only it can make, compared exactly with
the raw data.
"""

from __future__ import annotations

import math
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.data import Stream, Task, build_stream
from pipeline.data._transforms import STATS, rotate
from pipeline.data.testing import (
    TEST_ID_OFFSET,
    example_ids,
    write_fake_cache,
    write_fake_cifar10,
    write_fake_cifar100,
    write_fake_notmnist,
    write_fake_svhn,
    write_fake_tinyimagenet,
)
from pipeline.errors import DataMissingError, RecipeError
from pipeline.recipe import BenchmarkConfig

MNIST_TRAIN, MNIST_TEST = 12, 4  # fake examples per class


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A fake data cache (MNIST, Fashion-MNIST) and a fake data_dir (CIFAR, SVHN, ...)."""
    root = tmp_path_factory.mktemp("data")
    cache, local = root / "cache", root / "local"
    write_fake_cache(cache, "mnist", train_per_class=MNIST_TRAIN, test_per_class=MNIST_TEST)
    write_fake_cache(cache, "fashion-mnist", seed=1)
    write_fake_cifar10(local)
    write_fake_cifar100(local)
    pytest.importorskip("scipy")
    write_fake_svhn(local)
    write_fake_notmnist(local)
    write_fake_tinyimagenet(local)
    return {"cache_dir": cache, "data_dir": local, "empty": root / "empty"}


def apply_steps(steps: list[dict], x: np.ndarray) -> torch.Tensor:
    """A task's preprocessing as data (``Stream.task_preprocess``), run on uint8 images the way
    a deployment would, independently of the stream's own transform."""
    t = torch.from_numpy(np.ascontiguousarray(x))
    for step in steps:
        if step["op"] == "pad":
            ph, pw = step["to"] - t.shape[-2], step["to"] - t.shape[-1]
            t = torch.nn.functional.pad(t, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))
        elif step["op"] == "scale":
            t = t.to(torch.float32) / step["divide_by"]
        elif step["op"] == "permute_pixels":
            t = t.reshape(len(t), -1)[:, step["permutation"]].reshape(t.shape)
        elif step["op"] == "rotate":
            t = rotate(t, step["degrees"])
        elif step["op"] == "normalize":
            t = (t - torch.tensor(step["mean"]).view(1, -1, 1, 1)) / torch.tensor(
                step["std"]).view(1, -1, 1, 1)
        elif step["op"] == "repeat_channels":
            t = t.expand(-1, step["to"], -1, -1)
        else:
            raise AssertionError(f"unknown step {step['op']!r}")
    return t


def raw_mnist(data: dict[str, Path], name: str = "mnist") -> dict[str, np.ndarray]:
    with np.load(data["cache_dir"] / name / f"{name}.npz") as z:
        return {k: z[k] for k in z.files}


def rows(x: torch.Tensor) -> set[bytes]:
    return {r.numpy().tobytes() for r in x.flatten(1)}


class StreamContract:
    stream: str
    options: dict[str, object] = {}
    n_tasks: int
    n_train: int  # raw training examples per task (train + val)
    n_test: int
    max_tasks: int | None  # None: any number of tasks
    missing: str  # regex the DataMissingError must match

    def cfg(self, data: dict[str, Path], **kwargs: object) -> BenchmarkConfig:
        fields = {"stream": self.stream, "cache_dir": data["cache_dir"], **self.options}
        fields.setdefault("data_dir", data["data_dir"])
        return BenchmarkConfig(**{**fields, **kwargs})

    def build(self, data: dict[str, Path], **kwargs: object) -> Stream:
        return build_stream(self.cfg(data, **kwargs))

    def test_every_task_has_its_shape_and_local_labels(self, data: dict[str, Path]) -> None:
        stream = self.build(data)
        assert stream.name == self.stream and len(stream) == self.n_tasks
        for i in range(len(stream)):
            task = stream.load(i)
            assert (task.index, task.name, task.num_classes) == (i, *stream.task_info(i))
            for split in (task.train, task.val, task.test):
                assert split.x.dtype == torch.float32 and split.y.dtype == torch.int64
                assert tuple(split.x.shape[1:]) == stream.input_shape and len(split) == len(
                    split.y
                )
            assert set(task.train.y.tolist()) == set(range(task.num_classes))
            assert set(task.test.y.tolist()) == set(range(task.num_classes))

    def test_preprocessing_as_data_repeats_the_transform(self, data: dict[str, Path]) -> None:
        stream = self.build(data)
        for i in range(min(len(stream), 3)):
            pre = stream.task_preprocess(i)
            raw = stream._specs[i].make()
            want = raw.transform(raw.test_x)
            torch.testing.assert_close(apply_steps(pre["steps"], raw.test_x), want,
                                       rtol=0, atol=1e-6)
            if "classes" in pre:
                assert len(pre["classes"]) == stream.task_info(i)[1]

    def test_val_is_carved_from_train_and_test_is_untouched(self, data: dict[str, Path]) -> None:
        task = self.build(data, val_fraction=0.25).load(self.n_tasks - 1)
        assert len(task.val) == round(0.25 * self.n_train)
        assert len(task.train) + len(task.val) == self.n_train
        assert not rows(task.train.x) & rows(task.val.x)
        assert len(task.test) == self.n_test
        other = self.build(data, val_fraction=0.5, train_limit=10).load(self.n_tasks - 1)
        assert torch.equal(task.test.x, other.test.x) and torch.equal(task.test.y, other.test.y)

    def test_same_seed_same_tasks_other_seed_other_split(self, data: dict[str, Path]) -> None:
        a, b = self.build(data, seed=3).load(0), self.build(data, seed=3).load(0)
        for split in ("train", "val", "test"):
            assert torch.equal(getattr(a, split).x, getattr(b, split).x)
            assert torch.equal(getattr(a, split).y, getattr(b, split).y)
        others = [rows(self.build(data, seed=s).load(0).val.x) for s in range(4, 8)]
        assert any(other != rows(a.val.x) for other in others)

    def test_limits_subsample_train_and_test_only(self, data: dict[str, Path]) -> None:
        full = self.build(data).load(0)
        cut = self.build(data, train_limit=10, test_limit=10).load(0)
        assert len(cut.train) == min(10, len(full.train)) and len(cut.test) == min(
            10, len(full.test)
        )
        assert rows(cut.train.x) <= rows(full.train.x) and rows(cut.test.x) <= rows(full.test.x)
        assert torch.equal(cut.val.x, full.val.x)

    def test_fewer_tasks_take_the_first_ones(self, data: dict[str, Path]) -> None:
        full, one = self.build(data), self.build(data, tasks=1)
        assert len(one) == 1 and one.task_info(0) == full.task_info(0)
        assert torch.equal(one.load(0).test.x, full.load(0).test.x)
        with pytest.raises(IndexError, match=r"task index must be in \[0, 1\)"):
            one.load(1)

    def test_too_many_tasks_is_a_recipe_error(self, data: dict[str, Path]) -> None:
        if self.max_tasks is None:
            assert len(self.build(data, tasks=self.n_tasks + 3)) == self.n_tasks + 3
            return
        with pytest.raises(RecipeError, match=rf"`benchmark.tasks <= {self.max_tasks}`"):
            self.build(data, tasks=self.max_tasks + 1)

    def test_missing_data_names_the_remedy(self, data: dict[str, Path]) -> None:
        with pytest.raises(DataMissingError, match=self.missing):
            self.build(data, cache_dir=data["empty"], data_dir=data["empty"])


MISSING_MNIST = r"MNIST is not in the data cache \(.*empty/mnist\); fetch it with: .*fetch mnist"


class MNISTContract(StreamContract):
    """Streams over whole MNIST-family data sets, which take no ``classes_per_task``."""

    n_train, n_test = 10 * MNIST_TRAIN, 10 * MNIST_TEST
    missing = MISSING_MNIST

    def test_classes_per_task_is_refused(self, data: dict[str, Path]) -> None:
        with pytest.raises(RecipeError, match="classes_per_task applies only to split streams"):
            self.build(data, classes_per_task=2)


class TestPermutedMNIST(MNISTContract):
    stream, n_tasks, max_tasks = "permuted_mnist", 10, None

    def test_every_task_is_permuted_task_zero_too(self, data: dict[str, Path]) -> None:
        raw = torch.from_numpy(raw_mnist(data)["test_x"]).flatten(1).float() / 255
        stream = self.build(data)
        perms = []
        for i in (0, 1):
            x = stream.load(i).test.x.flatten(1)
            assert not torch.equal(x, raw)
            # A pixel permutation keeps every image's pixel values: recover it from column sums.
            assert torch.equal(x.sort(dim=1).values, raw.sort(dim=1).values)
            perm = [int(torch.nonzero((raw == x[:, [j]]).all(0))[0]) for j in range(784)]
            assert torch.equal(raw[:, perm], x)
            perms.append(perm)
        assert perms[0] != perms[1]


class TestRotatedMNIST(MNISTContract):
    stream, n_tasks, max_tasks = "rotated_mnist", 10, 10

    def test_task_i_is_turned_by_18_i_degrees(self, data: dict[str, Path]) -> None:
        raw = torch.from_numpy(raw_mnist(data)["test_x"])[:, None].float() / 255
        stream = self.build(data)
        assert [stream.task_info(i)[0] for i in (0, 5)] == ["rmnist-0 (0deg)", "rmnist-5 (90deg)"]
        assert torch.equal(stream.load(0).test.x, raw)
        ninety = stream.load(5).test.x
        torch.testing.assert_close(ninety, torch.rot90(raw, 1, dims=(-2, -1)), atol=1e-5, rtol=0)
        torch.testing.assert_close(stream.load(3).test.x, rotate(raw, 54.0))

    def test_rotation_is_counter_clockwise(self) -> None:
        x = torch.zeros(1, 1, 4, 4)
        x[0, 0, 0, 3] = 1.0  # top right corner
        turned = rotate(x, 90.0)
        assert turned[0, 0, 0, 0] == pytest.approx(1.0, abs=1e-5)  # to the top left


class TestMNISTThenFashion(MNISTContract):
    stream, n_tasks, max_tasks = "mnist_fmnist", 2, 2

    def test_tasks_are_mnist_then_fashion_mnist_unchanged(self, data: dict[str, Path]) -> None:
        stream = self.build(data)
        assert [stream.task_info(i) for i in range(2)] == [("mnist", 10), ("fashion-mnist", 10)]
        for i, name in enumerate(("mnist", "fashion-mnist")):
            raw = raw_mnist(data, name)
            test = stream.load(i).test
            assert torch.equal(test.x, torch.from_numpy(raw["test_x"])[:, None].float() / 255)
            assert test.y.tolist() == raw["test_y"].tolist()


class TestSplitMNIST(StreamContract):
    stream, n_tasks, max_tasks = "split_mnist", 5, 5
    n_train, n_test = 2 * MNIST_TRAIN, 2 * MNIST_TEST
    missing = MISSING_MNIST

    def test_classes_come_in_natural_pairs_with_local_labels(self, data: dict[str, Path]) -> None:
        raw = raw_mnist(data)
        stream = self.build(data)
        for i in range(5):
            task = stream.load(i)
            assert task.name == f"split_mnist-{i} ({2 * i},{2 * i + 1})" and task.num_classes == 2
            train_ids = np.concatenate([example_ids(task.train.x), example_ids(task.val.x)])
            expected = np.flatnonzero(np.isin(raw["train_y"], [2 * i, 2 * i + 1]))
            assert sorted(train_ids.tolist()) == expected.tolist()
            assert (
                raw["train_y"][example_ids(task.train.x)] - 2 * i
            ).tolist() == task.train.y.tolist()
            test_ids = example_ids(task.test.x) - TEST_ID_OFFSET
            assert test_ids.tolist() == np.flatnonzero(raw["test_y"] // 2 == i).tolist()
            assert (raw["test_y"][test_ids] - 2 * i).tolist() == task.test.y.tolist()

    def test_classes_per_task_five_gives_two_tasks(self, data: dict[str, Path]) -> None:
        stream = self.build(data, classes_per_task=5)
        assert [stream.task_info(i) for i in range(len(stream))] == [
            ("split_mnist-0 (0,1,2,3,4)", 5),
            ("split_mnist-1 (5,6,7,8,9)", 5),
        ]


class TestSplitFashionMNIST(StreamContract):
    stream, n_tasks, max_tasks = "split_fmnist", 5, 5
    n_train, n_test = 24, 8
    missing = "Fashion-MNIST is not in the data cache .*taskpack data fetch fashion-mnist"


class TestSplitFashionMNIST32(TestSplitFashionMNIST):
    """The same stream padded to 32x32 for the CNNs (``benchmark.pad_to``)."""

    options = {"pad_to": 32}

    def test_images_are_centred_in_a_black_border(self, data: dict[str, Path]) -> None:
        padded, plain = self.build(data), self.build(data, pad_to=None)
        assert padded.input_shape == (1, 32, 32) and plain.input_shape == (1, 28, 28)
        a, b = padded.load(2).test.x, plain.load(2).test.x
        assert torch.equal(a, torch.nn.functional.pad(b, (2, 2, 2, 2)))


@pytest.mark.parametrize("stream", ["permuted_mnist", "rotated_mnist", "split_mnist",
                                    "mnist_fmnist"])
def test_every_mnist_family_stream_pads_to_32(data: dict[str, Path], stream: str) -> None:
    built = build_stream(BenchmarkConfig(stream=stream, cache_dir=data["cache_dir"], tasks=1,
                                         pad_to=32))
    assert built.input_shape == (1, 32, 32)
    assert tuple(built.load(0).train.x.shape[1:]) == (1, 32, 32)


def test_pad_to_is_refused_for_other_streams() -> None:
    with pytest.raises(ValueError, match="pad_to applies only to the MNIST-family streams"):
        BenchmarkConfig(stream="split_cifar100", pad_to=32)


class TestSplitCIFAR100(StreamContract):
    stream, n_tasks, max_tasks = "split_cifar100", 10, 10
    n_train, n_test = 30, 10  # 10 classes x (3 train, 1 test) per class
    missing = r"CIFAR-100 is not in benchmark.data_dir .*cifar-100-python/train"

    def test_tasks_hold_ten_natural_classes_normalized(self, data: dict[str, Path]) -> None:
        with open(data["data_dir"] / "cifar-100-python" / "test", "rb") as f:
            raw = pickle.load(f, encoding="bytes")
        labels = np.asarray(raw[b"fine_labels"])
        task = self.build(data).load(3)
        assert task.name == "split_cifar100-3 (30,31,32,33,34,35,36,37,38,39)"
        keep = (labels >= 30) & (labels < 40)
        assert task.test.y.tolist() == (labels[keep] - 30).tolist()
        x = torch.from_numpy(raw[b"data"][keep].reshape(-1, 3, 32, 32)).float() / 255
        mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in STATS["cifar100"])
        torch.testing.assert_close(task.test.x, (x - mean) / std)

    def test_twenty_tasks_of_five(self, data: dict[str, Path]) -> None:
        stream = self.build(data, classes_per_task=5)
        assert len(stream) == 20 and stream.task_info(19) == (
            "split_cifar100-19 (95,96,97,98,99)",
            5,
        )
        with pytest.raises(RecipeError, match=r"`benchmark.classes_per_task <= 100`"):
            self.build(data, classes_per_task=101)

    def test_without_data_dir_says_to_set_it(self, data: dict[str, Path]) -> None:
        with pytest.raises(DataMissingError, match="benchmark.data_dir is not set"):
            self.build(data, data_dir=None)


class TestFiveDatasets(StreamContract):
    stream, n_tasks, max_tasks = "five_datasets", 5, 5
    n_train, n_test = 40, 10  # the last task, notMNIST: 5 PNGs per letter, every fifth is test
    missing = r"CIFAR-10 is not in benchmark.data_dir .*cifar-10-batches-py/data_batch_1"

    def test_order_and_three_channel_32x32_inputs(self, data: dict[str, Path]) -> None:
        stream = self.build(data)
        names = [stream.task_info(i)[0] for i in range(5)]
        assert names == ["cifar10", "mnist", "svhn", "fashion-mnist", "notmnist"]
        assert stream.input_shape == (3, 32, 32)

    def test_grayscale_is_padded_black_and_repeated(self, data: dict[str, Path]) -> None:
        test = self.build(data).load(1).test  # MNIST
        (mean,), (std,) = STATS["mnist"]
        raw = torch.from_numpy(raw_mnist(data)["test_x"]).float() / 255
        assert torch.equal(test.x[:, 0], test.x[:, 2])
        torch.testing.assert_close(test.x[:, 1, 2:30, 2:30], (raw - mean) / std)
        assert torch.allclose(test.x[:, :, :2], torch.tensor(-mean / std))

    def test_svhn_digit_zero_is_label_zero(self, data: dict[str, Path]) -> None:
        from scipy.io import loadmat

        y = loadmat(data["data_dir"] / "test_32x32.mat")["y"].reshape(-1)
        assert 10 in y and 0 not in y
        assert self.build(data).load(2).test.y.tolist() == np.where(y == 10, 0, y).tolist()

    def test_missing_mnist_names_the_fetch_command(self, data: dict[str, Path]) -> None:
        with pytest.raises(DataMissingError, match="taskpack data fetch mnist"):
            self.build(data, cache_dir=data["empty"], tasks=2)
        assert len(self.build(data, cache_dir=data["empty"], tasks=1)) == 1


class TestTinyImageNet(StreamContract):
    stream, n_tasks, max_tasks = "tinyimagenet", 3, 3
    options = {"classes_per_task": 2}
    n_train, n_test = 6, 4  # 2 classes x (3 train, 2 val) images
    missing = r"TinyImageNet is not in benchmark.data_dir .*tiny-imagenet-200/wnids.txt"

    def test_class_order_is_seeded_and_covers_every_class(self, data: dict[str, Path]) -> None:
        def first_pixels(seed: int) -> list[set[bytes]]:
            stream = self.build(data, seed=seed)
            return [rows(stream.load(i).test.x) for i in range(3)]

        a, b = first_pixels(0), first_pixels(1)
        assert a == first_pixels(0) and a != b
        assert set().union(*a) == set().union(*b) and sum(map(len, a)) == 12

    def test_default_is_five_classes_per_task(self, data: dict[str, Path]) -> None:
        stream = self.build(data, classes_per_task=None)
        assert len(stream) == 1 and stream.task_info(0) == ("tinyimagenet-0", 5)
        assert stream.input_shape == (3, 64, 64)


def test_a_task_is_a_frozen_record(data: dict[str, Path]) -> None:
    cfg = BenchmarkConfig(stream="split_mnist", cache_dir=data["cache_dir"], tasks=1)
    task: Task = build_stream(cfg).load(0)
    with pytest.raises(AttributeError):
        task.name = "x"  # type: ignore[misc]
    assert math.isclose(len(task.val) / (len(task.train) + len(task.val)), 0.1, abs_tol=0.05)


@pytest.mark.parametrize(("stream", "dataset"), [
    ("permuted_mnist", "mnist"), ("rotated_mnist", "mnist"), ("split_mnist", "mnist"),
    ("split_fmnist", "fashion-mnist"), ("mnist_fmnist", "mnist"),
])
def test_normalize_standardizes_mnist_family_streams(
    data: dict[str, Path], stream: str, dataset: str
) -> None:
    """``benchmark.normalize`` is ``(x - mean) / std`` of the [0, 1] tensor, nothing else: same
    examples, same order, same permutation or rotation."""
    cfg = {"stream": stream, "cache_dir": data["cache_dir"], "tasks": 1, "seed": 3}
    plain = build_stream(BenchmarkConfig(**cfg)).load(0)
    std = build_stream(BenchmarkConfig(**cfg, normalize=True)).load(0)
    (mean,), (sd,) = STATS[dataset]
    for a, b in ((plain.train, std.train), (plain.val, std.val), (plain.test, std.test)):
        assert torch.equal(a.y, b.y)
        torch.testing.assert_close(b.x, (a.x - mean) / sd)
    assert std.train.x.min() < 0  # the background is no longer 0
    # the preprocessing as data (what bundles ship) says so too, and repeats the transform
    stream_std = build_stream(BenchmarkConfig(**cfg, normalize=True))
    steps = stream_std.task_preprocess(0)["steps"]
    assert steps[-1] == {"op": "normalize", "mean": [mean], "std": [sd],
                         "doc": "per channel: (x - mean) / std"}
    raw = stream_std._specs[0].make()
    torch.testing.assert_close(apply_steps(steps, raw.test_x), raw.transform(raw.test_x),
                               rtol=0, atol=1e-5)
