"""Latency of one task's subnetwork across backends and compile-time transforms.

Seeded synthetic MLP 784-2000-2000 + 10-way head; hidden layers pruned in 16x1 blocks (90% of
blocks removed) and 10% of the second layer's units dead (zero rows: what `shrink` removes).
Rows, side by side in one run at batch 1 and 64: PyTorch eager (dense-masked), ONNX Runtime
(dense-masked), TVM untuned, TVM tuned dense, TVM tuned + shrink, TVM tuned + block-sparse,
TVM tuned + shrink + block-sparse, TVM + int8 weights (hand-written int8 kernel, every linear
including the head), TVM + block-sparse + int8 (int8 block data). Every figure is measured in
this run; the roofline bound uses memory bandwidth and matmul throughput measured here too.

    python benchmarks/latency.py            # full (MetaSchedule budget --trials per workload)
    python benchmarks/latency.py --quick    # small MLP, few trials
    python benchmarks/latency.py --store mlruns/runs/NAME/store.tpk [--tasks 0 3]
                                            # every (or the given) task of a packed store
    python benchmarks/latency.py --threads 1   # runtime threads of every row (default: 1 at
                                            # batch 1; larger batches: compilers' default rule)

``benchmark_module(module, example_input, ...)`` is the hook for measuring any nn.Module (e.g. a
task loaded from a store).
"""

from __future__ import annotations

import argparse
import tempfile
import time
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
    measure,
)
from compilers.export import export_onnx
from compilers.measure import Measurement
from compilers.threads import all_cores, default_threads


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


def measured_bandwidth_gbs() -> float:
    src = np.ones(64 * 2**20 // 4, np.float32)  # 64 MiB: far beyond L3
    dst = np.empty_like(src)
    best = float("inf")
    for _ in range(5):
        t = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - t)
    return 2 * src.nbytes / best / 1e9  # read + write


def measured_peak_gflops() -> float:
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(5):
        t = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t)
    return 2 * 1024**3 / best / 1e9


def _work(model: nn.Module, batch: int) -> tuple[float, float]:
    """(weight bytes read, FLOPs) of one forward pass of what the row actually executes."""
    bytes_, flops = 0.0, 0.0
    for m in model.modules():
        if isinstance(m, nn.Linear):
            n = float(m.weight.numel())  # dense kernels read every weight, zeros included
            bytes_ += 4 * n
            flops += 2 * batch * n
        elif type(m).__name__ == "Int8Linear":
            n = float(m.qweight.numel())
            bytes_ += n + 4 * m.qweight.shape[0]  # int8 codes + one fp32 scale per row
            flops += 2 * batch * n
        elif type(m).__name__ == "BlockSparseLinear":
            n = float((m.weight != 0).sum())
            value_bytes = 4 if m.scale is None else 1  # fp32 or int8 block data
            bytes_ += value_bytes * n + 4 * n / (m.bh * m.bw)  # values + an int32 per block
            flops += 2 * batch * n
    return bytes_, flops


@dataclass
class Row:
    name: str
    m: Measurement
    bound_ms: float


def _onnx_row(model: nn.Module, x: torch.Tensor, threads: int | None) -> Measurement:
    return measure(onnx_model(model, x, threads), x)


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


def benchmark_module(
    module: nn.Module,
    example_input: torch.Tensor,
    *,
    tune_trials: int,
    cache_dir: Path,
    bandwidth_gbs: float,
    peak_gflops: float,
    threads: int | None = None,
) -> list[Row]:
    """Measure every row for one module and input; returns the rows (medians, bounds).

    ``threads``: runtime threads of every row (None: compilers' default rule per backend).
    """
    batch = example_input.shape[0]
    host, tvm = Target.host(), get_compiler("tvm")

    def bound(model: nn.Module, _sparse: bool) -> float:
        b, f = _work(model, batch)
        return max(b / (bandwidth_gbs * 1e9), f / (peak_gflops * 1e9)) * 1e3

    rows = [
        Row("PyTorch eager (dense-masked)",
            measure(get_compiler("eager").compile(module, example_input, host,
                                                  CompileOptions(threads=threads)),
                    example_input),
            bound(module, False)),
        Row("ONNX Runtime (dense-masked)", _onnx_row(module, example_input, threads),
            bound(module, False)),
    ]
    variants = [
        ("TVM untuned", (), 0, False),
        ("TVM tuned dense", (), tune_trials, False),
        ("TVM tuned + shrink", ("shrink",), tune_trials, False),
        ("TVM tuned + block-sparse", ("block_sparse",), tune_trials, True),
        ("TVM tuned + shrink + block-sparse", ("shrink", "block_sparse"), tune_trials, True),
        # int8 rows: every linear runs a hand-scheduled kernel, so there is nothing to tune.
        ("TVM + int8 weights", ("int8",), tune_trials, False),
        ("TVM + block-sparse + int8", ("block_sparse", "int8"), tune_trials, True),
    ]
    for name, transforms, trials, sparse in variants:
        compiled = tvm.compile(module, example_input, host, CompileOptions(
            transforms=transforms, tune_trials=trials, cache_dir=cache_dir, threads=threads))
        # the bound is of the module the build runs: the one transform pipeline, kernel form
        executed = apply_transforms(module, transforms)
        rows.append(Row(name, measure(compiled, example_input), bound(executed, sparse)))
        if "int8_error" in compiled.notes:
            err = compiled.notes["int8_error"]
            print(f"  {name}: int8 vs fp32 output error max abs {err['max_abs_err']:.2e}, "
                  f"rel {err['max_rel_err']:.2e} (build vs int8 eager: "
                  f"{compiled.numerics.max_rel_err if compiled.numerics else float('nan'):.1e})")
    return rows


