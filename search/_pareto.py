"""Pareto-front artifacts per task: CSV, PNG and an interactive HTML (plotly)."""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path

from search._select import Point, pareto_front
from search.objectives import registered


def write_front(points: list[Point], chosen: Point | None, plans: dict[int, dict],
                folder: Path, title: str, objectives: Sequence[str] | None = None) -> list[Path]:
    """``pareto.csv`` (a column per registered objective, named by its metric; the dense
    reference is the row with trial -1), ``pareto.png`` and ``pareto.html``."""
    folder.mkdir(parents=True, exist_ok=True)
    front = {p.number for p in pareto_front([p for p in points if p.feasible], objectives)}
    rows = [{"trial": p.number, "dense": p.dense,
             **{o.metric: p.score(name) for name, o in registered().items()},
             "feasible": p.feasible, "pareto": p.number in front,
             "chosen": chosen is not None and p.number == chosen.number,
             "plan": json.dumps(plans.get(p.number, {}), sort_keys=True),
             # the plotted axes and colour
             "_ms": p.latency_ms, "_acc": p.accuracy, "_bytes": p.nbytes} for p in points]
    csv_path = folder / "pareto.csv"
    with csv_path.open("w", newline="") as f:
        names = [k for k in rows[0] if not k.startswith("_")] if rows else ["trial"]
        w = csv.DictWriter(f, fieldnames=names, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    return [csv_path, _png(rows, folder / "pareto.png", title),
            _html(rows, folder / "pareto.html", title)]


def _png(rows: list[dict], path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for group, marker, color, label in ((False, "x", "lightgray", "dominated"),
                                        (True, "o", "tab:blue", "Pareto front")):
        pts = [r for r in rows if r["pareto"] == group and r["feasible"]]
        ax.scatter([r["_ms"] for r in pts], [r["_acc"] for r in pts], marker=marker,
                   color=color, label=label)
    bad = [r for r in rows if not r["feasible"]]
    if bad:
        ax.scatter([r["_ms"] for r in bad], [r["_acc"] for r in bad], marker=".",
                   color="tab:red", label="infeasible")
    for r in rows:
        if r["dense"]:
            ax.scatter([r["_ms"]], [r["_acc"]], marker="D", color="black",
                       label="dense reference (no pruning, fp32)")
        if r["chosen"]:
            ax.scatter([r["_ms"]], [r["_acc"]], s=160, facecolors="none",
                       edgecolors="tab:green", linewidths=2, label=f"chosen (trial {r['trial']})")
    ax.set_xlabel("latency (ms, measured on the compiled model)")
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _html(rows: list[dict], path: Path, title: str) -> Path:
    import plotly.graph_objects as go

    fig = go.Figure()
    for name, pick, symbol in (("dominated", lambda r: r["feasible"] and not r["pareto"], "x"),
                               ("Pareto front", lambda r: r["pareto"], "circle"),
                               ("infeasible", lambda r: not r["feasible"], "triangle-down"),
                               ("chosen", lambda r: r["chosen"], "star"),
                               ("dense reference", lambda r: r["dense"], "diamond")):
        pts = [r for r in rows if pick(r)]
        fig.add_trace(go.Scatter(
            x=[r["_ms"] for r in pts], y=[r["_acc"] for r in pts], mode="markers",
            name=name, marker={"symbol": symbol, "size": 14 if name == "chosen" else 9,
                               "color": [r["_bytes"] for r in pts], "colorscale": "Viridis",
                               "showscale": name == "Pareto front",
                               "colorbar": {"title": "bytes"}},
            text=[f"trial {r['trial']}<br>bytes {r['_bytes']}<br>{r['plan']}" for r in pts],
            hoverinfo="text+x+y"))
    fig.update_layout(title=title, xaxis_title="latency (ms, compiled)",
                      yaxis_title="validation accuracy (%)")
    fig.write_html(path, include_plotlyjs=True, full_html=True)
    return path
