"""The measurement protocol: warm-up, calibrated repeats until the spread is small, robust stats.

One *sample* is the mean time of ``number`` back-to-back runs, with ``number`` calibrated so a
sample lasts at least ``min_sample_ms`` (timer resolution and call overhead stop mattering).
Samples are taken until their coefficient of variation drops below ``cv_threshold`` (after at
least ``min_repeats``) or ``max_repeats`` is reached; ``converged`` says which happened.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch

from ._base import CompiledModel
from .numerics import fixed_inputs
from .targets import device_fingerprint

__all__ = ["Measurement", "measure"]

_CACHE: dict[tuple, Measurement] = {}


@dataclass(frozen=True)
class Measurement:
    median_ms: float
    p10_ms: float
    p90_ms: float
    cv: float
    repeats: int
    number: int
    converged: bool
    backend: str
    target: str
    target_kind: str
    device: str
    compiler_version: str
    tuned: bool
    tuning_db_hash: str | None
    transforms: tuple[str, ...]
    input_shape: tuple[int, ...]
    key: str
    threads: int  # runtime threads the model ran with (part of what the figure means)

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def _fingerprint(compiled: CompiledModel) -> str:
    t = compiled.target
    if t.kind == "rpc":
        return f"rpc key={t.rpc_key} via {t.rpc_host}:{t.rpc_port} ({t.remote_arch})"
    return device_fingerprint()


def measure(
    compiled: CompiledModel,
    inputs: torch.Tensor | None = None,
    *,
    warmup: int = 3,
    min_repeats: int = 5,
    max_repeats: int = 40,
    cv_threshold: float = 0.05,
    min_sample_ms: float = 20.0,
    use_cache: bool = False,
) -> Measurement:
    """Time ``compiled`` on ``inputs`` (default: a seeded input of its shape)."""
    if not 0 < cv_threshold < 1:
        raise ValueError(f"`0 < cv_threshold < 1` must hold, but got {cv_threshold}.")
    if not 1 <= min_repeats <= max_repeats:
        raise ValueError(
            f"`1 <= min_repeats <= max_repeats` must hold, but got ({min_repeats}, {max_repeats})."
        )
    x = inputs if inputs is not None else fixed_inputs(torch.zeros(compiled.input_shape))[1]
    settings = (warmup, min_repeats, max_repeats, cv_threshold, min_sample_ms)
    cache_key = (compiled.key, compiled.threads, tuple(x.shape), settings)
    if use_cache and cache_key in _CACHE:
        return _CACHE[cache_key]
    for _ in range(warmup):
        compiled.time_per_run(x, 1)
    one = max(compiled.time_per_run(x, 1), 1e-7)
    number = max(1, math.ceil(min_sample_ms / 1000.0 / one))
    samples: list[float] = []
    cv = float("inf")
    while len(samples) < max_repeats:
        samples.append(compiled.time_per_run(x, number) * 1000.0)
        if len(samples) >= min_repeats:
            arr = np.asarray(samples)
            cv = float(arr.std(ddof=1) / arr.mean()) if len(arr) > 1 else 0.0
            if cv < cv_threshold:
                break
    arr = np.asarray(samples)
    result = Measurement(
        median_ms=float(np.median(arr)),
        p10_ms=float(np.percentile(arr, 10)),
        p90_ms=float(np.percentile(arr, 90)),
        cv=cv,
        repeats=len(samples),
        number=number,
        converged=cv < cv_threshold,
        backend=compiled.backend,
        target=compiled.target.name,
        target_kind=compiled.target.kind,
        device=_fingerprint(compiled),
        compiler_version=compiled.compiler_version,
        tuned=compiled.tuned,
        tuning_db_hash=compiled.tuning_db_hash,
        transforms=compiled.transforms,
        input_shape=tuple(x.shape),
        key=compiled.key,
        threads=compiled.threads,
    )
    if use_cache:
        _CACHE[cache_key] = result
    return result
