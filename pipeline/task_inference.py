"""Evaluation without a task id: SupSup's One-Shot and Binary task inference, for any method.

Every committed task ``i`` is a set of tensors theta_i read from the store: its masked weights
(already ``W * m_i``) and its own tensors (head, per-task BN). Tasks whose tensors have one shape
(equal class counts) can be put in *superposition*: theta(alpha) = sum_i alpha_i theta_i. With
H the output entropy of the superposed net, theta linear in alpha gives

    dH/dalpha_i = sum_k < dH/dtheta_k , theta_{i,k} >

so one backward pass (to the superposed tensors) and one matrix product with the stacked tasks
(``theta``, T x P) give the gradient for every task at once; hundreds of tasks cost one matmul.

- **One-Shot**: alpha_i = 1/T; the task with the most negative dH/dalpha_i.
- **Binary**: alpha uniform over the candidates; keep the half (rounded up) with the smallest
  gradient; repeat until one is left (ceil(log2 T) rounds).
- **Per sample** (``infer_per: sample``): one decision per input, from that input's own entropy
  (per-sample gradients with ``torch.func.vmap``). **Per batch**: one decision per test batch,
  from the entropy of its first input; a wrong decision makes the whole batch use the wrong task.

Per-task BN, the rule: BN tensors are superposed like the weights (running mean, running
variance and affine parameters of task i, mixed by the same alpha_i); integer counters are not
mixed. The running statistics enter dH/dalpha as constants (PyTorch's BN kernel gives them no
gradient), so with per-task BN the gradient covers weights, heads and BN affine parameters.
Stateless BN (batch statistics) has no per-task tensors; per batch the whole test batch is run so
its statistics exist, and per sample is refused by the recipe (one input has no statistics).

Objectives (``evaluation.objective``): SupSup's **H**, the output entropy, or its **G**, the
log-sum-exp of the outputs with the real classes' logits held constant: G reads the superfluous
outputs of a shared head wider than the class count (``model.head_outputs``), which every task's
cross-entropy pushes down through its own mask, so the right task lowers G most.

Deviations from SupSup: the gradient is taken w.r.t. the superposed tensors instead of by
autograd through alpha (the same number, see tests); superposition covers every per-task tensor,
not only masks, so it works for any method (WSN, TSN, ExSSNeT, SupSup) whose tasks share tensor
shapes.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch.func import functional_call, grad, vmap

from pipeline.data import Split
from pipeline.errors import InputError
from pipeline.evaluation import snapshot_logits
from pipeline.models import ContinualNet

__all__ = ["Superposition", "build_superposition", "entropy", "entropy_grads",
           "evaluate_inferred", "infer_tasks", "objective", "superfluous_lse"]

Inference = Literal["one_shot", "binary"]
InferPer = Literal["sample", "batch"]
Objective = Callable[[torch.Tensor], torch.Tensor]  # logits (B, O) -> one value per row (B,)

# per-sample gradients are computed in chunks holding at most this many floats (128 MB)
_CHUNK_FLOATS = 1 << 25


@dataclass
class Superposition:
    """The committed tasks ``tasks`` stacked: row i of ``theta`` is task ``tasks[i]``'s float
    tensors, flattened in the order of ``names`` (keys as task 0 names them); the first
    ``differentiable`` of them are the ones the entropy's gradient flows to."""

    names: list[str]
    shapes: list[torch.Size]
    theta: torch.Tensor
    fixed: dict[str, torch.Tensor]  # non-float tensors (BN counters), task 0's
    tasks: list[int]
    differentiable: int

    @property
    def width(self) -> int:
        """Columns of ``theta`` that hold differentiable tensors."""
        return sum(math.prod(s) for s in self.shapes[:self.differentiable])

    def mix(self, alpha: torch.Tensor) -> dict[str, torch.Tensor]:
        """theta(alpha) = sum_i alpha_i theta_i, keyed like the model's state dict (only the
        tasks with alpha_i != 0 are read)."""
        alpha = alpha.to(self.theta)
        used = alpha.nonzero().flatten()
        if len(used) == len(alpha):
            return self._split(alpha @ self.theta)
        return self._split(alpha[used] @ self.theta[used])

    def to(self, device: torch.device | str) -> Superposition:
        """The same stack on ``device`` (move it once, beside the model)."""
        return Superposition(self.names, self.shapes, self.theta.to(device),
                             {k: v.to(device) for k, v in self.fixed.items()}, self.tasks,
                             self.differentiable)

    def _split(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        return self._unflatten(flat, self.names, self.shapes)

    def _split_parts(self, grads: torch.Tensor, stats: torch.Tensor) -> dict[str, torch.Tensor]:
        """``_split`` of a flat vector given as its differentiable and its statistics part
        (kept apart so no statistic is a view of a tensor that requires grad)."""
        d = self.differentiable
        return (self._unflatten(grads, self.names[:d], self.shapes[:d])
                | self._unflatten(stats, self.names[d:], self.shapes[d:]))

    @staticmethod
    def _unflatten(flat: torch.Tensor, names: list[str],
                   shapes: list[torch.Size]) -> dict[str, torch.Tensor]:
        parts = flat.split([math.prod(s) for s in shapes], dim=-1)
        return {n: p.reshape(*flat.shape[:-1], *s)
                for n, p, s in zip(names, parts, shapes, strict=True)}


def _canonical(model: ContinualNet, task: int) -> dict[str, str]:
    """Task ``task``'s own tensor names -> the names task 0 gives the same tensors."""
    own = model.task_param_names(task)
    return {n: _rename(n, task) for n in own}


def _rename(name: str, task: int) -> str:
    name = re.sub(rf"^heads\.{task}\.", "heads.0.", name)
    return re.sub(rf"\.norms\.{task}\.", ".norms.0.", name)


def build_superposition(model: ContinualNet,
                        snapshots: dict[int, dict[str, torch.Tensor]]) -> Superposition:
    """Stack the committed tasks' snapshots; every task must have the same tensor shapes."""
    if not snapshots:
        raise ValueError("task inference needs at least one committed task")
    tasks = sorted(snapshots)
    first: dict[str, torch.Tensor] | None = None
    rows = []
    for t in tasks:
        rename = _canonical(model, t)
        snap = {rename.get(k, k): v for k, v in snapshots[t].items()}
        if first is None:
            first = snap
        else:
            _same_shapes(first, snap, tasks[0], t)
        rows.append(torch.cat([snap[k].detach().flatten().float() for k in _order(snap)]))
    assert first is not None
    names = _order(first)
    grads = sum(not _is_stat(k) for k in names)
    return Superposition(names, [first[k].shape for k in names], torch.stack(rows),
                         {k: v for k, v in first.items() if not v.is_floating_point()}, tasks,
                         grads)


def _is_stat(name: str) -> bool:
    return name.endswith((".running_mean", ".running_var"))


def _order(snap: dict[str, torch.Tensor]) -> list[str]:
    """Float tensors, the differentiable ones first, then BN statistics."""
    floats = sorted(k for k, v in snap.items() if v.is_floating_point())
    return [k for k in floats if not _is_stat(k)] + [k for k in floats if _is_stat(k)]


def _same_shapes(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], ta: int,
                 tb: int) -> None:
    for k in sorted(a.keys() | b.keys()):
        sa = tuple(a[k].shape) if k in a else None
        sb = tuple(b[k].shape) if k in b else None
        if sa != sb:
            raise InputError(f"task inference needs tasks of one shape (the same class count), "
                             f"but {k} is {sa} for task {ta} and {sb} for task {tb}")


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Shannon entropy (nats) of the softmax of each row: SupSup's H."""
    logp = torch.log_softmax(logits, dim=-1)
    return -(logp.exp() * logp).sum(-1)


