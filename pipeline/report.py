"""Run artifacts a person reads: per-task CSV, accuracy-matrix heatmap, summary table."""

from __future__ import annotations

import csv
import math
from pathlib import Path

from rich.table import Table

from pipeline.session import RunResult


def write_artifacts(result: RunResult, run_dir: Path) -> list[Path]:
    return [write_task_csv(result, run_dir / "tasks.csv"),
            write_heatmap(result, run_dir / "accuracy_matrix.png")]


def write_task_csv(result: RunResult, path: Path) -> Path:
    final = result.matrix.final
    inferred = result.matrix.inferred[-1] if result.matrix.inferred else []
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["task", "name", "acc_at_commit", "acc_final", "val_acc", "epochs",
                    "train_seconds", "resumed"]
                   + (["task_inference_acc_final"] if inferred else []))
        for rec in result.tasks:
            tr = rec.train
            w.writerow([rec.index, rec.name, f"{rec.acc_at_commit:.4f}",
                        _cell(final[rec.index]), f"{rec.val_acc:.4f}",
                        tr.epochs if tr else "", f"{tr.seconds:.2f}" if tr else "",
                        int(rec.resumed)] + ([_cell(inferred[rec.index])] if inferred else []))
    return path


def _cell(v: float | None) -> str:
    return "" if v is None else f"{v:.4f}"


def write_heatmap(result: RunResult, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    rows = result.matrix.as_list()
    t = len(rows)
    data = np.array([[math.nan if v is None else v for v in r] for r in rows], dtype=float)
    fig, ax = plt.subplots(figsize=(1.2 + 0.6 * t, 1.0 + 0.5 * t), dpi=120)
    im = ax.imshow(data, cmap="viridis", vmin=np.nanmin(data) if t else 0, vmax=100)
    for i in range(t):
        for j in range(i + 1):
            if math.isnan(data[i, j]):  # not re-tested in that row (evaluation.every)
                continue
            ax.text(j, i, f"{data[i, j]:.1f}", ha="center", va="center", fontsize=7,
                    color="white" if data[i, j] < 90 else "black")
    ax.set_xlabel("evaluated task j")
    ax.set_ylabel("after learning task i")
    ax.set_xticks(range(t))
    ax.set_yticks(range(t))
    ax.set_title(f"{result.recipe.name}: ACC {result.acc:.2f}%, BWT {result.bwt:+.3f}")
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def summary_table(result: RunResult) -> Table:
    table = Table(title=f"{result.recipe.name}: {result.recipe.benchmark.stream}, "
                        f"{result.recipe.model.arch}, {result.recipe.method.kind}")
    cols = ["task", "name", "acc at commit", "acc final", "epochs", "train s"]
    for col in cols:
        table.add_column(col, justify="right" if col != "name" else "left")
    final = result.matrix.final
    for rec in result.tasks:
        tr = rec.train
        acc = final[rec.index]
        table.add_row(str(rec.index), rec.name, f"{rec.acc_at_commit:.2f}",
                      "-" if acc is None else f"{acc:.2f}",
                      (str(tr.epochs) if tr else "-") + (" (resumed)" if rec.resumed else ""),
                      f"{tr.seconds:.1f}" if tr else "-")
    table.add_section()
    pad = [""] * (len(cols) - 4)
    table.add_row("ACC", "", "", f"{result.acc:.2f}", *pad)
    table.add_row("BWT", "", "", f"{result.bwt:+.3f}", *pad)
    table.add_row("FWT", "", "", f"{result.matrix.fwt():+.2f}", *pad)
    if result.matrix.inferred:
        table.add_row("task inf.", "", "", f"{result.matrix.task_inference_acc():.2f}", *pad)
    table.add_row("wall", "", "", f"{result.wall_s:.1f} s", *pad)
    sm = result.store_metrics
    if sm:
        table.add_row("store", "", "", f"{sm['store/bytes_total'] / 1e6:.3f} MB", *pad)
        table.add_row("vs fp32", "", "", f"{sm['store/ratio_to_dense_fp32']:.4f}x", *pad)
    return table


def search_table(result: RunResult) -> Table:
    """The point the search chose per task (measured on the compiled model), against the dense
    reference (the task as trained, measured the same way); trial "dense" = the dense plan."""
    table = Table(title="search: chosen point per task")
    for col in ("task", "trial", "val acc", "acc drop", "latency ms", "dense ms", "vs dense",
                "bytes", "trials", "front"):
        table.add_column(col, justify="right")
    for rec in result.tasks:
        c = rec.compression
        if "search_chosen_trial" not in c:
            continue
        dense_ms = c.get("search_dense_latency_ms", math.nan)
        speedup = c.get("search_speedup_vs_dense", math.nan)
        trial = "dense" if c["search_chosen_trial"] < 0 else f"{c['search_chosen_trial']:.0f}"
        if c.get("search_fell_back_to_dense", 0.0):
            trial += " (fallback)"
        table.add_row(str(rec.index), trial,
                      f"{c['search_chosen_val_acc']:.2f}",
                      f"{c['search_reference_val_acc'] - c['search_chosen_val_acc']:+.2f}",
                      f"{c['search_chosen_latency_ms']:.3f}",
                      "-" if math.isnan(dense_ms) else f"{dense_ms:.3f}",
                      "-" if math.isnan(speedup) else f"{speedup:.2f}x",
                      f"{c['search_chosen_bytes']:,.0f}", f"{c['search_trials']:.0f}",
                      f"{c['search_front_size']:.0f}")
    return table
