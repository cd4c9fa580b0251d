"""The run report as one self-contained HTML page: no network, no file beside it.

Tables are plain HTML; the searched tasks' Pareto fronts are the search's own plotly figures
(``search/task-<k>/pareto.json``), drawn by plotly.js inlined once at the end of the page (~4.8
MB; a run without a search carries no script at all).
"""

from __future__ import annotations

import html
import json
import math
import os
import time
from pathlib import Path

from pipeline.run_report._collect import RunFiles, number

CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0 auto;
max-width:1120px;padding:0 24px 48px;color:#1d1d1f}
h1{font-size:24px;margin:24px 0 4px}h2{font-size:19px;margin:32px 0 8px;border-bottom:
1px solid #ddd;padding-bottom:4px}h3{font-size:15px;margin:18px 0 6px}
.meta{color:#555}nav a{margin-right:12px}table{border-collapse:collapse;margin:8px 0}
th,td{padding:4px 10px;border:1px solid #e2e2e2;text-align:right}th{background:#f6f6f6}
td.l,th.l{text-align:left}.cards{display:flex;flex-wrap:wrap;gap:12px;margin:12px 0}
.card{border:1px solid #ddd;border-radius:6px;padding:8px 14px;min-width:120px}
.card b{display:block;font-size:20px}.card span{color:#555;font-size:12px}
.note{color:#555;font-size:13px}.bar{display:inline-block;height:10px;background:#4c78a8}
.front{width:100%;min-height:600px}code{background:#f3f3f3;padding:0 3px}
"""


def esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def fmt(value: object, spec: str = ".2f", missing: str = "-", unit: str = "") -> str:
    """``value`` formatted with its unit, or ``missing`` when there is no number."""
    v = number(value)
    return missing if math.isnan(v) else format(v, spec) + unit


def _shade(acc: float, low: float) -> str:
    """A light blue whose depth grows with accuracy: dark text stays readable on every cell."""
    frac = 0.0 if math.isnan(acc) else max(0.0, min(1.0, (acc - low) / max(100.0 - low, 1e-9)))
    return f"hsl(210,70%,{96 - 36 * frac:.0f}%)"


def _table(head: list[str], rows: list[list[str]], left: int = 1) -> str:
    """Cells are HTML already (escape before); the first ``left`` columns align left."""
    th = "".join(f"<th class='l'>{h}</th>" if i < left else f"<th>{h}</th>"
                 for i, h in enumerate(head))
    body = "".join("<tr>" + "".join(f"<td class='l'>{c}</td>" if i < left else f"<td>{c}</td>"
                                    for i, c in enumerate(r)) + "</tr>" for r in rows)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


def summary(f: RunFiles) -> str:
    s = f.summary
    cards = [("ACC", fmt(s.get("acc"), unit="%"), "mean final accuracy over tasks"),
             ("BWT", fmt(s.get("bwt"), "+.3f"), "backward transfer (0 = nothing forgotten)"),
             ("FWT", fmt(s.get("fwt"), "+.2f"), "forward transfer, points over random init"),
             ("store", fmt(number(s.get("store/bytes_total")) / 1e3, ",.1f", unit=" kB"),
              "the packed store file, every task"),
             ("vs fp32", fmt(s.get("store/ratio_to_dense_fp32"), ".4f", unit="x"),
              "file size / one dense fp32 backbone"),
             ("wall", fmt(s.get("wall_seconds"), ".0f", unit=" s"), "whole run")]
    if "task_inference_acc" in s:  # evaluation.scenario: task_inferred
        cards.insert(1, ("task inference", fmt(s.get("task_inference_acc"), unit="%"),
                         "inputs assigned their own task, final row"))
    return "<div class='cards'>" + "".join(
        f"<div class='card'><b>{esc(v)}</b>{esc(k)}<br><span>{esc(d)}</span></div>"
        for k, v, d in cards) + "</div>"


def matrix(f: RunFiles) -> str:
    vals = [number(v) for row in f.matrix for v in row if v is not None]
    low = min(vals) if vals else 0.0
    head = ["after learning"] + [f"task {j}<br><span class='note'>{esc(n)}</span>"
                                 for j, n in enumerate(f.names)]
    rows = []
    for i, row in enumerate(f.matrix):
        cells = [f"task {i} ({esc(f.names[i] if i < len(f.names) else '')})"]
        for v in row:
            cells.append("" if v is None else
                         f"<span style='background:{_shade(number(v), low)};padding:2px 6px'>"
                         f"{fmt(v)}</span>")
        rows.append(cells)
    return (_table(head, rows) + "<p class='note'>R[i][j]: test accuracy (%) of task j after "
            "learning task i, re-measured from the store file every time (empty cells below "
            "the diagonal: not re-tested in that row, evaluation.every). ACC is the mean of "
            "the last row; BWT the mean change of each task from when it was learned to the "
            "end; FWT the mean accuracy of a task just before training it, over the random "
            "initialisation's.</p>")


def store(f: RunFiles) -> str:
    r = f.store
    if r is None:
        return "<p class='note'>The store could not be read; see the run's log.</p>"
    total = max(r.file_size, 1)
    components = list(r.bytes)  # the store's components, in its order
    rows = [[esc(c), f"{r.bytes[c]:,}", f"{100 * r.bytes[c] / total:.1f}%",
             f"<span class='bar' style='width:{300 * r.bytes[c] / total:.0f}px'></span>"]
            for c in components]
    rows.append(["<b>file</b>", f"<b>{r.file_size:,}</b>", "100%", ""])
    task_parts = [c for c in components if c != "base"]  # the base is no task's
    per_task = [[f"task {t.task}", *(f"{t.bytes[c]:,}" for c in task_parts),
                 f"{t.bytes_total:,}", f"{t.density:.4f}", f"{t.union_density:.4f}"]
                for t in r.tasks]
    return (f"<p>{r.num_tasks} task(s) in {r.file_size:,} bytes = "
            f"{r.ratio_to_dense_fp32:.4f} x one dense fp32 backbone ({r.positions:,} weight "
            f"positions, {r.bit_budget} bits each at most). Every byte of the file is counted "
            "once.</p>"
            + _table(["component", "bytes", "share", ""], rows)
            + "<h3>bytes by task</h3>"
            + _table(["task", *task_parts, "total", "density", "union density"], per_task)
            + "<p class='note'>masks: which weights a task uses (compressed); codes: its own "
              "weights' bit codes; codebooks: their decoding tables; tensors: heads and other "
              "per-task tensors; metadata: headers, the model section and section table; base: "
              "a fixed backbone every task reads and none owns (SupSup's signed constants). "
              "<code>taskpack inspect</code> gives the same per layer.</p>")


def latency(f: RunFiles) -> str:
    parts = []
    searched = [t for t in range(f.num_tasks) if "search_chosen_trial" in f.compression(t)]
    if searched:
        rows = []
        for t in searched:
            c, front = f.compression(t), f.fronts.get(t, {})
            trial = number(c.get("search_chosen_trial"))
            rows.append([f"<a href='#task-{t}'>task {t}</a>", esc(front.get("target", "-")),
                         "dense" if trial < 0 else f"{trial:.0f}",
                         fmt(c.get("search_chosen_val_acc")),
                         fmt(number(c.get("search_reference_val_acc"))
                             - number(c.get("search_chosen_val_acc")), "+.2f"),
                         fmt(c.get("search_chosen_latency_ms"), ".4f"),
                         fmt(c.get("search_dense_latency_ms"), ".4f"),
                         fmt(c.get("search_speedup_vs_dense"), ".2f", unit="x"),
                         fmt(c.get("search_chosen_bytes"), ",.0f"),
                         fmt(c.get("search_trials"), ".0f")])
        parts.append("<h3>measured by the search (validation data, the compiled model)</h3>"
                     + _table(["task", "target", "chosen trial", "val acc %", "drop",
                               "latency ms", "dense ms", "vs dense", "bytes", "trials"],
                               rows, left=2))
    if f.bundles:
        rows = []
        for b in f.bundles:
            lat = b.latency or {}
            rows.append([esc(b.target), f"task {b.task}",
                         fmt(lat.get("median_ms"), ".4f", "export only"),
                         fmt(lat.get("p10_ms"), ".4f"), fmt(lat.get("p90_ms"), ".4f"),
                         ("yes" if lat["converged"] else "<b>no</b>")
                         if "converged" in lat else "-",
                         "yes" if b.tuned else "no"])
        parts.append("<h3>measured on the exported bundles</h3>"
                     + _table(["target", "task", "median ms", "p10 ms", "p90 ms",
                               "converged", "tuned"], rows, left=2))
    if not parts:
        return ("<p class='note'>This run did not search (its plan was fixed by the recipe) "
                "and no bundle of its store was exported, so no latency was measured. "
                "<code>taskpack export STORE --all-tasks --target host</code> measures one.</p>")
    return "".join(parts)


def task_section(f: RunFiles, t: int) -> str:
    name = f.names[t]
    rec, front = f.record(t), f.fronts.get(t)
    out = [f"<section id='task-{t}'><h2>task {t}: {esc(name)}</h2><p>accuracy at commit "
           f"{fmt(rec.get('acc_at_commit'), unit='%')}, validation "
           f"{fmt(rec.get('val_acc'), unit='%')}.</p>"]
    if front is None:
        out.append("<p class='note'>Not searched (no <code>search/task-"
                   f"{t}/pareto.json</code>): the task was compressed with the recipe's "
                   "plan.</p>")
    else:
        chosen = front.get("chosen", {})
        label = "the dense reference" if chosen.get("dense") else f"trial {chosen.get('trial')}"
        out.append(f"<p>on {esc(front.get('target', '-'))}: chose {esc(label)}, because "
                   f"{esc(front.get('reason', ''))}.</p>" + plan_table(chosen)
                   + f"<div class='front' id='front-{t}'></div>")
    return "".join(out) + "</section>"


def plan_table(chosen: dict) -> str:
    """The chosen plan per layer (the trial's parameters ``<layer>.<field>``)."""
    layers: dict[str, dict] = {}
    for key, value in (chosen.get("params") or {}).items():
        layer, _, name = key.rpartition(".")
        layers.setdefault(layer, {})[name] = value
    if not layers:
        return "<p class='note'>plan: every layer as trained (no pruning, fp32).</p>"
    return _table(["layer", "sparsity", "pattern", "bits"], [
        [esc(n), fmt(p.get("sparsity"), ".0%"), esc(p.get("pattern", "-")),
         esc(p.get("bits", "-"))] for n, p in layers.items()])


def bundles(f: RunFiles, page: Path) -> str:
    if not f.bundles:
        return ("<p class='note'>No bundle of this store was exported yet. <code>taskpack "
                "export STORE --all-tasks --target host</code> writes them, and refreshes this "
                "page.</p>")
    items = []
    for b in f.bundles:
        rel = Path(os.path.relpath(b.folder, page.parent)).as_posix()
        items.append(f"<li>{esc(b.target)}, task {b.task}: <a href='{esc(rel)}/manifest.json'>"
                     f"manifest</a> in <a href='{esc(rel)}/'>{esc(rel)}/</a></li>")
    return "<ul>" + "".join(items) + "</ul>"


def _script(f: RunFiles) -> str:
    if not f.fronts:
        return ""
    from plotly.offline import get_plotlyjs

    figures = json.dumps({str(t): fr["figure"] for t, fr in f.fronts.items()})
    draw = ("const figs=" + figures.replace("</", "<\\/") + ";for(const [t,fig] of "
            "Object.entries(figs)){Plotly.newPlot('front-'+t,fig.data,fig.layout,"
            "{responsive:true});}")
    return f"<script>{get_plotlyjs()}</script><script>{draw}</script>"


def render(f: RunFiles, page: Path) -> str:
    r = f.recipe
    tasks = "".join(f"<a href='#task-{t}'>task {t}</a>" for t in range(f.num_tasks))
    return (
        f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>taskpack report: "
        f"{esc(r.name)}</title><style>{CSS}</style></head><body>"
        f"<h1>taskpack report: {esc(r.name)}</h1><p class='meta'>{esc(r.description)}<br>"
        f"stream {esc(r.benchmark.stream)}, model {esc(r.model.arch)}, method "
        f"{esc(r.method.kind)}, {f.num_tasks} task(s), targets "
        f"{esc(', '.join(t.name for t in r.targets))}; run folder <code>{esc(f.run_dir)}"
        f"</code>; written {time.strftime('%Y-%m-%d %H:%M:%S %Z')}</p>"
        f"<nav><a href='#summary'>summary</a><a href='#matrix'>accuracy matrix</a>"
        f"<a href='#store'>store</a><a href='#latency'>latency</a>{tasks}"
        f"<a href='#bundles'>bundles</a></nav>"
        f"<section id='summary'><h2>summary</h2>{summary(f)}</section>"
        f"<section id='matrix'><h2>accuracy matrix</h2>{matrix(f)}</section>"
        f"<section id='store'><h2>store: bytes by component</h2>{store(f)}</section>"
        f"<section id='latency'><h2>latency per task and target</h2>{latency(f)}</section>"
        + "".join(task_section(f, t) for t in range(f.num_tasks))
        + f"<section id='bundles'><h2>bundles</h2>{bundles(f, page)}</section>"
        + _script(f) + "</body></html>")
