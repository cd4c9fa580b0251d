"""Latency of one task's subnetwork across backends, compile-time transforms and peer runtimes.

Models (``--model``): a seeded synthetic MLP 784-2000-2000 + 10-way head (hidden layers pruned in
16x1 blocks, 90% of blocks removed, 10% of the second layer's units dead: what `shrink`
removes), or a seeded synthetic CNN on 3x32x32 inputs (three 3x3 convs 32/64/128 channels with
ReLU and 2x2 max-pool, a 2048-256 linear, a 10-way head; every layer but the head pruned in 16x1
blocks over the (O, C*kh*kw) view, 90% of blocks removed), or (``--store``) the tasks of a store.
Rows, side by side in one run at batch 1 and 64: PyTorch eager (dense-masked), the peer runtimes
on the same pruned model exported to ONNX (ONNX Runtime, OpenVINO dense, OpenVINO with its
sparse-weights option, DeepSparse; ``benchmarks/peer_runtimes.py``), TVM untuned, TVM tuned dense,
TVM tuned + shrink, TVM tuned + block-sparse, TVM tuned + shrink + block-sparse, TVM tuned +
block-sparse + csr-sparse (unstructured layers through the CSR kernel), TVM + int8 weights
(hand-written int8 kernel, every linear including the head), TVM + block-sparse + int8 (int8
block data). A peer that is not installed gives a row saying so; the rest still run.
Every figure is measured in this run; the roofline bound uses memory bandwidth and matmul
throughput measured here too (the peak at each row's runtime threads).

Timing: **every row is one Python call per inference** (``peer_runtimes.time_calls``: input
prepared once in each runtime's own form, median of samples), wall clock by default; ``--clock
cpu`` reads the process's CPU time instead (for a machine shared with other jobs: leaves out time
spent waiting for a core; meaningful at ``--threads 1``).

    python benchmarks/latency.py            # full (MetaSchedule budget --trials per workload)
    python benchmarks/latency.py --quick    # small MLP, few trials
    python benchmarks/latency.py --model cnn --threads 1
    python benchmarks/latency.py --store mlruns/runs/NAME/store.tpk [--tasks 0 3]
                                            # every (or the given) task of a packed store
    python benchmarks/latency.py --threads 1   # runtime threads of every row, peers included
                                            # (default: 1 at batch 1; larger batches: compilers'
                                            # default rule, every core for eager and the peers)
    python benchmarks/latency.py --tvm-rows block-sparse --peers onnxruntime openvino
                                            # a subset of the rows

Peers: ``pip install -e '.[bench]'`` installs OpenVINO. DeepSparse 1.8.0 pins numpy<2, onnx<1.15
and pydantic<2.8, which taskpack's own pins exclude, so it lives in its own venv
(``make bench-deepsparse`` -> ``.venv-deepsparse``) and runs as a worker process
(``--deepsparse-python``, default ``.venv-deepsparse/bin/python`` when it exists).

``benchmark_module(module, example_input, ...)`` is the hook for measuring any nn.Module (e.g. a
task loaded from a store).
"""

from __future__ import annotations

import argparse
import functools
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from compilers import (
    CompiledModel,
    CompileOptions,
    Target,
    apply_transforms,
    get_compiler,
)
from compilers.export import export_onnx
from compilers.threads import all_cores, default_threads, torch_threads

if __package__ in (None, ""):  # run as a script: benchmarks/ is on sys.path, the repo is not
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.peer_runtimes import RUNTIMES, measure_runtime, missing, time_calls


