"""The per-task Pareto chart explains itself: one colour scale for bytes over every point, the
reference and allowed-accuracy lines, the dense reference's latency, the target and the reason in
the title, a legend below the plot (the colour bar is on the right), and plotly.js once per run."""

from __future__ import annotations

import json
import math
from pathlib import Path

import plotly.graph_objects as go
import pytest

from search._chart import RefLine, bytes_range
from search._pareto import PLOTLY_JS, FrontContext, plan_text, ref_lines, write_front
from search._select import DENSE, Point

REASON = "fastest of 1 front point(s) within 1.0 points of the uncompressed accuracy 90.00"
CTX = FrontContext(task=2, target="aarch64 (tvm, tuned 8 trials/workload)", reason=REASON,
                   reference_accuracy=90.0, max_acc_drop=5.0,
                   policy="min_latency_within_acc_drop", policy_value=1.0, trials=3)


def _pt(n: int, acc: float, ms: float, nbytes: float, feasible: bool = True) -> Point:
    return Point(n, {"accuracy": acc, "latency": ms, "bytes": nbytes}, feasible)


# trial 0: on the front with the dense reference (chosen); 1: dominated; 2: infeasible, smallest
POINTS = [_pt(0, 89.5, 0.02, 138_654), _pt(1, 89.0, 0.03, 138_654),
          _pt(2, 70.0, 0.01, 84_000, feasible=False), _pt(DENSE, 90.0, 0.05, 300_000)]
PLANS = {0: {"fc.sparsity": 0.5, "fc.pattern": "block(16,1)", "fc.bits": 4}}


@pytest.fixture
def front(tmp_path: Path) -> tuple[list[Path], dict, Path]:
    files = write_front(POINTS, POINTS[0], PLANS, tmp_path / "task-2", CTX)
    return files, json.loads((tmp_path / "task-2" / "pareto.json").read_text()), tmp_path


def test_reference_lines_are_exactly_these() -> None:
    assert ref_lines(CTX, POINTS[-1]) == [
        RefLine("y", 90.0, "reference accuracy: 90.00% (the task before compression)", "solid"),
        RefLine("y", 89.0, "allowed drop: 89.00% (1 point below, selection policy)", "dot",
                "#9467bd"),
        RefLine("y", 85.0, "allowed drop: 85.00% (5 points below, constraint max_acc_drop)",
                "dash", "#e377c2"),
        RefLine("x", 0.05, "dense reference: 0.0500 ms (unpruned fp32 on "
                "aarch64 (tvm, tuned 8 trials/workload))", "dash", "#1f77b4")]


def test_one_allowed_drop_line_when_constraint_and_policy_agree() -> None:
    ctx = FrontContext(0, "host", "r", 90.0, max_acc_drop=1.0,
                       policy="min_latency_within_acc_drop", policy_value=1.0)
    (line,) = [ln for ln in ref_lines(ctx, None) if ln.label.startswith("allowed")]
    assert line.value == 89.0 and "constraint max_acc_drop and selection policy" in line.label


def test_latency_limits_are_vertical_lines() -> None:
    ctx = FrontContext(0, "host", "r", 90.0, max_latency_ms=0.5,
                       policy="max_accuracy_under_latency_ms", policy_value=0.2)
    lines = [(ln.axis, ln.value) for ln in ref_lines(ctx, None)]
    assert lines == [("y", 90.0), ("x", 0.2), ("x", 0.5)]


def test_bytes_share_one_colour_scale_over_every_point(front) -> None:
    _, data, _ = front
    traces = data["figure"]["data"]
    assert [t["name"].split(" ")[0] for t in traces] == [
        "Pareto", "dominated", "infeasible", "dense", "chosen", "bytes"]
    coloured = [t["marker"] for t in traces if t["name"] != "chosen"]
    # one range over every point, the infeasible one included, one colour scale
    assert {(m["cmin"], m["cmax"]) for m in coloured} == {(84_000, 300_000)}
    assert all(m["colorscale"] == coloured[0]["colorscale"] for m in coloured)
    assert coloured[0]["colorscale"][0] == [0.0, "#440154"]  # Viridis, spelled out
    assert [m["showscale"] for m in coloured] == [False] * 4 + [True]  # one bar
    assert traces[-1]["showlegend"] is False  # the bar's own trace: no legend entry, no point
    assert "coloraxis" not in data["figure"]["layout"]
    # validated, and the template is an object: plotly.js (the run report) knows no names
    assert isinstance(data["figure"]["layout"]["template"], dict)
    go.Figure(data["figure"])


