"""Peer inference runtimes for ``benchmarks/latency.py``, and the one timing protocol of every row.

Every row of the latency table (PyTorch eager, ONNX Runtime, OpenVINO, DeepSparse and the TVM
builds) is timed by :func:`time_calls`: **one Python call per inference**, on an input prepared
once in the runtime's own form (no per-call conversion), ``number`` calls per sample, medians of
samples. ``clock="wall"`` reads ``time.perf_counter`` (the default, what a quiet machine should
report); ``clock="cpu"`` reads ``time.process_time`` (CPU seconds of every thread of the process:
on a machine shared with other jobs it leaves out the time the process waited for a core, so
single-thread rows stay comparable; a runtime that spins idle worker threads is charged for them).

This module needs only numpy (and the runtime it loads), so it also runs as a worker in another
interpreter: DeepSparse 1.8.0 (the last release for Python 3.11) pins ``numpy<2``, ``onnx<1.15``
and ``pydantic<2.8``, which cannot share taskpack's environment, so ``latency.py`` runs it as

    <deepsparse venv>/bin/python benchmarks/peer_runtimes.py --runtime deepsparse --onnx M.onnx \
        --input X.npy --threads 1 --clock wall --output Y.npy

which prints the measurement as one JSON line (timed by this same :func:`time_calls`).

Runtimes (``RUNTIMES``; ``missing(name)`` says why one cannot run here, else None):

* ``onnxruntime``: CPU execution provider, ``intra_op = inter_op = threads``.
* ``openvino``: ``Core().compile_model(onnx, "CPU")`` with ``INFERENCE_NUM_THREADS = threads``,
  latency hint, one stream, fp32 inference precision, one infer request reused.
* ``openvino-sparse``: the same with the CPU plugin's sparse-weights option
  (``CPU_SPARSE_WEIGHTS_DECOMPRESSION_RATE``, set to ``SPARSE_RATE``). OpenVINO documents it for
  int8 fully connected layers on CPUs with AMX only; on other CPUs / fp32 it compiles dense.
  The row reports what the runtime does with the option, it does not assume a speed-up.
* ``deepsparse``: ``deepsparse.compile_model(onnx, batch_size, num_cores=threads)``; it needs
  ONNX opset <= 19 (``latency.py`` exports every peer's file at opset 17).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

__all__ = ["RUNTIMES", "SPARSE_RATE", "load_runtime", "missing", "time_calls"]

SPARSE_RATE = 0.5  # OpenVINO: weights at least this sparse are stored / run sparse (when it can)
_PACKAGES = {"onnxruntime": "onnxruntime", "openvino": "openvino",
             "openvino-sparse": "openvino", "deepsparse": "deepsparse"}
RUNTIMES: tuple[str, ...] = tuple(_PACKAGES)


def time_calls(call: Callable[[], object], *, clock: str = "wall", warmup: int = 3,
               min_repeats: int = 5, max_repeats: int = 30, cv_threshold: float = 0.05,
               min_sample_s: float = 0.02) -> dict[str, float | int | str]:
    """Time ``call()`` (one inference per call): median / p10 / p90 ms over samples.

    ``number`` calls per sample so one sample lasts at least ``min_sample_s``; samples are taken
    until their coefficient of variation is under ``cv_threshold`` (or ``max_repeats``).
    """
    if clock not in ("wall", "cpu"):
        raise ValueError(f"clock must be 'wall' or 'cpu', but got {clock!r}.")
    now = time.perf_counter if clock == "wall" else time.process_time
    for _ in range(warmup):
        call()
    start = time.perf_counter()  # sizing uses the wall clock: process_time ticks coarsely
    call()
    one = max(time.perf_counter() - start, 1e-7)
    number = max(1, int(np.ceil(min_sample_s / one)))
    samples: list[float] = []
    cv = float("inf")
    while len(samples) < max_repeats:
        t = now()
        for _ in range(number):
            call()
        samples.append((now() - t) / number * 1e3)
        if len(samples) >= min_repeats:
            arr = np.asarray(samples)
            cv = float(arr.std(ddof=1) / arr.mean()) if arr.mean() > 0 else 0.0
            if cv < cv_threshold:
                break
    arr = np.asarray(samples)
    return {"median_ms": float(np.median(arr)), "p10_ms": float(np.percentile(arr, 10)),
            "p90_ms": float(np.percentile(arr, 90)), "cv": cv, "repeats": len(samples),
            "number": number, "clock": clock}


def missing(name: str) -> str | None:
    """Why runtime ``name`` cannot run in this interpreter (None: it can)."""
    if name not in _PACKAGES:
        raise ValueError(f"runtime must be one of {RUNTIMES}, but got {name!r}.")
    package = _PACKAGES[name]
    if importlib.util.find_spec(package) is None:
        return f"not installed ({package} not importable)"
    if name == "deepsparse":
        try:
            import deepsparse  # noqa: F401
        except Exception as exc:  # noqa: BLE001 - any import failure is the reason reported
            return f"not importable here ({type(exc).__name__}: {exc})"
    return None


def _onnxruntime(path: Path, x: np.ndarray, threads: int) -> tuple[Callable[[], object], str]:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = threads
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    feed = {sess.get_inputs()[0].name: x}
    return (lambda: sess.run(None, feed)[0]), f"onnxruntime-{ort.__version__}"


def _openvino(path: Path, x: np.ndarray, threads: int, sparse: bool,
              ) -> tuple[Callable[[], object], str]:
    import openvino as ov

    core = ov.Core()
    # fp32 like every other row (OpenVINO's CPU plugin would pick bf16 on CPUs that have it)
    config: dict[str, object] = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY",
                                 "NUM_STREAMS": 1, "INFERENCE_PRECISION_HINT": "f32"}
    if sparse:
        config["CPU_SPARSE_WEIGHTS_DECOMPRESSION_RATE"] = SPARSE_RATE
    compiled = core.compile_model(core.read_model(str(path)), "CPU", config)
    request = compiled.create_infer_request()
    tensor = ov.Tensor(x)

    def call() -> object:
        request.infer([tensor])
        return request.get_output_tensor(0).data

    return call, f"openvino-{ov.get_version().split('-')[0]}"


def _deepsparse(path: Path, x: np.ndarray, threads: int) -> tuple[Callable[[], object], str]:
    import deepsparse

    engine = deepsparse.compile_model(str(path), batch_size=x.shape[0], num_cores=threads)
    inputs = [x]
    return (lambda: engine.run(inputs)[0]), f"deepsparse-{deepsparse.__version__}"


def load_runtime(name: str, onnx_path: Path, x: np.ndarray, threads: int,
                 ) -> tuple[Callable[[], object], str]:
    """(a zero-argument call running one inference on ``x``, runtime version) for ``name``."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    if name == "onnxruntime":
        return _onnxruntime(onnx_path, x, threads)
    if name in ("openvino", "openvino-sparse"):
        return _openvino(onnx_path, x, threads, sparse=name == "openvino-sparse")
    if name == "deepsparse":
        return _deepsparse(onnx_path, x, threads)
    raise ValueError(f"runtime must be one of {RUNTIMES}, but got {name!r}.")


def measure_runtime(name: str, onnx_path: Path, x: np.ndarray, threads: int, clock: str,
                    ) -> tuple[dict[str, float | int | str], np.ndarray]:
    """(measurement dict incl. ``version``, output on ``x``) of runtime ``name``."""
    call, version = load_runtime(name, onnx_path, x, threads)
    out = np.array(call(), copy=True)
    result = time_calls(call, clock=clock)
    result["version"] = version
    return result, out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="time one peer runtime on one ONNX model (worker)")
    p.add_argument("--runtime", required=True, choices=RUNTIMES)
    p.add_argument("--onnx", type=Path, required=True)
    p.add_argument("--input", type=Path, required=True, help=".npy input (batch first)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--clock", choices=("wall", "cpu"), default="wall")
    p.add_argument("--output", type=Path, required=True, help=".npy file for the output")
    args = p.parse_args(argv)
    reason = missing(args.runtime)
    if reason is not None:
        print(json.dumps({"missing": reason}))
        return 0
    result, out = measure_runtime(args.runtime, args.onnx, np.load(args.input), args.threads,
                                  args.clock)
    np.save(args.output, out)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
