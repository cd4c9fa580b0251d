"""Contract tests for ``Compiler`` backends (Optuna style).

``CompilerContract`` holds what every backend must do: compile a tiny ``nn.Sequential``, run it,
match eager, be measurable with the common protocol (threads recorded), run with the threads it
was asked for, and reject bad options. A new backend is tested by one subclass that names it and
says how to spy on its runtime thread setting (``spy_threads``).
"""

from __future__ import annotations

import pytest
import torch

from compilers import (
    CompileOptions,
    Target,
    check_numerics,
    compiler_names,
    get_compiler,
    measure,
)
from compilers.errors import NumericsMismatch, TargetUnavailable

from .conftest import block_sparse_mlp, tiny_cnn


class CompilerContract:
    backend = ""
    transforms: tuple[str, ...] = ()

    def compile(self, model, x, cache_dir, **options):  # noqa: ANN001, ANN003, ANN201
        return get_compiler(self.backend).compile(
            model, x, Target.host(),
            CompileOptions(transforms=self.transforms, cache_dir=cache_dir, **options))

    def spy_threads(self, monkeypatch: pytest.MonkeyPatch) -> list[int]:
        """Record every thread count the backend hands its runtime; subclasses implement it."""
        raise NotImplementedError

    def test_registered(self) -> None:
        assert self.backend in compiler_names()
        assert get_compiler(self.backend).name == self.backend

    @pytest.mark.parametrize("batch", [1, 4])
    def test_mlp_matches_eager(self, batch: int, cache_dir) -> None:  # noqa: ANN001
        model, x = block_sparse_mlp(), torch.randn(batch, 32)
        compiled = self.compile(model, x, cache_dir)
        report = check_numerics(compiled, model, [x, torch.randn(batch, 32)])
        assert report.passed and report.max_rel_err < 1e-4
        assert tuple(compiled.run(x).shape) == (batch, 10)
        assert compiled.threads >= 1

    def test_cnn_matches_eager(self, cache_dir) -> None:  # noqa: ANN001
        model, x = tiny_cnn(), torch.randn(2, 1, 8, 8)
        report = check_numerics(self.compile(model, x, cache_dir, threads=1), model, [x])
        assert report.max_rel_err < 1e-4

    def test_measurement_protocol(self, cache_dir) -> None:  # noqa: ANN001
        model, x = block_sparse_mlp(), torch.randn(1, 32)
        compiled = self.compile(model, x, cache_dir)
        m = measure(compiled, x, min_repeats=3, max_repeats=6, min_sample_ms=2.0)
        assert m.p10_ms <= m.median_ms <= m.p90_ms
        assert 3 <= m.repeats <= 6 and m.number >= 1
        assert m.backend == self.backend and m.target == "host" and m.device
        assert m.converged == (m.cv < 0.05)
        assert m.transforms == compiled.transforms
        assert m.threads == compiled.threads == 1  # batch 1 defaults to one thread
        assert m.to_dict()["threads"] == 1

    @pytest.mark.parametrize("threads", [1, 2])
    def test_threads_reach_the_runtime(self, threads: int, cache_dir,  # noqa: ANN001
                                       monkeypatch: pytest.MonkeyPatch) -> None:
        model, x = block_sparse_mlp(), torch.randn(1, 32)
        compiled = self.compile(model, x, cache_dir, threads=threads)
        calls = self.spy_threads(monkeypatch)
        m = measure(compiled, x, warmup=1, min_repeats=1, max_repeats=2, min_sample_ms=1.0)
        assert compiled.threads == m.threads == threads
        assert calls and calls[-1] == threads

    def test_target_threads_and_override(self, cache_dir) -> None:  # noqa: ANN001
        model, x = block_sparse_mlp(), torch.randn(1, 32)
        compiler = get_compiler(self.backend)
        on_target = compiler.compile(model, x, Target.host(threads=2), CompileOptions(
            transforms=self.transforms, cache_dir=cache_dir))
        assert on_target.threads == 2
        overridden = compiler.compile(model, x, Target.host(threads=2), CompileOptions(
            transforms=self.transforms, cache_dir=cache_dir, threads=1))
        assert overridden.threads == 1

    def test_mismatch_raises(self, cache_dir) -> None:  # noqa: ANN001
        model, x = block_sparse_mlp(), torch.randn(1, 32)
        compiled = self.compile(model, x, cache_dir)
        with pytest.raises(NumericsMismatch, match="relative error <= 0.0001 must hold"):
            check_numerics(compiled, block_sparse_mlp(seed=1), [x])

    def test_rejects_bad_options(self) -> None:
        with pytest.raises(ValueError, match="transforms must be a subset"):
            CompileOptions(transforms=("fuse_everything",))
        with pytest.raises(ValueError, match="tune_trials >= 0"):
            CompileOptions(tune_trials=-1)
        with pytest.raises(ValueError, match="threads >= 1"):
            CompileOptions(threads=0)


class TestEager(CompilerContract):
    backend = "eager"
    transforms = ("shrink",)

    def spy_threads(self, monkeypatch: pytest.MonkeyPatch) -> list[int]:
        import compilers.eager

        calls: list[int] = []
        real = compilers.eager.torch_threads

        def spy(n: int):  # noqa: ANN202 - a context manager
            calls.append(n)
            return real(n)

        monkeypatch.setattr(compilers.eager, "torch_threads", spy)
        return calls

    def test_rejects_remote_targets(self) -> None:
        with pytest.raises(TargetUnavailable, match="host only"):
            get_compiler("eager").compile(block_sparse_mlp(), torch.randn(1, 32), Target.cuda())


class TVMContract(CompilerContract):
    backend = "tvm"

    def spy_threads(self, monkeypatch: pytest.MonkeyPatch) -> list[int]:
        from compilers.tvm import runtime

        calls: list[int] = []
        real = runtime.config_threadpool()

        def config(mode: int, n: int, cpus: list[str]) -> None:
            calls.append(n)
            assert len(cpus) == n  # max concurrency follows the thread count (1: serial)
            real(mode, n, cpus)

        monkeypatch.setattr(runtime, "config_threadpool", lambda: config)
        runtime._configured.clear()  # noqa: SLF001 - configure again (the pool's real state)
        return calls


@pytest.mark.tvm
class TestTVMDense(TVMContract):
    def test_batch_threads_are_measured_once_and_recorded(self, tmp_path) -> None:  # noqa: ANN001
        import json

        from compilers.tvm import THREADS_FILE

        model, x = block_sparse_mlp(), torch.randn(8, 32)
        compiled = self.compile(model, x, tmp_path)
        table = json.loads((tmp_path / THREADS_FILE).read_text())
        (entry,) = table.values()
        assert compiled.threads == entry["threads"] and set(entry["ms"]) >= {"1"}
        again = get_compiler("tvm").compile(model, x, Target.host(),
                                            CompileOptions(cache_dir=tmp_path))
        assert again.threads == compiled.threads


@pytest.mark.tvm
class TestTVMShrinkBlockSparse(TVMContract):
    transforms = ("shrink", "block_sparse")


def test_unknown_backend() -> None:
    with pytest.raises(ValueError, match="compiler name must be one of"):
        get_compiler("xla")
