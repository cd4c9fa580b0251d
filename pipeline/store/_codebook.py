"""Codebooks: deterministic 1-D k-means for TSN quantization, and value <-> code mapping.

``fit_codebook`` runs Lloyd's algorithm on the *sorted* values: in 1-D every cluster is a
contiguous run of the sorted array, so one iteration is a ``searchsorted`` of the midpoints plus
prefix sums (O(k log n)). The initialisation is a fixed function of the data (quantiles of the
cube-root density), so the result is deterministic with no seed.
Zeros are not special: callers pass the task's own values only (the public TSN code clusters
zeros with them; docs/methods.md).
"""

from __future__ import annotations

import numpy as np
import torch

from pipeline.errors import StoreError

_MAX_ITERS = 300


def fit_codebook(values: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Cluster ``values`` into at most ``2**bits`` centroids.

    Returns ``(codebook, codes)``: ``codebook`` is float32 ``[k]`` sorted ascending with
    ``k <= 2**bits`` (fewer when there are fewer distinct values or a cluster empties) and
    ``codes`` is int64 with the shape of ``values``; the quantized values are exactly
    ``codebook[codes]``. With at most ``2**bits`` distinct values the codebook is those values.
    """
    if not 1 <= bits <= 16:
        raise StoreError(f"codebooks need 1 <= bits <= 16, found bits={bits}")
    x = values.detach().to("cpu", torch.float32).reshape(-1).numpy()
    if not np.isfinite(x).all():
        bad = int(np.count_nonzero(~np.isfinite(x)))
        raise StoreError(f"values to quantize must be finite, found {bad} NaN/inf")
    shape = tuple(values.shape)
    if x.size == 0:
        return torch.zeros(0, dtype=torch.float32), torch.zeros(shape, dtype=torch.int64)
    k = 1 << bits
    uniq = np.unique(x)
    if uniq.size <= k:
        codes = np.searchsorted(uniq, x)
        return torch.from_numpy(uniq.copy()), torch.from_numpy(codes.reshape(shape))
    xs = np.sort(x).astype(np.float64)
    prefix = np.concatenate([[0.0], np.cumsum(xs)])
    centroids = _cube_root_quantiles(xs, k)
    cuts = None
    for _ in range(_MAX_ITERS):
        centroids = np.unique(centroids)  # drop emptied/duplicate clusters, keep order
        mids = (centroids[:-1] + centroids[1:]) / 2
        new_cuts = np.searchsorted(xs, mids, side="right")
        bounds = np.concatenate([[0], new_cuts, [xs.size]])
        sizes = np.diff(bounds)
        keep = sizes > 0
        sums = prefix[bounds[1:]] - prefix[bounds[:-1]]
        centroids = sums[keep] / sizes[keep]
        if cuts is not None and np.array_equal(new_cuts, cuts):
            break
        cuts = new_cuts
    codebook = np.unique(centroids.astype(np.float32))
    codes = nearest_codes(x, codebook)
    return torch.from_numpy(codebook), torch.from_numpy(codes.reshape(shape))


def _cube_root_quantiles(xs: np.ndarray, k: int) -> np.ndarray:
    """Initial centroids at k equal quantiles of the density p(x)^(1/3).

    That is the optimal point density of a fine quantizer (Panter-Dite); plain quantiles of p
    leave Lloyd stuck with too few centroids in the tails (6x the MSE at 256 clusters on a
    Gaussian). p is estimated from equal-count slices of the sorted values.
    """
    step = max(1, xs.size // (8 * k))
    idx = np.arange(0, xs.size, step)
    edges = np.append(xs[idx], xs[-1])
    widths = np.diff(edges)
    counts = np.diff(np.append(idx, xs.size)).astype(np.float64)
    mass = np.cbrt(counts / np.maximum(widths, 1e-300)) * widths  # integral of p^(1/3) per slice
    cdf = np.concatenate([[0.0], np.cumsum(mass)])
    return np.interp((np.arange(k) + 0.5) / k, cdf / cdf[-1], edges)


def nearest_codes(x: np.ndarray, codebook: np.ndarray) -> np.ndarray:
    """Index of the nearest entry of a sorted ``codebook`` for every value (ties go down)."""
    mids = (codebook[:-1].astype(np.float64) + codebook[1:].astype(np.float64)) / 2
    return np.searchsorted(mids, x.astype(np.float64), side="left").astype(np.int64)


def codes_for_values(values: np.ndarray, codebook: np.ndarray, what: str) -> np.ndarray:
    """Codes of ``values`` in ``codebook``, matching fp32 *bit patterns* exactly.

    Matching bits (not ``==``) keeps -0.0 distinct from 0.0, so what a task reads back is bit for
    bit what it evaluated with. Raises when a value is not an entry of the codebook.
    """
    keys = codebook.astype(np.float32).view(np.uint32)
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    v = values.astype(np.float32).view(np.uint32)
    idx = np.searchsorted(sorted_keys, v)
    idx_c = np.minimum(idx, max(sorted_keys.size - 1, 0))
    hit = (idx < sorted_keys.size) & (sorted_keys[idx_c] == v) if sorted_keys.size else idx < 0
    if not hit.all():
        first = int(np.flatnonzero(~hit)[0])
        raise StoreError(
            f"{what}: every own value must be an entry of the codebook, found "
            f"{int(np.count_nonzero(~hit))} that are not (first: {float(values[first])!r})"
        )
    return order[idx_c].astype(np.int64)
