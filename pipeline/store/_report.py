"""Store report: real bytes of the file per task, layer and component.

Every byte of the file is counted exactly once: a task's masks, codes, codebooks and tensors
sections by component (and, inside them, per layer), its meta section as metadata, the ``base``
section (a fixed backbone no task owns, when there is one) as ``base``, and the header, the model
section and the section table as store-level metadata. So the components always add up
to the file size, which is the capacity figure TSN's public code only estimates.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pipeline.store._codec import TaskState

COMPONENTS = ("codes", "masks", "codebooks", "tensors", "metadata", "base")
_TASK_COMPONENTS = COMPONENTS[:4]  # a task's data sections, by name


@dataclass(frozen=True)
class LayerReport:
    name: str
    positions: int
    count: int  # |m_t|
    density: float
    shared: int
    own: int
    split: int  # own codes placed at positions that already held a code
    bits: int
    kind: str  # "index" (codebook), "fp16" or "fp32"
    codebook_size: int
    bytes_codes: int
    bytes_masks: int
    bytes_codebooks: int
    bits_per_own_weight: float  # 8 * (codes + codebook bytes) / own
    mask_bits_per_position: float


@dataclass(frozen=True)
class TaskReport:
    task: int
    meta: dict
    layers: list[LayerReport]
    density: float
    union_density: float  # density of M_t after this task
    shared: int
    own: int
    bytes: dict[str, int]  # by component; "metadata" is this task's meta section

    @property
    def bytes_total(self) -> int:
        return sum(self.bytes.values())


@dataclass(frozen=True)
class StoreReport:
    path: str
    model_fingerprint: str
    bit_budget: int
    positions: int
    num_tasks: int
    file_size: int
    union_density: float
    tasks: list[TaskReport]
    bytes: dict[str, int] = field(default_factory=dict)  # totals by component

    @property
    def has_base(self) -> bool:
        """Whether the file holds a fixed backbone (its ``base`` section)."""
        return self.bytes.get("base", 0) > 0

    @property
    def ratio_to_dense_fp32(self) -> float:
        return self.file_size / (4 * self.positions) if self.positions else math.inf

    def as_metrics(self) -> dict[str, float]:
        """Flat numbers for MLflow (``store/...``)."""
        out: dict[str, float] = {"store/bytes_total": float(self.file_size)}
        for comp in COMPONENTS:
            out[f"store/bytes_{comp}"] = float(self.bytes[comp])
        out["store/ratio_to_dense_fp32"] = self.ratio_to_dense_fp32
        out["store/union_density"] = self.union_density
        return out

    def to_dict(self) -> dict:
        d = asdict(self)
        d["ratio_to_dense_fp32"] = self.ratio_to_dense_fp32
        for t, task in zip(d["tasks"], self.tasks, strict=True):
            t["bytes_total"] = task.bytes_total
        return d


def build_report(
    *,
    path: str,
    fingerprint: str,
    budget: int,
    layers: dict[str, tuple[int, ...]],
    tasks: list[TaskState],
    lengths: dict[str, int],
    file_size: int,
    base_bytes: int = 0,
) -> StoreReport:
    sizes = {name: math.prod(shape) for name, shape in layers.items()}
    n_total = sum(sizes.values())
    task_reports = []
    totals = dict.fromkeys(COMPONENTS, 0)
    for ts in tasks:
        layer_reports = []
        for name, ls in ts.layers.items():
            n = sizes[name]
            payload = ls.nbytes["codes"] + ls.nbytes["codebooks"]
            layer_reports.append(
                LayerReport(
                    name=name,
                    positions=n,
                    count=ls.count,
                    density=ls.count / n if n else 0.0,
                    shared=ls.count - ls.own_count,
                    own=ls.own_count,
                    split=ls.split,
                    bits=ls.bits,
                    kind=ls.kind,
                    codebook_size=ls.k,
                    bytes_codes=ls.nbytes["codes"],
                    bytes_masks=ls.nbytes["masks"],
                    bytes_codebooks=ls.nbytes["codebooks"],
                    bits_per_own_weight=8 * payload / ls.own_count if ls.own_count else 0.0,
                    mask_bits_per_position=8 * ls.nbytes["masks"] / n if n else 0.0,
                )
            )
        comp = {c: lengths[f"task/{ts.task}/{c}"] for c in _TASK_COMPONENTS}
        comp["metadata"] = lengths[f"task/{ts.task}/meta"]
        for c, v in comp.items():
            totals[c] += v
        count = sum(lr.count for lr in layer_reports)
        own = sum(lr.own for lr in layer_reports)
        task_reports.append(
            TaskReport(
                task=ts.task,
                meta=dict(ts.meta),
                layers=layer_reports,
                density=count / n_total if n_total else 0.0,
                union_density=ts.union_count / n_total if n_total else 0.0,
                shared=count - own,
                own=own,
                bytes=comp,
            )
        )
    totals["base"] = base_bytes
    # Header, model section and section table: everything not inside a task's data sections.
    totals["metadata"] += file_size - sum(totals.values())
    return StoreReport(
        path=path,
        model_fingerprint=fingerprint,
        bit_budget=budget,
        positions=n_total,
        num_tasks=len(tasks),
        file_size=file_size,
        union_density=task_reports[-1].union_density if task_reports else 0.0,
        tasks=task_reports,
        bytes=totals,
    )


def _fmt_bytes(n: int) -> str:
    for unit, scale in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


LEGEND = """\
columns (per task and layer; bytes are real bytes of the file):
  density  fraction of the layer's positions in the task's mask
  shared   mask positions that reuse a value an earlier task stored (frozen)
  own      positions holding this task's own new codes
  split    own codes placed in positions that already hold an earlier task's code (TSN split)
  bits     bits per own code; 32 = stored as fp32, not quantized
  k        codebook size (0: no codebook)
  pattern  the pruning pattern the task was compressed with (- : not recorded)
  codes / masks / cbook  bytes of the own codes, of the compressed mask, of the codebook
  b/own    bits per own weight, codebook included
  latency  median latency of the committed task on the target it was searched for
  M_t      density of the union of all tasks' masks after this task"""


