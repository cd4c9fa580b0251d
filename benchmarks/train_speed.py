"""Training speed: taskpack's masked training against a plain dense PyTorch loop, in one run.

    .venv/bin/python -m benchmarks.train_speed [--device cpu|cuda] [--threads 1 2]
        [--configs mlp2000 mlp100 cnn] [--examples N] [--epochs E] [--out FILE.json]

(the CNN's task is 5 classes of CIFAR-100's size, random images: 2,250 training examples at most)

Per configuration (architecture, batch), device and thread count, one task (task 0 of the
stream) is trained for ``--epochs`` epochs over ``--examples`` training examples by

- ``dense``: a plain PyTorch loop: the same layers as ``nn.Linear`` / ``nn.Conv2d`` without
  masks, the same optimizer (fused Adam), batches, example order and per-epoch validation pass;
- ``wsn``: taskpack's training loop with WSN (top-c masks from scores every step), with the
  fused CPU kernels (``pipeline/models/_kernels.c``) and, on the CPU, again without them
  (``wsn-torch``: ``TASKPACK_KERNELS=torch``, the same numerics from torch ops);
- ``tsn``: the same training with TSN, then its compression passes (pruning steps with
  validation, fine-tuning, k-means per bit-width) with the recipe's settings, timed apart. Their
  share is of a task of this benchmark's size: the passes evaluate the full validation split
  (10 % of the training data) ~16 times, so with ``--examples`` far below the task's training
  set the share is far above a real run's (``benchmarks/pmnist.py`` prints the real one);
- on CUDA also ``wsn-bf16`` (autocast) and ``wsn-compile`` (``train.compile``).

It prints steady seconds per epoch (the mean of the epochs after the first), the ratio to the
dense loop, the analytic FLOPs per epoch (``torch.utils.flop_counter`` on one training step of
the dense model, times the steps, plus the validation forward), the throughput they imply and
the machine's measured matmul peak (fp32 ``torch.mm``; bf16 too on CUDA), so the table shows
the distance to the compute floor.
Epochs early-stop never: the lr schedule is disabled (patience above the epochs).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.compress import PlanCompressor  # noqa: E402
from pipeline.data import Task  # noqa: E402
from pipeline.data.testing import write_fake_cifar100  # noqa: E402
from pipeline.models import ContinualNet, MaskedConv2d, MaskedLinear, kernel_name  # noqa: E402
from pipeline.models._topc import threshold  # noqa: E402
from pipeline.progress import QUIET  # noqa: E402
from pipeline.recipe import Recipe, recipe_from_dict  # noqa: E402
from pipeline.runner import prepare  # noqa: E402
from pipeline.session import Session, TaskContext  # noqa: E402
from pipeline.stages import stage_train  # noqa: E402
from pipeline.tracking import NoopTracker  # noqa: E402
from pipeline.train import make_optimizer  # noqa: E402

# the PMNIST-10 recipe's compression settings (recipes/pmnist-mlp2000.yaml)
TSN = {"kind": "tsn", "density": 0.15, "policy": "split",
       "prune": {"delta": 0.1, "steps": 20, "step_fraction": 0.2, "finetune_epochs": 1},
       "quantize": {"bits": [2, 3, 4, 6, 8], "delta": 0.1}}
CONFIGS: dict[str, dict[str, Any]] = {
    "mlp2000": {"model": {"arch": "mlp", "hidden": [2000, 2000]}, "batch": 128,
                "stream": "permuted_mnist", "recipe_epochs": 8},
    "mlp100": {"model": {"arch": "mlp", "hidden": [100, 100]}, "batch": 10,
               "stream": "permuted_mnist", "recipe_epochs": 8},
    # the seeds' reduced ResNet-18 (width 20) on 32x32 colour images, 5 classes a task
    "cnn": {"model": {"arch": "resnet18", "width": 20, "norm": "per_task"}, "batch": 64,
            "stream": "split_cifar100", "recipe_epochs": 8, "max_examples": 2250},
}


def recipe_for(name: str, method: dict, device: str, threads: int, examples: int, epochs: int,
               out: Path, **train: Any) -> Recipe:
    c = CONFIGS[name]
    limit = min(examples, c.get("max_examples", examples))
    bench: dict[str, Any] = {"stream": c["stream"], "tasks": 1, "train_limit": limit,
                             "val_fraction": 0.1, "test_limit": 1000}
    if c["stream"] == "split_cifar100":
        bench |= {"classes_per_task": 5, "data_dir": str(out / "cifar")}
    return recipe_from_dict({
        "name": f"speed-{name}", "output_dir": str(out / "runs"), "benchmark": bench,
        "model": c["model"], "method": method,
        "compression": {"default": {"sparsity": 0.6, "pattern": "unstructured", "bits": 8}},
        "train": {"epochs": epochs, "patience": epochs + 1, "lr": 1e-3, "lr_min": 1e-9,
                  "batch_size": c["batch"], "eval_batch_size": 1000, "device": device,
                  "threads": threads, **train},
    })


def plain_copy(model: ContinualNet) -> nn.Module:
    """The model with every masked layer replaced by its plain torch layer (same weights)."""
    plain = copy.deepcopy(model)
    for parent in plain.modules():
        for key, child in list(parent.named_children()):
            if isinstance(child, MaskedLinear):
                lin = nn.Linear(child.in_features, child.out_features, bias=False)
                lin.weight = nn.Parameter(child.weight.detach().clone())
                setattr(parent, key, lin)
            elif isinstance(child, MaskedConv2d):
                conv = nn.Conv2d(child.in_channels, child.out_channels, child.kernel_size,
                                 child.stride, child.padding, bias=False)
                conv.weight = nn.Parameter(child.weight.detach().clone())
                setattr(parent, key, conv)
    return plain.to(next(model.parameters()).device)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def steady(per_epoch: list[float]) -> float:
    """Seconds per epoch after the first (warm-up: allocator, cuBLAS handles, compilation)."""
    rest = per_epoch[1:] or per_epoch
    return sum(rest) / len(rest)


def dense_epochs(s: Session, task: Task, epochs: int) -> float:
    """Steady seconds per epoch of the plain loop (train steps + a validation pass per epoch)."""
    cfg = s.recipe.train
    model = plain_copy(s.model)
    opt = make_optimizer([{"params": list(model.parameters())}], cfg)
    gen = torch.Generator().manual_seed(0)
    x, y, on = task.train.x, task.train.y, task.train.x.device
    per_epoch = []
    for _ in range(epochs):
        start = time.perf_counter()
        model.train()
        order = torch.randperm(len(y), generator=gen).to(on)
        for i in range(0, len(order), cfg.batch_size):
            idx = order[i:i + cfg.batch_size]
            loss = F.cross_entropy(model(x[idx], 0), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            for i in range(0, len(task.val), cfg.eval_batch_size):
                model(task.val.x[i:i + cfg.eval_batch_size], 0)
        float(loss.detach())  # the host reads the loss once an epoch (a sync)
        per_epoch.append(time.perf_counter() - start)
    return steady(per_epoch)


def flops_per_epoch(s: Session, task: Task) -> float:
    """Analytic FLOPs of one epoch: training steps (forward + backward) + validation forward."""
    cfg = s.recipe.train
    model = plain_copy(s.model)
    x, y = task.train.x[:cfg.batch_size], task.train.y[:cfg.batch_size]
    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(model(x, 0), y).backward()
    step = counter.get_total_flops() / len(x)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(task.val.x[:cfg.eval_batch_size], 0)
    fwd = counter.get_total_flops() / min(len(task.val), cfg.eval_batch_size)
    return step * len(task.train) + fwd * len(task.val)


def masked_epochs(s: Session, task: Task, compress: bool) -> tuple[float, float]:
    """(seconds per training epoch, seconds of the compression passes) of one taskpack task."""
    sync(s.device.device)
    report, _ = stage_train(s, task, QUIET)
    if not compress:
        return steady(report.epoch_seconds), 0.0
    masks = s.method.end_task(task.index)
    run = NoopTracker().start("speed")
    sync(s.device.device)
    start = time.perf_counter()
    PlanCompressor().compress(s, TaskContext(task, masks, QUIET, run))
    sync(s.device.device)
    return steady(report.epoch_seconds), time.perf_counter() - start


def matmul_peak(device: torch.device, dtype: torch.dtype) -> float:
    """FLOP/s of the best of five timed square matmuls (fp32: TF32 off)."""
    n = 8192 if device.type == "cuda" else 1024
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    reps = 10 if device.type == "cuda" else 3
    best = float("inf")
    for _ in range(6):
        sync(device)
        start = time.perf_counter()
        for _ in range(reps):
            a @ b
        sync(device)
        best = min(best, (time.perf_counter() - start) / reps)
    return 2 * n**3 / best


def profile_step(name: str, threads: int, out: Path, reps: int = 20) -> dict[str, float]:
    """Milliseconds of the pieces of one WSN training step next to a dense step (CPU, one
    batch of the config's size): where the gap to the dense loop goes."""
    import statistics

    recipe = recipe_for(name, {"kind": "wsn", "density": 0.15}, "cpu", threads, 640, 1, out)
    s = prepare(recipe, fresh=True)
    task = s.load_task(0)
    s.model.add_task(task.num_classes)
    x, y = task.train.x[:recipe.train.batch_size], task.train.y[:recipe.train.batch_size]
    phase = next(iter(s.method.phases(0)))
    phase.mode.apply(s.model)
    opt = make_optimizer(phase.param_groups, recipe.train)
    dense = plain_copy(s.model)
    dense_opt = make_optimizer([{"params": list(dense.parameters())}], recipe.train)
    layers = list(s.model.masked_layers().values())

    def ms(fn: Any) -> float:
        fn()
        times = []
        for _ in range(reps):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return 1e3 * statistics.median(times)

    s.model.set_frozen(phase.frozen)  # the gate of earlier tasks' positions, in backward

    def wsn_step() -> None:
        loss = F.cross_entropy(s.model(x, 0), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        s.method.after_backward(0)
        opt.step()

    def dense_step() -> None:
        loss = F.cross_entropy(dense(x, 0), y)
        dense_opt.zero_grad(set_to_none=True)
        loss.backward()
        dense_opt.step()

    def fwd_bwd() -> None:
        loss = F.cross_entropy(s.model(x, 0), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()

    parts = {"dense step": ms(dense_step), "dense optimizer": ms(dense_opt.step)}
    for kernels in ("fused", "torch"):
        with kernels_set(kernels):
            parts |= {
                f"[{kernels}] wsn step": ms(wsn_step),
                f"[{kernels}] wsn forward+backward (gate included)": ms(fwd_bwd),
                # with the layer's hint, as in training (a step moves scores a little: the
                # repeated call here finds the threshold in the band at once)
                f"[{kernels}] of which top-c thresholds":
                    ms(lambda: [threshold(m.score, 0.15, m.hint) for m in layers]),
                f"[{kernels}] of which top-c thresholds, no hint (full select)":
                    ms(lambda: [threshold(m.score, 0.15) for m in layers]),
            }
    parts["wsn optimizer (weights + scores)"] = ms(opt.step)
    s.model.set_frozen(None)
    return parts


@contextlib.contextmanager
def kernels_set(kernels: str) -> Iterator[None]:
    """``fused``: the C kernels of masked training (when built); ``torch``: torch ops only."""
    before = os.environ.pop("TASKPACK_KERNELS", None)
    if kernels == "torch":
        os.environ["TASKPACK_KERNELS"] = "torch"
    try:
        yield
    finally:
        os.environ.pop("TASKPACK_KERNELS", None)
        if before is not None:
            os.environ["TASKPACK_KERNELS"] = before


def variants(device: str) -> list[tuple[str, dict, dict, bool, str]]:
    """(row name, method section, extra train settings, run the compression passes, kernels)."""
    wsn = {"kind": "wsn", "density": 0.15}
    rows = [("wsn", wsn, {}, False, "fused"), ("tsn", TSN, {}, True, "fused")]
    if device == "cpu":
        rows += [("wsn-torch", wsn, {}, False, "torch")]
    if device == "cuda":
        rows += [("wsn-bf16", wsn, {"precision": "bf16"}, False, "fused"),
                 ("wsn-compile", wsn, {"compile": True}, False, "fused")]
    return rows


def bench_one(name: str, device: str, threads: int, examples: int, epochs: int,
              out: Path) -> list[dict]:
    rows = []
    base = recipe_for(name, {"kind": "wsn", "density": 0.15}, device, threads, examples,
                      epochs, out)
    s = prepare(base, fresh=True)
    task = s.load_task(0)
    s.model.add_task(task.num_classes)
    flops = flops_per_epoch(s, task)
    dense = dense_epochs(s, task, epochs)
    common = {"config": name, "device": device, "threads": threads,
              "batch": base.train.batch_size, "examples": len(task.train),
              "flops_per_epoch": flops}
    rows.append({**common, "variant": "dense", "s_per_epoch": dense, "ratio": 1.0})
    print(_line(rows[-1]), flush=True)
    for variant, method, extra, compress, kernels in variants(device):
        recipe = recipe_for(name, method, device, threads, examples, epochs, out, **extra)
        s = prepare(recipe, fresh=True)
        with kernels_set(kernels):
            per_epoch, comp = masked_epochs(s, s.load_task(0), compress)
        row = {**common, "variant": variant, "s_per_epoch": per_epoch,
               "ratio": per_epoch / dense}
        if compress:
            recipe_epochs = CONFIGS[name]["recipe_epochs"]
            row |= {"compress_s": comp, "compress_share_at_recipe_epochs":
                    comp / (comp + recipe_epochs * per_epoch), "recipe_epochs": recipe_epochs}
        rows.append(row)
        print(_line(row), flush=True)
    return rows


def _line(r: dict) -> str:
    tput = r["flops_per_epoch"] / r["s_per_epoch"] / 1e9
    extra = ""
    if "compress_s" in r:
        extra = (f" | compress {r['compress_s']:.2f} s = "
                 f"{100 * r['compress_share_at_recipe_epochs']:.1f}% of a "
                 f"{r['recipe_epochs']}-epoch task of {r['examples']:,} training examples")
    return (f"| {r['config']} | b{r['batch']} | {r['device']} | {r['threads']} | "
            f"{r['variant']} | {r['s_per_epoch']:.3f} | {r['ratio']:.2f}x | "
            f"{r['flops_per_epoch'] / 1e9:.1f} | {tput:.1f}{extra} |")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--configs", nargs="+", choices=list(CONFIGS), default=list(CONFIGS))
    p.add_argument("--examples", type=int, default=6400,
                   help="training examples per epoch (the rest of the task is not loaded)")
    p.add_argument("--epochs", type=int, default=3,
                   help="epochs per row; the first is warm-up, the rest are averaged")
    p.add_argument("--out", type=Path, default=None, help="write the rows as JSON here")
    p.add_argument("--profile", action="store_true",
                   help="CPU: time the pieces of one WSN step next to a dense step instead")
    args = p.parse_args(argv)
    if args.profile:
        with tempfile.TemporaryDirectory() as tmp:
            for threads in args.threads:
                torch.set_num_threads(threads)
                for name in (c for c in args.configs if c != "cnn"):
                    parts = profile_step(name, threads, Path(tmp))
                    print(f"# {name}, batch {CONFIGS[name]['batch']}, {threads} thread(s), "
                          "median ms of 20")
                    for k, v in parts.items():
                        print(f"| {k} | {v:.2f} |")
        return 0
    dev = torch.device(args.device)
    rows: list[dict] = []
    peaks = {}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        if "cnn" in args.configs:  # random images the size of CIFAR-100 (500 a class)
            write_fake_cifar100(out / "cifar", train_per_class=500, test_per_class=100)
        print(f"# {platform.machine()}, torch {torch.__version__}, device {args.device}, "
              f"masked-training kernels: {kernel_name()}"
              + (f" ({torch.cuda.get_device_name(dev)})" if dev.type == "cuda" else ""))
        print("| config | batch | device | threads | variant | s/epoch | vs dense | "
              "GFLOP/epoch | GFLOP/s |")
        print("|---|---|---|---|---|---|---|---|---|")
        for threads in args.threads:
            torch.set_num_threads(threads)
            torch.backends.cuda.matmul.allow_tf32 = False
            peaks[f"fp32@{threads}"] = matmul_peak(dev, torch.float32)
            if dev.type == "cuda":
                peaks["bf16"] = matmul_peak(dev, torch.bfloat16)
            for name in args.configs:
                rows.extend(bench_one(name, args.device, threads, args.examples, args.epochs,
                                      out))
    for k, v in peaks.items():
        print(f"# matmul peak {k}: {v / 1e9:.1f} GFLOP/s")
    if args.out:
        args.out.write_text(json.dumps({"rows": rows, "peaks": peaks}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
