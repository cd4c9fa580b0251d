"""Suite-wide fixtures: torch's process settings restored after every test, a tuning cache of its
own for every test, GPU tests skipped cleanly where PyTorch sees no GPU."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU; PyTorch sees none here")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session", autouse=True)
def _no_shared_tuning_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Module- and session-scoped fixtures run before the per-test cache below: they too must
    never read or write the user's shared tuning cache (~/.cache/taskpack/tuning)."""
    mp = pytest.MonkeyPatch()
    mp.setenv("TASKPACK_TUNING", str(tmp_path_factory.mktemp("tuning-session")))
    yield
    mp.undo()


@pytest.fixture(autouse=True)
def _own_tuning_cache(tmp_path_factory: pytest.TempPathFactory,
                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Recipes default to the user's shared tuning cache (~/.cache/taskpack/tuning); each test
    gets its own, so a test never reuses a latency another test (or a real run) measured."""
    monkeypatch.setenv("TASKPACK_TUNING", str(tmp_path_factory.mktemp("tuning")))


@pytest.fixture(autouse=True)
def _restore_torch_settings() -> Iterator[None]:
    """A run sets threads, determinism and TF32 for its process (pipeline.device); a test must
    not leave them changed for the next one."""
    saved = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled(),
             torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    yield
    torch.set_num_threads(saved[0])
    torch.use_deterministic_algorithms(saved[1])
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved[2:]