def test_no_colour_scale_when_all_points_add_the_same_bytes() -> None:
    assert bytes_range([{"bytes": 5.0}, {"bytes": 5.0}]) is None
    assert bytes_range([{"bytes": 5.0}, {"bytes": math.nan}, {"bytes": 7.0}]) == (5.0, 7.0)


def test_title_names_target_and_reason_and_the_legend_sits_below(front) -> None:
    _, data, _ = front
    layout = data["figure"]["layout"]
    assert layout["title"]["text"].startswith(
        "task 2 on aarch64 (tvm, tuned 8 trials/workload): chose trial 0 (89.50%, 0.0200 ms, "
        "138,654 B)")
    assert "why: fastest of 1 front point(s) within 1.0 points" in layout["title"]["text"]
    assert layout["legend"]["orientation"] == "h" and layout["legend"]["y"] < 0
    assert {s["name"].split(":")[0] for s in layout["shapes"]} == {
        "reference accuracy", "allowed drop", "dense reference"}
    assert data["reason"] == REASON and data["target"] == CTX.target
    assert data["chosen"] == {"trial": 0, "dense": False, "accuracy": 89.5, "latency_ms": 0.02,
                              "bytes": 138_654, "params": PLANS[0]}
    assert data["front"] == [DENSE, 0] and data["dense_latency_ms"] == 0.05


def test_hover_text_spells_out_the_point_and_its_plan(front) -> None:
    assert plan_text(PLANS[0]) == "fc: 50% sparse, block(16,1), 4 bits"
    assert plan_text({}) == "plan: as trained (no pruning, fp32)"
    _, data, _ = front
    hover = {t["name"].split(" ")[0]: t["text"] for t in data["figure"]["data"][:-1]}
    assert hover["Pareto"] == ["<b>trial 0</b> (on the Pareto front, chosen)<br>accuracy "
                               "89.50%<br>latency 0.0200 ms<br>bytes 138,654<br>"
                               "fc: 50% sparse, block(16,1), 4 bits"]
    assert hover["infeasible"][0].startswith("<b>trial 2</b> (infeasible)")
    assert hover["dense"][0].startswith("<b>dense reference</b> (on the Pareto front)")


def test_html_loads_one_shared_plotly_js(front, tmp_path: Path) -> None:
    files, _, root = front
    assert [f.name for f in files] == ["pareto.csv", "pareto.json", "pareto.png"]
    page = (root / "task-2" / "pareto.html").read_text()
    assert '<script charset="utf-8" src="../plotly.min.js"></script>' in page
    assert len(page) < 100_000  # ~4.8 MB when plotly.js was embedded per task
    shared = root / PLOTLY_JS
    assert shared.stat().st_size > 1_000_000
    before = shared.stat().st_mtime_ns
    write_front(POINTS, POINTS[0], PLANS, root / "task-3", CTX)
    assert shared.stat().st_mtime_ns == before  # written once per run, not per task
    assert sorted(p.name for p in root.iterdir()) == [PLOTLY_JS, "task-2", "task-3"]


def test_json_is_strict_without_nan(tmp_path: Path) -> None:
    pts = [Point(0, {"accuracy": 80.0, "latency": math.nan, "bytes": 10.0})]
    write_front(pts, pts[0], {}, tmp_path / "task-0", FrontContext(0, "host", "r", 81.0))
    text = (tmp_path / "task-0" / "pareto.json").read_text()
    data = json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in pareto.json"))
    assert data["chosen"]["latency_ms"] is None and data["dense_latency_ms"] is None


def test_png_is_written(front) -> None:
    files, _, _ = front
    png = files[-1]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
