"""Contract tests: every backend compiles, matches eager and is measurable the same way."""

from __future__ import annotations

import pytest
import torch

from compilers import Target, check_numerics, get_compiler, measure
from compilers.errors import NumericsMismatch, TargetUnavailable

from .conftest import block_sparse_mlp, tiny_cnn


class BackendContract:
    backend = ""
    transforms: tuple[str, ...] = ()

    def compile(self, model, x, cache_dir):  # noqa: ANN001, ANN201
        return get_compiler(self.backend).compile(
            model, x, Target.host(), transforms=self.transforms, cache_dir=cache_dir
        )

    @pytest.mark.parametrize("batch", [1, 4])
    def test_mlp_matches_eager(self, batch: int, cache_dir) -> None:  # noqa: ANN001
        model, x = block_sparse_mlp(), torch.randn(batch, 32)
        compiled = self.compile(model, x, cache_dir)
        report = check_numerics(compiled, model, [x, torch.randn(batch, 32)])
        assert report.passed and report.max_rel_err < 1e-4
        assert tuple(compiled.run(x).shape) == (batch, 10)

    def test_cnn_matches_eager(self, cache_dir) -> None:  # noqa: ANN001
        model, x = tiny_cnn(), torch.randn(2, 1, 8, 8)
        report = check_numerics(self.compile(model, x, cache_dir), model, [x])
        assert report.max_rel_err < 1e-4

    def test_measurement_protocol(self, cache_dir) -> None:  # noqa: ANN001
        model, x = block_sparse_mlp(), torch.randn(1, 32)
        m = measure(self.compile(model, x, cache_dir), x, min_repeats=3, max_repeats=6,
                    min_sample_ms=2.0)
        assert m.p10_ms <= m.median_ms <= m.p90_ms
        assert 3 <= m.repeats <= 6 and m.number >= 1
        assert m.backend == self.backend and m.target == "host" and m.device
        assert m.converged == (m.cv < 0.05)

    def test_mismatch_raises(self, cache_dir) -> None:  # noqa: ANN001
        model, x = block_sparse_mlp(), torch.randn(1, 32)
        compiled = self.compile(model, x, cache_dir)
        with pytest.raises(NumericsMismatch, match="relative error <= 0.0001 must hold"):
            check_numerics(compiled, block_sparse_mlp(seed=1), [x])


class TestEager(BackendContract):
    backend = "eager"
    transforms = ("shrink",)

    def test_rejects_remote_targets(self) -> None:
        with pytest.raises(TargetUnavailable, match="host only"):
            get_compiler("eager").compile(block_sparse_mlp(), torch.randn(1, 32), Target.cuda())


@pytest.mark.tvm
class TestTVMDense(BackendContract):
    backend = "tvm"


@pytest.mark.tvm
class TestTVMShrinkBlockSparse(BackendContract):
    backend = "tvm"
    transforms = ("shrink", "block_sparse")


def test_unknown_backend() -> None:
    with pytest.raises(ValueError, match="'eager' or 'tvm'"):
        get_compiler("xla")
