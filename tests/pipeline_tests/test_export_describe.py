"""The console lines of ``taskpack export``: a latency that did not converge is warned about."""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.export import describe_bundle


def _bundle(tmp_path: Path, converged: dict[str, bool]) -> Path:
    lat = {b: {"median_ms": 0.5, "p10_ms": 0.4, "p90_ms": 0.9, "cv": 0.33 if not ok else 0.01,
               "converged": ok} for b, ok in converged.items()}
    folder = tmp_path / "host" / "task-2"
    folder.mkdir(parents=True)
    (folder / "manifest.json").write_text(json.dumps({
        "task": 2, "task_name": "pmnist-2", "batch_sizes": [int(b) for b in converged],
        "latency": lat["1"], "latency_by_batch": lat,
        "latency_converged": all(converged.values()), "numerics": {"max_rel_err": 2e-7}}))
    return folder


def test_a_latency_that_did_not_converge_is_warned_about(tmp_path: Path) -> None:
    line, warning = describe_bundle(_bundle(tmp_path, {"1": True, "8": False}))
    assert "task 2 (pmnist-2), median 0.5000 ms (p10 0.4000, p90 0.9000) at batch 1" in line
    assert "batch sizes [1, 8]" in line and "numerics rel err 2.0e-07" in line
    assert warning is not None and warning.startswith("warning: ")
    assert "did not converge" in warning and "8: 0.33" in warning and "1: " not in warning


def test_a_converged_latency_prints_no_warning(tmp_path: Path) -> None:
    assert describe_bundle(_bundle(tmp_path, {"1": True, "8": True}))[1] is None