def superfluous_lse(logits: torch.Tensor, classes: int) -> torch.Tensor:
    """SupSup's G for each row: log-sum-exp of every output, the first ``classes`` (the real
    classes) held constant, so its gradient comes from the superfluous outputs only."""
    real, extra = logits[..., :classes].detach(), logits[..., classes:]
    return torch.logsumexp(torch.cat([real, extra], dim=-1), dim=-1)


def objective(kind: Literal["entropy", "superfluous"], classes: int | None = None) -> Objective:
    """The function of the logits whose gradient w.r.t. the mixing coefficients infers the
    task; ``superfluous`` needs the real class count, below the head's outputs."""
    if kind == "entropy":
        return entropy
    if classes is None:
        raise ValueError("the superfluous objective needs the real class count")
    return lambda logits: superfluous_lse(logits, classes)


def entropy_grads(model: ContinualNet, sup: Superposition, alpha: torch.Tensor,
                  x: torch.Tensor, per: InferPer, batch_stats: bool = False,
                  among: torch.Tensor | None = None, fn: Objective = entropy) -> torch.Tensor:
    """dH/dalpha_i for every stacked task i, at mixture ``alpha`` (T,); with ``among`` (a bool
    mask over the T tasks) only for those tasks, +inf for the others.

    ``per="sample"``: shape (B, T), each row the gradient of that input's entropy. ``per="batch"``:
    shape (1, T), the gradient of the first input's entropy (the whole batch is run when
    ``batch_stats``, since BN then normalises with the batch). The model must be in eval mode
    with its masked layers in ``dense`` mode. ``fn``: the objective (default H, the entropy).
    """
    sup = sup.to(x.device)  # a no-op when it is there already
    rows = None if among is None else among.to(x.device).nonzero().flatten()
    theta = (sup.theta if rows is None else sup.theta[rows])[:, :sup.width]
    mixed = sup.mix(alpha.to(x.device))
    names = sup.names[:sup.differentiable]
    params = {k: mixed[k] for k in names}
    const = {k: v for k, v in mixed.items() if k not in params}
    const |= sup.fixed

    def h(p: dict[str, torch.Tensor], xb: torch.Tensor) -> torch.Tensor:
        logits = functional_call(model, {**p, **const}, (xb,), {"task": 0}, strict=False)
        return fn(logits[:1]).sum()

    with torch.enable_grad():
        if per == "batch":
            g = grad(h)(params, x if batch_stats else x[:1])
            out = torch.cat([g[k].flatten() for k in names]).unsqueeze(0) @ theta.T
        else:
            chunk = max(1, _CHUNK_FLOATS // max(1, theta.shape[1]))
            per_sample = vmap(grad(lambda p, xi: h(p, xi.unsqueeze(0))), in_dims=(None, 0))
            parts = []
            for i in range(0, len(x), chunk):
                g = per_sample(params, x[i:i + chunk])
                parts.append(torch.cat([g[k].flatten(1) for k in names], dim=1) @ theta.T)
            out = torch.cat(parts)
    if rows is None:
        return out
    full = out.new_full((len(out), len(sup.tasks)), math.inf)
    full[:, rows] = out
    return full


def _grads_per_input(model: ContinualNet, sup: Superposition, alphas: torch.Tensor,
                     x: torch.Tensor, fn: Objective = entropy) -> torch.Tensor:
    """dH_b/dalpha_{b,i} (B, T) where input b has its own mixture ``alphas[b]``: the mixtures
    are one matmul (B x T @ T x P) and their gradients one vmap, in chunks."""
    theta = sup.theta[:, :sup.width]
    chunk = max(1, _CHUNK_FLOATS // (2 * max(1, sup.theta.shape[1])))

    def h(pg: torch.Tensor, pc: torch.Tensor, xi: torch.Tensor) -> torch.Tensor:
        p = sup._split_parts(pg, pc)
        logits = functional_call(model, {**p, **sup.fixed}, (xi.unsqueeze(0),), {"task": 0},
                                 strict=False)
        return fn(logits).sum()

    per_input = vmap(grad(h), in_dims=(0, 0, 0))
    parts = []
    with torch.enable_grad():
        for i in range(0, len(x), chunk):
            mixed = alphas[i:i + chunk].to(sup.theta) @ sup.theta
            g = per_input(mixed[:, :sup.width], mixed[:, sup.width:], x[i:i + chunk])
            parts.append(g @ theta.T)
    return torch.cat(parts)


def infer_tasks(model: ContinualNet, sup: Superposition, x: torch.Tensor, inference: Inference,
                per: InferPer, batch_stats: bool = False, fn: Objective = entropy) -> torch.Tensor:
    """The inferred task (a committed task id) per input (``per="sample"``, shape (B,)) or for
    the batch (``per="batch"``, shape (1,))."""
    sup = sup.to(x.device)
    n = len(sup.tasks)
    rows = len(x) if per == "sample" else 1
    cand = torch.ones(rows, n, dtype=torch.bool, device=x.device)
    rounds = 1 if inference == "one_shot" else max(1, math.ceil(math.log2(n)))
    for _ in range(rounds):
        count = cand.sum(1)
        if bool((count <= 1).all()):
            break
        keep = torch.ones_like(count) if inference == "one_shot" else (count + 1) // 2
        groups = torch.unique(cand, dim=0)
        if len(groups) == 1:  # one mixture for every input: mix it once
            row = groups[0]
            g = entropy_grads(model, sup, row.float() / row.sum(), x, per, batch_stats,
                              among=row, fn=fn)
        else:  # per-sample candidate sets (Binary after its first round)
            g = _grads_per_input(model, sup, cand.float() / count.unsqueeze(1), x, fn)
            g = g.masked_fill(~cand, math.inf)
        ranks = g.argsort(dim=1, stable=True).argsort(dim=1, stable=True)
        cand = ranks < keep.unsqueeze(1)
    pos = cand.float().argmax(1)  # one candidate left per row
    return torch.tensor(sup.tasks, device=x.device)[pos]


def _guesses(model: ContinualNet, sup: Superposition, x: torch.Tensor, batch_size: int,
             inference: Inference, per: InferPer, batch_stats: bool,
             fn: Objective = entropy) -> torch.Tensor:
    """The inferred task of every input of ``x`` (per batch: its batch's decision)."""
    if per == "sample":
        return infer_tasks(model, sup, x, inference, "sample", fn=fn)
    if not batch_stats:
        # a batch's decision depends on its first input alone: decide them all at once
        firsts = infer_tasks(model, sup, x[::batch_size], inference, "sample", fn=fn)
        return firsts.repeat_interleave(batch_size)[:len(x)]
    return torch.cat([infer_tasks(model, sup, x[i:i + batch_size], inference, "batch",
                                  True, fn).expand(len(x[i:i + batch_size]))
                      for i in range(0, len(x), batch_size)])


@torch.no_grad()
def evaluate_inferred(model: ContinualNet, snapshots: dict[int, dict[str, torch.Tensor]],
                      sup: Superposition, task: int, split: Split, batch_size: int,
                      inference: Inference, per: InferPer,
                      fn: Objective = entropy) -> tuple[float, float]:
    """(accuracy %, task-inference accuracy %) of ``task``'s test inputs when their task is
    inferred among the superposed tasks; each input is classified by the task inferred for it
    (for its batch), from that task's committed tensors."""
    if len(split) == 0:
        return math.nan, math.nan
    batch_stats = any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
                      and not m.track_running_stats for m in model.modules())
    was_training = model.training
    model.eval()
    model.set_mode("dense")
    right = 0
    try:
        guess = _guesses(model, sup, split.x, batch_size, inference, per, batch_stats, fn)
        for i in range(0, len(split), batch_size):
            xb, yb, gb = (v[i:i + batch_size] for v in (split.x, split.y, guess))
            pred = torch.empty_like(yb)
            for t in gb.unique().tolist():
                idx = (gb == t).nonzero().flatten()
                logits = snapshot_logits(model, snapshots[t], t, xb[idx], batch_size)
                pred[idx] = logits.argmax(1)
            right += int((pred == yb).sum())
    finally:
        model.train(was_training)
    inferred_right = int((guess == task).sum())
    return 100.0 * right / len(split), 100.0 * inferred_right / len(split)