def synthetic_mlp(sizes: tuple[int, ...], density: float, dead: float, seed: int) -> nn.Module:
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    model = nn.Sequential(*layers).eval()
    hidden = [m for m in model if isinstance(m, nn.Linear)][:-1]
    with torch.no_grad():
        for layer in hidden:
            out, inp = layer.weight.shape
            keep = torch.rand(out // 16, inp, generator=gen) < density
            layer.weight.mul_(keep.repeat_interleave(16, 0).float())
        dead_units = torch.randperm(hidden[-1].out_features, generator=gen)[
            : int(dead * hidden[-1].out_features)
        ]
        hidden[-1].weight[dead_units] = 0
        hidden[-1].bias[dead_units] = 0
    return model


def _prune_blocks(weight: torch.Tensor, density: float, gen: torch.Generator) -> None:
    """Zero 16x1 blocks of ``weight`` viewed as (out, -1), keeping a ``density`` fraction."""
    w = weight.view(weight.shape[0], -1)
    keep = torch.rand(w.shape[0] // 16, w.shape[1], generator=gen) < density
    w.mul_(keep.repeat_interleave(16, 0).float())


def synthetic_cnn(density: float, seed: int) -> nn.Module:
    """Seeded CNN on 3x32x32: three 3x3 convs (32/64/128, ReLU, 2x2 max-pool), 2048-256, head.

    Every layer but the head is pruned in 16x1 blocks of its (O, C*kh*kw) view.
    """
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(64, 128, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(128 * 4 * 4, 256), nn.ReLU(), nn.Linear(256, 10),
    ).eval()
    with torch.no_grad():
        for layer in list(model)[:-1]:
            if isinstance(layer, nn.Conv2d | nn.Linear):
                _prune_blocks(layer.weight, density, gen)
    return model


def measured_bandwidth_gbs() -> float:
    src = np.ones(64 * 2**20 // 4, np.float32)  # 64 MiB: far beyond L3
    dst = np.empty_like(src)
    best = float("inf")
    for _ in range(5):
        t = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - t)
    return 2 * src.nbytes / best / 1e9  # read + write


@functools.cache
def measured_peak_gflops(threads: int) -> float:
    """fp32 ``torch.mm`` (1024^3) GFLOP/s at ``threads`` torch threads: a row's compute bound
    uses the peak at that row's thread count (a 1-thread row against a 2-core peak would look
    twice as close to its bound as it is)."""
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    best = float("inf")
    with torch_threads(threads):
        torch.mm(a, b)
        for _ in range(5):
            t = time.perf_counter()
            torch.mm(a, b)
            best = min(best, time.perf_counter() - t)
    return 2 * 1024**3 / best / 1e9


def _work(model: nn.Module, x: torch.Tensor) -> tuple[float, float]:
    """(weight bytes read, FLOPs) of one forward pass of what the row actually executes.

    Dense kernels read every weight, zeros included; block-sparse ones the stored blocks. A conv's
    FLOPs are per output position (shapes from one forward pass with hooks).
    """
    positions: dict[nn.Module, float] = {}

    def hook(module: nn.Module, _inp: object, out: object) -> None:
        if isinstance(out, torch.Tensor):  # rows of the product: batch, or N*H_out*W_out
            positions[module] = float(out[..., 0].numel() if out.dim() == 2 else
                                      out.shape[0] * out[0, 0].numel())

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if not isinstance(m, nn.Sequential)]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    bytes_, flops = 0.0, 0.0
    for m, rows in positions.items():
        kind = type(m).__name__
        if isinstance(m, nn.Linear | nn.Conv2d):
            n = float(m.weight.numel())
            bytes_ += 4 * n
            flops += 2 * rows * n
        elif kind == "Int8Linear":
            n = float(m.qweight.numel())
            bytes_ += n + 4 * m.qweight.shape[0]  # int8 codes + one fp32 scale per row
            flops += 2 * rows * n
        elif kind in ("BlockSparseLinear", "BlockSparseConv2d"):
            n = float((m.weight != 0).sum())
            value_bytes = 4 if getattr(m, "scale", None) is None else 1  # fp32 or int8 blocks
            bytes_ += value_bytes * n + 4 * n / (m.bh * m.bw)  # values + an int32 per block
            flops += 2 * rows * n
    return bytes_, flops


@dataclass
class Row:
    """One row: a measurement (ms dict of ``time_calls``) or the reason it was skipped."""

    name: str
    timing: dict[str, float | int | str] | None
    bound_ms: float | None
    threads: int
    skipped: str = ""

    @property
    def median_ms(self) -> float:
        return float(self.timing["median_ms"]) if self.timing else float("nan")


def onnx_model(model: nn.Module, x: torch.Tensor,
               threads: int | None = None) -> CompiledModel:
    """``model`` exported to ONNX and loaded in an ONNX Runtime CPU session, timed like a build.

    The session runs ``threads`` intra- and inter-op threads (None: 1 at batch 1, else every
    core, like the eager backend).
    """
    import onnxruntime as ort

    threads = threads or default_threads(x) or all_cores()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m.onnx"
        export_onnx(model, x, path)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = threads
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    feed = {"input": x.numpy()}

    class OrtModel(CompiledModel):
        def run(self, inp: torch.Tensor) -> torch.Tensor:
            return torch.from_numpy(sess.run(None, {"input": inp.numpy()})[0])

        def time_per_run(self, inp: torch.Tensor, number: int) -> float:
            t = time.perf_counter()
            for _ in range(number):
                sess.run(None, feed)
            return (time.perf_counter() - t) / number

    return OrtModel(backend="onnxruntime", target=Target.host(), input_shape=tuple(x.shape),
                    compiler_version=f"onnxruntime-{ort.__version__}", key="ort",
                    threads=threads)


TVM_ROWS: dict[str, tuple[tuple[str, ...], bool]] = {  # key -> (transforms, tuned)
    "untuned": ((), False),
    "dense": ((), True),
    "shrink": (("shrink",), True),
    "block-sparse": (("block_sparse",), True),
    "shrink+block-sparse": (("shrink", "block_sparse"), True),
    # unstructured layers through the CSR kernel, block-structured ones through BSR
    "block-sparse+csr": (("block_sparse", "csr_sparse"), True),
    # int8 rows: every linear runs a hand-scheduled kernel, so there is nothing to tune.
    "int8": (("int8",), True),
    "block-sparse+int8": (("block_sparse", "int8"), True),
}
TVM_ROW_NAMES = {
    "untuned": "TVM untuned", "dense": "TVM tuned dense", "shrink": "TVM tuned + shrink",
    "block-sparse": "TVM tuned + block-sparse",
    "shrink+block-sparse": "TVM tuned + shrink + block-sparse",
    "block-sparse+csr": "TVM tuned + block-sparse + csr-sparse",
    "int8": "TVM + int8 weights", "block-sparse+int8": "TVM + block-sparse + int8",
}
PEER_NAMES = {
    "onnxruntime": "ONNX Runtime (dense-masked)",
    "openvino": "OpenVINO (dense-masked)",
    "openvino-sparse": "OpenVINO sparse-weights option",
    "deepsparse": "DeepSparse (pruned ONNX)",
}
PEER_OPSET = 17  # one ONNX file for every peer; DeepSparse 1.8 loads opset <= 19 only
DEFAULT_DEEPSPARSE_PYTHON = Path(".venv-deepsparse/bin/python")


def _peer_in_worker(name: str, python: Path, onnx_path: Path, x: np.ndarray, threads: int,
                    clock: str, tmp: Path) -> tuple[dict | None, np.ndarray | None, str]:
    """Run ``peer_runtimes.py`` as a worker under ``python``: (timing, output, skip reason)."""
    inp, out = tmp / f"{name}-in.npy", tmp / f"{name}-out.npy"
    np.save(inp, x)
    cmd = [str(python), str(Path(__file__).with_name("peer_runtimes.py")), "--runtime", name,
           "--onnx", str(onnx_path), "--input", str(inp), "--threads", str(threads),
           "--clock", clock, "--output", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return None, None, f"worker {python} failed: {tail[:160]}"
    result = json.loads(lines[-1])
    if "missing" in result:
        return None, None, f"{result['missing']} under {python}"
    return result, np.load(out), ""


def peer_rows(module: nn.Module, x: torch.Tensor, threads: int, peers: Sequence[str],
              clock: str, deepsparse_python: Path | None) -> list[Row]:
    """One row per peer runtime on ``module`` exported to ONNX (a row says why it skipped)."""
    rows: list[Row] = []
    with torch.no_grad():
        ref = module(x).numpy()
    with tempfile.TemporaryDirectory(prefix="taskpack-peers-") as tmp_name:
        tmp = Path(tmp_name)
        onnx_path = tmp / "model.onnx"
        export_onnx(module, x, onnx_path, opset=PEER_OPSET)
        for name in peers:
            label = PEER_NAMES[name]
            reason = missing(name)
            if reason is None:
                timing, out = measure_runtime(name, onnx_path, x.numpy(), threads, clock)
            elif name == "deepsparse" and deepsparse_python is not None:
                timing, out, reason = _peer_in_worker(name, deepsparse_python, onnx_path,
                                                      x.numpy(), threads, clock, tmp)
            else:
                timing, out = None, None
            if timing is None or out is None:
                rows.append(Row(label, None, None, threads, skipped=reason or "skipped"))
                continue
            err = float(np.abs(out - ref).max() / max(np.abs(ref).max(), 1e-12))
            if err > 1e-3:  # a runtime that computes something else is not a latency row
                rows.append(Row(label, None, None, threads,
                                skipped=f"output differs from eager (max rel err {err:.1e})"))
                continue
            rows.append(Row(f"{label} [{timing['version']}]", timing, None, threads))
    return rows


def benchmark_module(
    module: nn.Module,
    example_input: torch.Tensor,
    *,
    tune_trials: int,
    cache_dir: Path,
    bandwidth_gbs: float,
    peak_gflops: Callable[[int], float],
    threads: int | None = None,
    peers: Sequence[str] = RUNTIMES,
    tvm_rows: Sequence[str] = tuple(TVM_ROWS),
    clock: str = "wall",
    deepsparse_python: Path | None = None,
) -> list[Row]:
    """Measure every row for one module and input; returns the rows (medians, bounds).

    ``threads``: runtime threads of every row (None: compilers' default rule per backend; the
    peers: 1 at batch 1, else every core). All rows are timed by ``time_calls`` with ``clock``.
    """
    host, tvm = Target.host(), get_compiler("tvm")
    peer_threads = threads or default_threads(example_input) or all_cores()

    def bound(model: nn.Module, row_threads: int) -> float:
        b, f = _work(model, example_input)
        return max(b / (bandwidth_gbs * 1e9), f / (peak_gflops(row_threads) * 1e9)) * 1e3

    eager = get_compiler("eager").compile(module, example_input, host,
                                          CompileOptions(threads=threads))
    rows = [Row("PyTorch eager (dense-masked)", _time(lambda: eager.run(example_input), clock),
                bound(module, eager.threads), eager.threads)]
    rows += peer_rows(module, example_input, peer_threads, peers, clock, deepsparse_python)
    for key in tvm_rows:
        transforms, tuned = TVM_ROWS[key]
        name = TVM_ROW_NAMES[key]
        compiled = tvm.compile(module, example_input, host, CompileOptions(
            transforms=transforms, tune_trials=tune_trials if tuned else 0, cache_dir=cache_dir,
            threads=threads))
        # the bound is of the module the build runs: the one transform pipeline, kernel form
        executed = apply_transforms(module, transforms)
        rows.append(Row(name, _time(compiled.bind(example_input), clock),
                        bound(executed, compiled.threads), compiled.threads))
        if "int8_error" in compiled.notes:
            err = compiled.notes["int8_error"]
            print(f"  {name}: int8 vs fp32 output error max abs {err['max_abs_err']:.2e}, "
                  f"rel {err['max_rel_err']:.2e} (build vs int8 eager: "
                  f"{compiled.numerics.max_rel_err if compiled.numerics else float('nan'):.1e})")
    return rows


def _time(call: Callable[[], object], clock: str) -> dict[str, float | int | str]:
    return time_calls(call, clock=clock)


def print_table(title: str, rows: list[Row]) -> None:
    by = {r.name: r.median_ms for r in rows if r.timing}
    dense = by.get("TVM tuned dense", float("nan"))
    clock = next((str(r.timing["clock"]) for r in rows if r.timing), "wall")

    def vs_dense(ms: float) -> str:
        return f"{dense / ms:13.2f}x" if dense == dense else f"{'-':>14s}"

    print(f"\n{title} (one Python call per inference, {clock} clock)")
    print(f"| {'row':58s} | median ms | p10-p90 ms        | CV    | vs tuned dense | bound ms "
          "| threads |")
    print(f"|{'-' * 60}|-----------|-------------------|-------|----------------|----------"
          "|---------|")
    for r in rows:
        if r.timing is None:
            print(f"| {r.name:58s} | skipped: {r.skipped}")
            continue
        t = r.timing
        bound = f"{r.bound_ms:8.4f}" if r.bound_ms is not None else f"{'-':>8s}"
        print(f"| {r.name:58s} | {r.median_ms:9.4f} | {t['p10_ms']:7.4f}-{t['p90_ms']:<9.4f} | "
              f"{t['cv']:5.3f} | {vs_dense(r.median_ms)} | {bound} | {r.threads:7d} |")
    bs = by.get("TVM tuned + block-sparse")
    peers = {n: v for n, v in by.items() if n.split(" [")[0] in PEER_NAMES.values()}
    if bs is not None and peers:
        fastest = min(peers, key=peers.__getitem__)
        ratio = peers[fastest] / bs
        print(f"block-sparse vs the fastest peer ({fastest}): {ratio:.2f}x "
              f"({'faster' if ratio >= 1 else 'slower'})")
        bound_ms = next((r.bound_ms for r in rows if r.name == "TVM tuned + block-sparse"), None)
        if bound_ms:  # the most any kernel doing the row's FLOPs over its bytes could reach
            print(f"  ceiling: at its roofline bound ({bound_ms:.4f} ms) block-sparse would be "
                  f"{peers[fastest] / bound_ms:.2f}x the fastest peer")
    if bs is not None and dense == dense:
        print(f"block-sparse vs tuned dense TVM: {dense / bs:.2f}x faster")
    i8 = by.get("TVM + int8 weights")
    if i8 is not None and dense == dense:
        print(f"int8 weights vs tuned dense TVM: {dense / i8:.2f}x faster; vs PyTorch eager: "
              f"{by['PyTorch eager (dense-masked)'] / i8:.2f}x")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="small MLP, 4 trials, batch 1 only")
    p.add_argument("--model", choices=("mlp", "cnn"), default="mlp",
                   help="synthetic model (ignored with --store)")
    p.add_argument("--trials", type=int, default=64, help="MetaSchedule trials per workload")
    p.add_argument("--cache-dir", type=Path, default=Path("mlruns/tvm-cache"))
    p.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--store", type=Path, help="measure the tasks of this packed store instead "
                   "(architecture from the recipe.yaml beside it, or --recipe)")
    p.add_argument("--recipe", type=Path)
    p.add_argument("--tasks", type=int, nargs="+", help="with --store: these tasks (default all)")
    p.add_argument("--threads", type=int, default=None,
                   help="runtime threads of every row (TVM pool, torch, every peer); default: "
                   "1 at batch 1, larger batches per compilers' default rule")
    p.add_argument("--peers", nargs="*", choices=RUNTIMES, default=list(RUNTIMES),
                   help="peer runtimes to measure (default: all; a missing one is a skipped row)")
    p.add_argument("--tvm-rows", nargs="*", choices=tuple(TVM_ROWS), default=list(TVM_ROWS),
                   help="TVM builds to measure (default: all)")
    p.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                   help="wall clock (default) or the process's CPU time (shared machines)")
    p.add_argument("--deepsparse-python", type=Path, default=None,
                   help="python of a venv with deepsparse==1.8.0, run as a worker when DeepSparse "
                   f"cannot import here (default: {DEFAULT_DEEPSPARSE_PYTHON} if it exists)")
    args = p.parse_args(argv)
    if args.threads is not None and args.threads < 1:
        p.error(f"--threads must be >= 1, but got {args.threads}")
    ds_python = args.deepsparse_python
    if ds_python is None and DEFAULT_DEEPSPARSE_PYTHON.is_file():
        ds_python = DEFAULT_DEEPSPARSE_PYTHON
    if ds_python is not None and not ds_python.is_file():
        p.error(f"--deepsparse-python {ds_python}: no such file")
    torch.set_num_threads(torch.get_num_threads())
    sizes = (784, 256, 256, 10) if args.quick else (784, 2000, 2000, 10)
    trials = 4 if args.quick else args.trials
    batches = [1] if args.quick else args.batches
    if args.store is not None:
        from pipeline.errors import TaskpackError
        from pipeline.export import store_task_modules

        try:
            _, input_shape, modules = store_task_modules(args.store, args.tasks, args.recipe)
        except TaskpackError as e:  # a damaged store, a missing recipe: one line, exit 2
            print(f"error: {e}", file=sys.stderr)
            raise SystemExit(2) from None
        what = f"store {args.store}, tasks {list(modules)}"
    elif args.model == "cnn":
        input_shape = (3, 32, 32)
        modules = {None: synthetic_cnn(density=0.1, seed=args.seed)}
        what = ("CNN 3x32x32 conv32-conv64-conv128 (3x3, pool 2) 2048-256-10, 16x1 blocks over "
                "(O, C*kh*kw), 90% of blocks pruned")
    else:
        input_shape = (sizes[0],)
        modules = {None: synthetic_mlp(sizes, density=0.1, dead=0.1, seed=args.seed)}
        what = (f"MLP {'-'.join(map(str, sizes))}, 16x1 blocks, 90% of blocks pruned, "
                "10% dead units")
    bw = measured_bandwidth_gbs()
    peaks = ", ".join(f"{measured_peak_gflops(n):.1f} at {n} thread(s)"
                      for n in sorted({1, all_cores()}))
    from compilers.targets import device_fingerprint

    print(f"device: {device_fingerprint()}; measured copy bandwidth {bw:.1f} GB/s, "
          f"torch matmul peak {peaks} GFLOP/s; {what}; trials/workload={trials}")
    for task, model in modules.items():
        for batch in batches:
            x = torch.randn(batch, *input_shape, generator=torch.Generator().manual_seed(1))
            rows = benchmark_module(model, x, tune_trials=trials, cache_dir=args.cache_dir,
                                    bandwidth_gbs=bw, peak_gflops=measured_peak_gflops,
                                    threads=args.threads,
                                    peers=args.peers, tvm_rows=args.tvm_rows, clock=args.clock,
                                    deepsparse_python=ds_python)
            print_table(f"batch {batch}" if task is None else f"task {task}, batch {batch}",
                        rows)


if __name__ == "__main__":
    main()
