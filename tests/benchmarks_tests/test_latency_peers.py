"""benchmarks/latency.py's peer rows and the one timing protocol (benchmarks/peer_runtimes.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from benchmarks import latency
from benchmarks.peer_runtimes import RUNTIMES, main, measure_runtime, missing, time_calls
from compilers.export import export_onnx


def test_time_calls_counts_one_call_per_inference() -> None:
    calls = []
    result = time_calls(lambda: calls.append(1), min_repeats=3, max_repeats=3,
                        min_sample_s=0.001)
    # warm-up (3) + sizing (1) + repeats * number
    assert len(calls) == 4 + result["repeats"] * result["number"]
    assert result["repeats"] == 3 and result["clock"] == "wall"
    assert 0 <= result["p10_ms"] <= result["median_ms"] <= result["p90_ms"]


def test_time_calls_cpu_clock_and_bad_clock() -> None:
    def spin() -> None:
        t = __import__("time").perf_counter()
        while __import__("time").perf_counter() - t < 2e-4:
            pass

    result = time_calls(spin, clock="cpu", min_repeats=3, max_repeats=3, min_sample_s=0.005)
    assert result["clock"] == "cpu" and result["median_ms"] > 0.05
    with pytest.raises(ValueError, match="clock"):
        time_calls(spin, clock="gpu")


def test_missing_names_the_reason_and_rejects_unknown_runtimes(monkeypatch) -> None:  # noqa: ANN001
    assert missing("onnxruntime") is None  # a product dependency
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    assert missing("openvino") == "not installed (openvino not importable)"
    with pytest.raises(ValueError, match="runtime must be one of"):
        missing("tensorrt")


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 10)).eval()


@pytest.mark.parametrize("name", RUNTIMES)
def test_each_peer_matches_eager_or_says_why_not(tmp_path: Path, name: str) -> None:
    model, x = _mlp(), torch.randn(4, 32)
    path = tmp_path / "m.onnx"
    export_onnx(model, x, path, opset=latency.PEER_OPSET)
    reason = missing(name)
    if reason is not None:
        pytest.skip(f"{name}: {reason}")
    timing, out = measure_runtime(name, path, x.numpy(), threads=1, clock="wall")
    with torch.no_grad():
        ref = model(x).numpy()
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-5)
    assert timing["median_ms"] > 0 and str(timing["version"]).startswith(name.split("-")[0])


def test_worker_cli_prints_one_json_line(tmp_path: Path, capsys) -> None:  # noqa: ANN001
    model, x = _mlp(), torch.randn(1, 32)
    export_onnx(model, x, tmp_path / "m.onnx", opset=latency.PEER_OPSET)
    np.save(tmp_path / "x.npy", x.numpy())
    assert main(["--runtime", "onnxruntime", "--onnx", str(tmp_path / "m.onnx"), "--input",
                 str(tmp_path / "x.npy"), "--output", str(tmp_path / "y.npy")]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith("{") and '"median_ms"' in line
    with torch.no_grad():
        np.testing.assert_allclose(np.load(tmp_path / "y.npy"), model(x).numpy(), rtol=1e-4,
                                   atol=1e-6)


def test_peer_rows_skip_a_missing_runtime_and_a_broken_worker(tmp_path: Path) -> None:
    model, x = _mlp(), torch.randn(2, 32)
    # this interpreter as the "DeepSparse venv": the worker runs, finds no deepsparse, says so
    rows = latency.peer_rows(model, x, 1, ["onnxruntime", "deepsparse"], "wall",
                             Path(sys.executable) if missing("deepsparse") else None)
    assert rows[0].timing is not None and rows[0].name.startswith("ONNX Runtime")
    if missing("deepsparse"):
        assert rows[1].timing is None and "not installed" in rows[1].skipped
    broken = tmp_path / "python"
    broken.write_text("#!/bin/sh\necho boom >&2\nexit 3\n")
    broken.chmod(0o755)
    if missing("deepsparse"):
        row = latency.peer_rows(model, x, 1, ["deepsparse"], "wall", broken)[0]
        assert row.timing is None and "boom" in row.skipped


@pytest.mark.tvm
def test_benchmark_module_rows_for_a_cnn(tmp_path: Path, capsys) -> None:  # noqa: ANN001
    """A small block-sparse CNN: eager, ONNX Runtime and TVM block-sparse rows, one table."""
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Flatten(), nn.Linear(16 * 4 * 4, 10)).eval()
    with torch.no_grad():
        latency._prune_blocks(model[0].weight, 0.2, gen)
    x = torch.randn(2, 3, 8, 8)
    peak_asked: list[int] = []

    def peak(threads: int) -> float:  # a row's compute bound uses the peak at its own threads
        peak_asked.append(threads)
        return 10.0

    rows = latency.benchmark_module(model, x, tune_trials=0, cache_dir=tmp_path, threads=1,
                                    bandwidth_gbs=10.0, peak_gflops=peak,
                                    peers=["onnxruntime"], tvm_rows=["block-sparse"])
    names = [r.name.split(" [")[0] for r in rows]
    assert names == ["PyTorch eager (dense-masked)", "ONNX Runtime (dense-masked)",
                     "TVM tuned + block-sparse"]
    assert all(r.timing and r.timing["median_ms"] > 0 and r.threads == 1 for r in rows)
    assert peak_asked == [1, 1]  # eager and the TVM row (the peers have no bound)
    latency.print_table("batch 2", rows)
    out = capsys.readouterr().out
    assert "one Python call per inference, wall clock" in out
    assert "block-sparse vs the fastest peer (ONNX Runtime" in out
    assert "ceiling: at its roofline bound" in out


def test_the_matmul_peak_is_measured_at_the_threads_asked() -> None:
    before = torch.get_num_threads()
    assert latency.measured_peak_gflops(1) > 0
    assert torch.get_num_threads() == before


def test_synthetic_cnn_is_block_pruned() -> None:
    model = latency.synthetic_cnn(density=0.1, seed=0)
    conv = model[3].weight.reshape(64, -1)
    blocks = (conv.reshape(4, 16, -1) != 0).any(dim=1)
    assert 0.05 < blocks.float().mean() < 0.15
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 10)


def test_an_unloadable_store_is_one_line_and_exit_2(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    junk = tmp_path / "junk.tpk"
    junk.write_bytes(b"junk\n")
    with pytest.raises(SystemExit) as exit_info:
        latency.main(["--store", str(junk)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "40-byte header" in err and err.count("\n") == 1