def print_table(title: str, rows: list[Row]) -> None:
    by = {r.name: r.m.median_ms for r in rows}
    dense = by["TVM tuned dense"]
    print(f"\n{title}")
    print(f"| {'row':36s} | median ms | p10-p90 ms      | CV    | vs tuned dense | bound ms "
          "| threads |")
    print(f"|{'-' * 38}|-----------|-----------------|-------|----------------|----------"
          "|---------|")
    for r in rows:
        m = r.m
        print(f"| {r.name:36s} | {m.median_ms:9.4f} | {m.p10_ms:6.4f}-{m.p90_ms:<8.4f} | "
              f"{m.cv:5.3f} | {dense / m.median_ms:13.2f}x | {r.bound_ms:8.4f} | "
              f"{m.threads:7d} |")
    bs = by["TVM tuned + block-sparse"]
    print(f"block-sparse vs tuned dense TVM: {dense / bs:.2f}x faster; "
          f"vs ONNX Runtime dense-masked: {by['ONNX Runtime (dense-masked)'] / bs:.2f}x faster")
    i8 = by["TVM + int8 weights"]
    print(f"int8 weights vs tuned dense TVM: {dense / i8:.2f}x faster; vs PyTorch eager: "
          f"{by['PyTorch eager (dense-masked)'] / i8:.2f}x; block-sparse + int8 vs block-sparse: "
          f"{bs / by['TVM + block-sparse + int8']:.2f}x")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="small MLP, 4 trials, batch 1 only")
    p.add_argument("--trials", type=int, default=64, help="MetaSchedule trials per workload")
    p.add_argument("--cache-dir", type=Path, default=Path("mlruns/tvm-cache"))
    p.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--store", type=Path, help="measure the tasks of this packed store instead "
                   "(architecture from the recipe.yaml beside it, or --recipe)")
    p.add_argument("--recipe", type=Path)
    p.add_argument("--tasks", type=int, nargs="+", help="with --store: these tasks (default all)")
    p.add_argument("--threads", type=int, default=None,
                   help="runtime threads of every row (TVM pool, ONNX Runtime, torch); default: "
                   "1 at batch 1, larger batches per compilers' default rule")
    args = p.parse_args(argv)
    torch.set_num_threads(torch.get_num_threads())
    sizes = (784, 256, 256, 10) if args.quick else (784, 2000, 2000, 10)
    trials = 4 if args.quick else args.trials
    batches = [1] if args.quick else args.batches
    if args.store is not None:
        from pipeline.export import store_task_modules

        _, input_shape, modules = store_task_modules(args.store, args.tasks, args.recipe)
        what = f"store {args.store}, tasks {list(modules)}"
    else:
        input_shape = (sizes[0],)
        modules = {None: synthetic_mlp(sizes, density=0.1, dead=0.1, seed=args.seed)}
        what = (f"MLP {'-'.join(map(str, sizes))}, 16x1 blocks, 90% of blocks pruned, "
                "10% dead units")
    bw, peak = measured_bandwidth_gbs(), measured_peak_gflops()
    from compilers.targets import device_fingerprint

    print(f"device: {device_fingerprint()}; measured copy bandwidth {bw:.1f} GB/s, "
          f"torch matmul peak {peak:.1f} GFLOP/s; {what}; trials/workload={trials}")
    for task, model in modules.items():
        for batch in batches:
            x = torch.randn(batch, *input_shape, generator=torch.Generator().manual_seed(1))
            rows = benchmark_module(model, x, tune_trials=trials, cache_dir=args.cache_dir,
                                    bandwidth_gbs=bw, peak_gflops=peak, threads=args.threads)
            print_table(f"batch {batch}" if task is None else f"task {task}, batch {batch}",
                        rows)


if __name__ == "__main__":
    main()