def _latency(meta: dict) -> str:
    ms = meta.get("latency_ms")
    if not isinstance(ms, int | float):
        return "latency -"
    return f"latency {ms:.4f} ms on {meta.get('latency_target', '?')}"


def format_report(report: StoreReport, as_json: bool = False, legend: bool = True) -> str:
    """A plain-text table per task and layer (with a legend of its columns), or the whole
    report as JSON."""
    if as_json:
        return json.dumps(report.to_dict(), indent=2, sort_keys=False)
    lines = [
        f"store {report.path}  model {report.model_fingerprint}  budget {report.bit_budget} bits",
        f"{report.num_tasks} tasks, {report.positions} positions, union density "
        f"{report.union_density:.4f}, file {report.file_size} B = "
        f"{report.ratio_to_dense_fp32:.4f} x dense fp32",
        "  ".join(f"{c} {_fmt_bytes(report.bytes[c])}" for c in COMPONENTS if c != "base"),
    ]
    lines.append(
        f"base {report.bytes['base']} B (a fixed signed-constant backbone every task reads and "
        "none owns: 1 sign bit per position + one fp32 scale per layer)" if report.has_base
        else "base none (every value a task reads is a code some task owns)")
    lines += [
        "",
        f"{'task':>4} {'layer':<24} {'density':>8} {'shared':>9} {'own':>9} {'split':>7} "
        f"{'bits':>4} {'k':>5} {'pattern':>12} {'codes':>9} {'masks':>9} {'cbook':>7} "
        f"{'b/own':>6}",
    ]
    for t in report.tasks:
        for lr in t.layers:
            pattern = str(t.meta.get(f"pattern/{lr.name}", "-"))
            lines.append(
                f"{t.task:>4} {lr.name[:24]:<24} {lr.density:>8.4f} {lr.shared:>9} {lr.own:>9} "
                f"{lr.split:>7} {lr.bits:>4} {lr.codebook_size:>5} {pattern[:12]:>12} "
                f"{lr.bytes_codes:>9} {lr.bytes_masks:>9} {lr.bytes_codebooks:>7} "
                f"{lr.bits_per_own_weight:>6.2f}"
            )
        name = f", name {t.meta['name']}" if "name" in t.meta else ""
        lines.append(
            f"{t.task:>4} {'(task total)':<24} {t.density:>8.4f} {t.shared:>9} {t.own:>9} "
            f"{'':>7} {'':>4} {'':>5} {'':>12} {t.bytes['codes']:>9} {t.bytes['masks']:>9} "
            f"{t.bytes['codebooks']:>7}  tensors {t.bytes['tensors']} B, meta "
            f"{t.bytes['metadata']} B, M_t {t.union_density:.4f}, {_latency(t.meta)}{name}"
        )
    if legend:
        lines += ["", LEGEND]
    return "\n".join(lines)
