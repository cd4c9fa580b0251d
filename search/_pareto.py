"""Pareto-front artifacts per task, in the task's search folder ``<run>/search/task-<k>/``.

``pareto.csv`` holds every point (a column per registered objective, named by its metric; the dense
reference is the row with trial -1). The chart (``search._chart``) says why the chosen point was
chosen: the target and the reason in its title, the reference accuracy and the allowed drop, the
dense plan's latency. It is written as ``pareto.png``, as ``pareto.json`` (the plotly figure and
the facts it shows; the run's report embeds it) and as ``pareto.html``, which loads plotly.js from
one ``plotly.min.js`` beside the task folders: one copy per run instead of ~4.8 MB per task.
"""

from __future__ import annotations

import csv
import html
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from pipeline._atomic import atomic_write
from pipeline.recipe import SearchConfig
from search._chart import RefLine, figure, png
from search._objective import TaskProblem
from search._select import Point, pareto_front
from search.objectives import registered

PLOTLY_JS = "plotly.min.js"
FRONT_VERSION = 1  # of pareto.json


@dataclass(frozen=True)
class FrontContext:
    """What the chart explains besides the points: where latency was measured, why the chosen
    point won, and the limits the recipe set."""

    task: int
    target: str  # where latency was measured, in words
    reason: str
    reference_accuracy: float  # the task before compression, %
    max_acc_drop: float | None = None  # search.constraints
    max_latency_ms: float | None = None
    policy: str = "knee"  # search.selection
    policy_value: float | None = None
    latency_batch: int = 1
    trials: int = 0


def front_context(problem: TaskProblem, cfg: SearchConfig, reason: str,
                  trials: int) -> FrontContext:
    return FrontContext(problem.ctx.task, problem.target, reason, problem.reference_accuracy,
                        cfg.constraints.max_acc_drop, cfg.constraints.max_latency_ms,
                        cfg.selection.policy, cfg.selection.value, cfg.latency_batch, trials)


def ref_lines(ctx: FrontContext, dense: Point | None) -> list[RefLine]:
    """The reference lines the chart draws (accuracy: horizontal; latency: vertical)."""
    ref = ctx.reference_accuracy
    lines = [RefLine("y", ref, f"reference accuracy: {ref:.2f}% (the task before compression)",
                     "solid")]
    drops: dict[float, list[str]] = {}
    if ctx.max_acc_drop is not None:
        drops.setdefault(ctx.max_acc_drop, []).append("constraint max_acc_drop")
    if ctx.policy == "min_latency_within_acc_drop" and ctx.policy_value is not None:
        drops.setdefault(ctx.policy_value, []).append("selection policy")
    for drop, why in sorted(drops.items()):
        policy_only = why == ["selection policy"]
        lines.append(RefLine("y", ref - drop, f"allowed drop: {ref - drop:.2f}% "
                             f"({drop:g} point{'' if drop == 1 else 's'} below, "
                             f"{' and '.join(why)})", "dot" if policy_only else "dash",
                             "#9467bd" if policy_only else "#e377c2"))
    if dense is not None and math.isfinite(dense.latency_ms):
        lines.append(RefLine("x", dense.latency_ms, f"dense reference: {dense.latency_ms:.4f} ms "
                             f"(unpruned fp32 on {ctx.target})", "dash", "#1f77b4"))
    limits: dict[float, list[str]] = {}
    if ctx.max_latency_ms is not None:
        limits.setdefault(ctx.max_latency_ms, []).append("constraint max_latency_ms")
    if ctx.policy == "max_accuracy_under_latency_ms" and ctx.policy_value is not None:
        limits.setdefault(ctx.policy_value, []).append("selection policy")
    for ms, why in sorted(limits.items()):
        lines.append(RefLine("x", ms, f"latency limit: {ms:g} ms ({' and '.join(why)})", "dot",
                             "#ff7f0e"))
    return lines


