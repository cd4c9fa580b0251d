"""Readers of local data sets, on tiny files written in each data set's official layout."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

from pipeline.data import _local
from pipeline.data._tiny import TinyImageNet
from pipeline.data.testing import (
    write_fake_cifar10,
    write_fake_cifar100,
    write_fake_notmnist,
    write_fake_svhn,
    write_fake_tinyimagenet,
)
from pipeline.errors import DataMissingError, InputError


def test_cifar10_batches_are_concatenated_as_nchw(tmp_path: Path) -> None:
    write_fake_cifar10(tmp_path, train_per_class=2, test_per_class=1)
    with open(tmp_path / "cifar-10-batches-py" / "data_batch_2", "rb") as f:
        batch = pickle.load(f, encoding="bytes")
    images = _local.load_cifar10(_local.require("cifar10", tmp_path, "five_datasets"))
    assert images.train_x.shape == (100, 3, 32, 32) and images.test_x.shape == (10, 3, 32, 32)
    assert images.train_x.dtype == np.uint8 and images.train_y.dtype == np.int64
    # Row 0 of batch 2 is example 20; its first 1024 bytes are the red plane, row-major.
    assert np.array_equal(images.train_x[20, 0], batch[b"data"][0, :1024].reshape(32, 32))
    assert images.train_y[20:40].tolist() == batch[b"labels"]


def test_cifar100_uses_fine_labels(tmp_path: Path) -> None:
    write_fake_cifar100(tmp_path)
    images = _local.load_cifar100(_local.require("cifar100", tmp_path, "split_cifar100"))
    assert images.train_y.tolist() == [i % 100 for i in range(300)]
    assert images.test_y.max() == 99


def test_a_cifar_batch_without_its_keys_is_an_input_error(tmp_path: Path) -> None:
    write_fake_cifar100(tmp_path)
    with open(tmp_path / "cifar-100-python" / "test", "wb") as f:
        pickle.dump({b"data": np.zeros((1, 3072), np.uint8)}, f)
    with pytest.raises(InputError, match=r"is not a CIFAR batch: it needs keys b'data' and"):
        _local.load_cifar100(tmp_path)


def test_svhn_is_transposed_and_ten_means_zero(tmp_path: Path) -> None:
    loadmat = pytest.importorskip("scipy.io").loadmat
    write_fake_svhn(tmp_path)
    raw = loadmat(tmp_path / "train_32x32.mat")
    images = _local.load_svhn(tmp_path)
    assert images.train_x.shape == (30, 3, 32, 32)
    assert np.array_equal(images.train_x[4, 1], raw["X"][:, :, 1, 4])
    assert images.train_y.tolist() == [i % 10 for i in range(30)]


def test_notmnist_splits_every_fifth_file_and_skips_broken_pngs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write_fake_notmnist(tmp_path, per_letter=10, broken=2)
    images = _local.load_notmnist(tmp_path)
    assert images.train_x.shape == (80, 1, 28, 28) and images.test_x.shape == (20, 1, 28, 28)
    assert images.test_y.tolist() == [c for c in range(10) for _ in range(2)]
    assert "skipped 2 unreadable notMNIST images" in caplog.text
    from PIL import Image

    with Image.open(tmp_path / "notMNIST_small" / "C" / "C004.png") as im:  # 5th file: test
        assert np.array_equal(images.test_x[4, 0], np.asarray(im))


def test_tinyimagenet_reads_only_the_asked_classes(tmp_path: Path) -> None:
    wnids = write_fake_tinyimagenet(tmp_path, classes=4, train_per_class=3, val_per_class=2)
    data = TinyImageNet(_local.require("tinyimagenet", tmp_path, "tinyimagenet"))
    assert data.wnids == sorted(wnids)
    images = data.load([wnids[3], wnids[0]])  # wnids[3]'s first image is grayscale
    assert images.train_x.shape == (6, 3, 64, 64) and images.test_x.shape == (4, 3, 64, 64)
    assert images.train_y.tolist() == [0, 0, 0, 1, 1, 1] and images.test_y.tolist() == [0, 0, 1, 1]
    gray = images.train_x[0]
    assert np.array_equal(gray[0], gray[1]) and np.array_equal(gray[1], gray[2])


def test_an_image_of_the_wrong_size_is_an_input_error(tmp_path: Path) -> None:
    from PIL import Image

    Image.fromarray(np.zeros((30, 28), np.uint8)).save(tmp_path / "x.png")
    with pytest.raises(InputError, match=r"must be 28x28, got 28x30"):
        _local.read_image(tmp_path / "x.png", "L", (28, 28))
    (tmp_path / "y.png").write_bytes(b"not a png")
    with pytest.raises(InputError, match="cannot read image"):
        _local.read_image(tmp_path / "y.png", "L", (28, 28))


@pytest.mark.parametrize(
    ("name", "match"),
    [
        ("cifar10", r"CIFAR-10 is not in benchmark.data_dir .*missing .*cifar-10-batches-py"),
        ("cifar100", r"expected cifar-100-python/train, cifar-100-python/test"),
        ("svhn", r"SVHN .*expected train_32x32.mat, test_32x32.mat"),
        ("notmnist", r"notMNIST_small/A"),
        ("tinyimagenet", r"tiny-imagenet-200/val/val_annotations.txt"),
    ],
)
def test_require_says_which_layout_was_expected(tmp_path: Path, name: str, match: str) -> None:
    with pytest.raises(DataMissingError, match=match):
        _local.require(name, tmp_path, "five_datasets")
    with pytest.raises(DataMissingError, match="benchmark.data_dir is not set; point it at"):
        _local.require(name, None, "five_datasets")


def test_require_names_only_what_is_missing(tmp_path: Path) -> None:
    write_fake_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(DataMissingError, match=r"missing cifar-10-batches-py/data_batch_3$"):
        _local.require("cifar10", tmp_path, "five_datasets")
