"""The run report: one self-contained HTML page per run (``<run>/report.html``) with the
accuracy matrix, the store's bytes by component, latency per task and target, each searched
task's Pareto front and links to the store's bundles. Built from the run folder's files, so it
can be rebuilt at any time (``write_report``)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from pipeline.run_report._collect import BundleInfo, RunFiles, collect, find_bundles

__all__ = ["BundleInfo", "RunFiles", "collect", "find_bundles", "write_report"]

REPORT = "report.html"


def write_report(run_dir: Path, exports: Sequence[Path] = ()) -> Path:
    """Write ``<run_dir>/report.html`` from the run folder; bundles are looked for under
    ``exports`` and ``<output_dir>/../exports``. Raises ``InputError`` without a finished run."""
    from pipeline._atomic import atomic_write
    from pipeline.run_report._page import render

    page = run_dir / REPORT
    text = render(collect(run_dir, exports), page).encode()
    atomic_write(page, lambda f: f.write(text))
    return page