def plan_text(params: dict) -> str:
    """``backbone.1: 40% block(16,1) 4b`` per layer, from a trial's parameters."""
    layers: dict[str, dict] = {}
    for key, value in params.items():
        layer, _, field = key.rpartition(".")
        layers.setdefault(layer, {})[field] = value
    return "<br>".join(f"{name}: {float(p.get('sparsity', 0)):.0%} sparse, "
                       f"{p.get('pattern', '-')}, {p.get('bits', '-')} bits"
                       for name, p in layers.items()) or "plan: as trained (no pruning, fp32)"


def write_front(points: list[Point], chosen: Point, plans: dict[int, dict], folder: Path,
                ctx: FrontContext, objectives: Sequence[str] | None = None) -> list[Path]:
    """Write the task's front files; returns those to log to MLflow (the CSV, the JSON and the
    PNG: MLflow's HTML viewer cannot load the shared plotly.min.js, the run's report can)."""
    folder.mkdir(parents=True, exist_ok=True)
    front = {p.number for p in pareto_front([p for p in points if p.feasible], objectives)}
    rows = [{"trial": p.number, "dense": p.dense,
             **{o.metric: p.score(name) for name, o in registered().items()},
             "feasible": p.feasible, "pareto": p.number in front,
             "chosen": p.number == chosen.number,
             "plan": json.dumps(plans.get(p.number, {}), sort_keys=True)} for p in points]
    csv_path = folder / "pareto.csv"
    with csv_path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["trial"])
        w.writeheader()
        w.writerows(rows)
    drawn = [{**r, "acc": p.accuracy, "ms": p.latency_ms, "bytes": p.nbytes,
              "plan_text": plan_text(plans.get(p.number, {}))}
             for r, p in zip(rows, points, strict=True)]
    dense = next((p for p in points if p.dense), None)
    lines = ref_lines(ctx, dense)
    title = (f"task {ctx.task} on {ctx.target}: chose {chosen.label} ({chosen.accuracy:.2f}%, "
             f"{chosen.latency_ms:.4f} ms, {chosen.nbytes:,.0f} B)")
    subtitle = (f"why: {ctx.reason}. {ctx.trials} trials + the dense reference, {len(front)} "
                f"on the front; selection policy {ctx.policy}")
    x_title = f"latency on {ctx.target}, batch {ctx.latency_batch} (ms, median)"
    import plotly.graph_objects as go  # lazily, like every plotting import

    # validated, with its template spelled out: plotly.js knows no template names, so the run
    # report (which draws this dict with plotly.js) and pareto.html render the same chart
    fig = go.Figure(figure(drawn, lines, title, subtitle, x_title)).to_plotly_json()
    json_path = folder / "pareto.json"
    json_path.write_text(json.dumps(finite({
        "version": FRONT_VERSION, **asdict(ctx), "title": title,
        "chosen": {"trial": chosen.number, "dense": chosen.dense,
                   "accuracy": chosen.accuracy, "latency_ms": chosen.latency_ms,
                   "bytes": chosen.nbytes, "params": plans.get(chosen.number, {})},
        "dense_latency_ms": dense.latency_ms if dense else None,
        "front": sorted(front), "figure": fig}), allow_nan=False))
    html_path = folder / "pareto.html"
    html_path.write_text(html_page(fig, title, f"../{PLOTLY_JS}"))
    write_plotly_js(folder.parent)
    return [csv_path, json_path, png(drawn, lines, title, subtitle, x_title,
                                     folder / "pareto.png")]


def finite(value: object) -> object:
    """``value`` with NaN and infinities replaced by None (JSON has no NaN)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    return value


def html_page(fig: dict, title: str, plotly_src: str) -> str:
    """A page showing one figure, loading plotly.js from ``plotly_src``."""
    import plotly.io as pio

    return pio.to_html(fig, include_plotlyjs=plotly_src, full_html=True,
                       config={"responsive": True}).replace(
        "<head>", f"<head><title>{html.escape(title)}</title>", 1)


def write_plotly_js(folder: Path) -> Path:
    """``<folder>/plotly.min.js`` (the plotly package's own copy), written once per folder."""
    from plotly.offline import get_plotlyjs

    path = folder / PLOTLY_JS
    js = get_plotlyjs().encode()
    if not path.is_file() or path.stat().st_size != len(js):
        atomic_write(path, lambda f: f.write(js))
    return path
