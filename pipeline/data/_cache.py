"""The data cache: one folder per fetched data set, holding one compact ``.npz`` (no pickle).

Fetching converts whatever the upstream format is (a pickle inside a wheel, IDX files inside a
Debian package) into the same npz layout once; run time reads only that npz, with
``allow_pickle=False``, so nothing executable is ever loaded from the cache.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from pipeline._atomic import atomic_write
from pipeline.data._types import Images
from pipeline.errors import DataMissingError

DATASETS_FETCHABLE = ("mnist", "fashion-mnist")
PRETTY = {"mnist": "MNIST", "fashion-mnist": "Fashion-MNIST"}
_KEYS = ("train_x", "train_y", "test_x", "test_y")


def default_cache_dir() -> Path:
    """``$TASKPACK_DATA`` if set, else ``~/.cache/taskpack/data``."""
    env = os.environ.get("TASKPACK_DATA")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "taskpack" / "data"


def resolve_cache_dir(cache_dir: Path | None) -> Path:
    return Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()


def dataset_dir(name: str, cache_dir: Path | None = None) -> Path:
    return resolve_cache_dir(cache_dir) / name


def npz_path(name: str, cache_dir: Path | None = None) -> Path:
    return dataset_dir(name, cache_dir) / f"{name}.npz"


def fetch_command(name: str, cache_dir: Path | None = None) -> str:
    """The shell command that fills this cache; names the folder when it is not the default."""
    cache = resolve_cache_dir(cache_dir)
    prefix = "" if cache == default_cache_dir() else f"TASKPACK_DATA={cache} "
    return f"{prefix}taskpack data fetch {name}"


def check_cached(name: str, cache_dir: Path | None = None) -> None:
    """Raise ``DataMissingError`` naming the fetch command when ``name`` is not cached."""
    if not npz_path(name, cache_dir).is_file():
        raise DataMissingError(
            f"{PRETTY[name]} is not in the data cache ({dataset_dir(name, cache_dir)}); "
            f"fetch it with: {fetch_command(name, cache_dir)}"
        )


def save_images(path: Path, images: Images) -> None:
    """Write ``images`` to ``path`` atomically (temp file in the same folder, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # Any-valued, so mypy does not match the keys against savez's `allow_pickle: bool`
    arrays: dict[str, Any] = {k: np.ascontiguousarray(v) for k, v in images._asdict().items()}
    atomic_write(path, lambda f: np.savez(f, **arrays))


def load_cached(name: str, cache_dir: Path | None = None) -> Images:
    """The cached data set as uint8 ``[N, 1, 28, 28]`` images and int64 labels."""
    check_cached(name, cache_dir)
    path = npz_path(name, cache_dir)
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in _KEYS}
    except (OSError, KeyError, ValueError) as e:
        raise DataMissingError(
            f"{PRETTY[name]} cache file {path} is unreadable ({e}); "
            f"fetch it again with: {fetch_command(name, cache_dir)}"
        ) from None
    return Images(
        train_x=_as_nchw(arrays["train_x"]),
        train_y=arrays["train_y"].astype(np.int64),
        test_x=_as_nchw(arrays["test_x"]),
        test_y=arrays["test_y"].astype(np.int64),
    )


def _as_nchw(x: np.ndarray) -> np.ndarray:
    return x[:, None] if x.ndim == 3 else x
