"""The Pareto chart of one task, drawn twice from one description: a plotly figure (the HTML
and the run report) and a matplotlib PNG (MLflow's image viewer, the docs).

Axes: latency on the search target (x) and validation accuracy (y). Bytes added to the store are
the colour, on one scale shared by every marker (none when every point has the same size).
Marker shape says what a point is: on the front, dominated, infeasible, the dense reference, the
chosen one. Reference lines say why: the uncompressed task's accuracy, the accuracy the
constraint and the selection policy allow, the dense plan's latency and any latency limit.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

COLORSCALE = "Viridis"  # matplotlib's "viridis": the same colours in both renderings


@dataclass(frozen=True)
class RefLine:
    """A horizontal (``axis="y"``, an accuracy) or vertical (``"x"``, a latency) line."""

    axis: Literal["x", "y"]
    value: float
    label: str
    dash: Literal["solid", "dash", "dot"] = "dash"
    color: str = "#555555"


@dataclass(frozen=True)
class Group:
    """One legend entry of points: how they are drawn, and which rows they are."""

    name: str
    plotly_symbol: str
    mpl_marker: str
    size: int
    rows: tuple[dict, ...]
    outline: bool = False


def groups(rows: Sequence[dict]) -> list[Group]:
    """Rows (``pareto`` / ``feasible`` / ``dense`` / ``chosen`` flags) split into legend entries;
    the chosen point is drawn twice: as what it is, and ringed as "chosen"."""
    trials = [r for r in rows if not r["dense"]]
    out = [Group("Pareto front (feasible, not dominated)", "circle", "o", 11,
                 tuple(r for r in trials if r["pareto"]), outline=True),
           Group("dominated (feasible)", "circle-open", "o", 9,
                 tuple(r for r in trials if r["feasible"] and not r["pareto"])),
           Group("infeasible (breaks a constraint)", "x-thin-open", "x", 9,
                 tuple(r for r in trials if not r["feasible"])),
           Group("dense reference (unpruned fp32)", "diamond", "D", 11,
                 tuple(r for r in rows if r["dense"]), outline=True),
           Group("chosen", "star", "*", 20, tuple(r for r in rows if r["chosen"]),
                 outline=True)]
    return [g for g in out if g.rows]


def bytes_range(rows: Sequence[dict]) -> tuple[float, float] | None:
    """(low, high) of the one colour scale, None when all points add the same bytes."""
    vals = [r["bytes"] for r in rows if r["bytes"] == r["bytes"]]  # NaN-free
    if not vals or min(vals) == max(vals):
        return None
    return min(vals), max(vals)


def wrap(text: str, width: int, sep: str) -> str:
    return sep.join(textwrap.wrap(text, width)) or text


def _hover(r: dict) -> str:
    status = ("on the Pareto front" if r["pareto"] else "dominated" if r["feasible"]
              else "infeasible") + (", chosen" if r["chosen"] else "")
    return (f"<b>{'dense reference' if r['dense'] else 'trial ' + str(r['trial'])}</b> "
            f"({status})<br>accuracy {r['acc']:.2f}%<br>latency {r['ms']:.4f} ms<br>"
            f"bytes {r['bytes']:,.0f}<br>{r['plan_text']}")


def figure(rows: Sequence[dict], lines: Sequence[RefLine], title: str, subtitle: str,
           x_title: str) -> dict:
    """The chart as a plotly figure dict (``plotly.io.to_json`` / ``Plotly.newPlot`` ready)."""
    span = bytes_range(rows)
    # every trace maps bytes through the same range; one hidden trace draws the colour bar, so
    # hiding a legend entry never takes the bar with it (per-trace scales, not layout.coloraxis:
    # plotly.js warns "Invalid color specifier" for every legend item of a coloraxis trace)
    scale = {} if span is None else {"colorscale": COLORSCALE, "cmin": span[0],
                                     "cmax": span[1], "showscale": False}
    data: list[dict] = []
    for g in groups(rows):
        if g.name == "chosen":  # a red ring around the point, whatever it is
            marker: dict = {"symbol": "star-open", "size": g.size, "color": "#d62728",
                            "line": {"width": 2.5}}
        else:  # open symbols take their stroke from the colour
            marker = {"symbol": g.plotly_symbol, "size": g.size,
                      "line": {"width": 1, "color": "#222222"} if g.outline else {"width": 2},
                      **({"color": [r["bytes"] for r in g.rows], **scale}
                         if span is not None else {"color": "#3b528b"})}
        data.append({"type": "scatter", "mode": "markers", "name": g.name,
                     "x": [r["ms"] for r in g.rows], "y": [r["acc"] for r in g.rows],
                     "text": [_hover(r) for r in g.rows], "hoverinfo": "text",
                     "marker": marker})
    shapes = []  # the legend names each line and its value
    for ln in lines:
        along = {"x0": 0, "x1": 1, "xref": "paper", "y0": ln.value, "y1": ln.value,
                 "yref": "y"} if ln.axis == "y" else {
                     "y0": 0, "y1": 1, "yref": "paper", "x0": ln.value, "x1": ln.value,
                     "xref": "x"}
        shapes.append({"type": "line", **along, "name": ln.label, "showlegend": True,
                       "line": {"dash": ln.dash, "color": ln.color, "width": 1.5}})
    layout: dict = {
        "title": {"text": f"{title}<br><sup>{wrap(subtitle, 110, '<br>')}</sup>",
                  "x": 0.01, "xanchor": "left", "font": {"size": 15}},
        "xaxis": {"title": {"text": x_title}, "zeroline": False},
        "yaxis": {"title": {"text": "validation accuracy (%)"}, "zeroline": False},
        # below the plot, so it never covers the colour bar on the right
        "legend": {"orientation": "h", "x": 0, "xanchor": "left", "y": -0.16,
                   "yanchor": "top", "font": {"size": 11}},
        "shapes": shapes, "template": "plotly_white",
        "height": 600, "margin": {"t": 120, "b": 170, "l": 70, "r": 30},
        "hovermode": "closest"}
    if span is not None:
        data.append({"type": "scatter", "mode": "markers", "x": [None], "y": [None],
                     "name": "bytes scale", "showlegend": False, "hoverinfo": "skip",
                     "marker": {**scale, "color": list(span), "showscale": True,
                                "colorbar": {"title": {"text": "bytes added<br>to the store"},
                                             "tickformat": "~s", "ticksuffix": "B",
                                             "len": 0.75, "y": 0.5}}})
    return {"data": data, "layout": layout}


_MPL_DASH = {"solid": "-", "dash": "--", "dot": ":"}


def png(rows: Sequence[dict], lines: Sequence[RefLine], title: str, subtitle: str,
        x_title: str, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.ticker import EngFormatter

    span = bytes_range(rows)
    cmap = matplotlib.colormaps[COLORSCALE.lower()]
    norm = Normalize(*span) if span is not None else None

    def colors(g: Group) -> list:
        return [cmap(norm(r["bytes"])) if norm is not None else "#3b528b" for r in g.rows]

    fig, ax = plt.subplots(figsize=(7.5, 5.6), dpi=120, layout="constrained")
    for g in groups(rows):
        x, y = [r["ms"] for r in g.rows], [r["acc"] for r in g.rows]
        if g.name == "chosen":  # a red ring around the point, whatever it is
            ax.scatter(x, y, marker="*", s=420, facecolors="none", edgecolors="#d62728",
                       linewidths=1.8, label=g.name, zorder=5)
        elif g.name.startswith("dominated"):  # open circles: the edge carries the colour
            ax.scatter(x, y, marker="o", s=g.size * 5, facecolors="none",
                       edgecolors=colors(g), linewidths=1.5, label=g.name, zorder=3)
        elif g.outline:
            ax.scatter(x, y, marker=g.mpl_marker, s=g.size * 5, c=colors(g),
                       edgecolors="#222222", linewidths=0.8, label=g.name, zorder=4)
        else:  # "x": an unfilled marker takes its colour as is
            ax.scatter(x, y, marker=g.mpl_marker, s=g.size * 5, c=colors(g), label=g.name,
                       zorder=3)
    for ln in lines:
        draw = ax.axhline if ln.axis == "y" else ax.axvline
        draw(ln.value, linestyle=_MPL_DASH[ln.dash], color=ln.color, linewidth=1.2,
             label=ln.label, zorder=1)
    if norm is not None:
        fig.colorbar(ScalarMappable(norm, cmap), ax=ax, label="bytes added to the store",
                     shrink=0.85, format=EngFormatter(unit="B"))
    ax.set_xlabel(x_title)
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title(f"{wrap(title, 100, chr(10))}\n{wrap(subtitle, 100, chr(10))}", fontsize=8.5,
                 loc="left")
    ax.grid(alpha=0.3)
    fig.legend(loc="outside lower center", ncol=2, fontsize=7, frameon=False)
    fig.savefig(path)
    plt.close(fig)
    return path
