"""Latency of a candidate, measured on the model compiled for the recipe's target.

Results are cached by the compilers' ``structure_key`` (layer types, shapes and zero patterns,
not weight values) plus target (its runtime threads included), transforms and the runtime threads
the build resolved, in memory and in a JSON file next to the tuning database, so a structure
measured once costs nothing again, in this process or after a resume. The module is prepared by
the compiler itself (``compilers.transforms.apply_transforms``), with the target's transforms on
every backend.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pipeline._atomic import atomic_write
from search._objective import Latency, LatencyFn

log = logging.getLogger(__name__)

# transforms that rewrite an nn.Sequential chain only (compilers.transforms)
CHAIN_ONLY_TRANSFORMS = ("shrink", "block_sparse", "csr_sparse")


def compiled_latency(target_cfg, cache_dir: Path) -> LatencyFn:
    """A LatencyFn compiling with the target's backend, transforms and tuning budget."""
    from compilers import CompileOptions, get_compiler, measure
    from compilers.hashing import structure_key
    from pipeline.targets import to_target

    target = to_target(target_cfg)
    compiler = get_compiler(target_cfg.backend)
    options = CompileOptions(transforms=tuple(target_cfg.transforms),
                             tune_trials=target_cfg.tune_trials, cache_dir=cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    table = cache_dir / "latency-cache.json"
    cache: dict[str, dict] = json.loads(table.read_text()) if table.exists() else {}

    def latency(module: nn.Module, example: torch.Tensor) -> Latency:
        key = structure_key(module, example, target, options.transforms, backend=compiler.name,
                            tune_trials=options.tune_trials)
        if key in cache:
            return replace(Latency(**cache[key]), cached=True, seconds=0.0)
        start = time.perf_counter()
        compiled = compiler.compile(module, example, target, options)
        m = measure(compiled, example)
        notes: dict[str, Any] = compiled.notes or {}
        result = Latency(m.median_ms, m.p90_ms, tuned=m.tuned,
                         seconds=time.perf_counter() - start,
                         workloads=len(notes.get("schedules", {})),
                         workloads_tuned=int(notes.get("workloads_tuned", 0)),
                         threads=m.threads)
        log.debug("latency %.4f ms at %d threads (%s)", m.median_ms, m.threads, key)
        cache[key] = asdict(result)
        atomic_write(table, lambda f: f.write(json.dumps(cache).encode()))
        return result

    return latency


def realizability_labels(target_cfg, shapes: dict[str, tuple[int, ...]], chain: bool = True):
    """plans -> {layer: "speed-realizable" | "storage-only"} on the target (compilers' rule).

    ``chain``: whether the task's subnetwork is a plain chain of layers
    (:func:`pipeline.subnet.is_chain`); the shape and sparse transforms (shrink, block_sparse,
    csr_sparse) rewrite only chains, so for any other net (the reduced ResNet) they realize
    nothing and are left out.
    """
    from compilers import LayerSpec, layer_realizability
    from pipeline.recipe import Pattern
    from pipeline.targets import to_target

    target = to_target(target_cfg)
    transforms = tuple(target_cfg.transforms) if chain else tuple(
        t for t in target_cfg.transforms if t not in CHAIN_ONLY_TRANSFORMS)

    def labels(plans) -> dict[str, str]:
        out: dict[str, str] = {}
        for name, plan in plans.items():
            shape = shapes[name]
            pattern = Pattern.parse(plan.pattern)
            spec = LayerSpec(kind="linear" if len(shape) == 2 else "conv2d",
                             out_features=shape[0], in_features=int(math.prod(shape[1:])),
                             sparsity=plan.sparsity, pattern=pattern.kind,  # type: ignore[arg-type]
                             block=(pattern.a, pattern.b) if pattern.kind == "block" else None,
                             bits=plan.bits)
            out[name] = layer_realizability(spec, target, transforms)
        return out

    return labels
