"""Per-task Optuna search of sparsity, block pattern and bit-width per layer, scored by
validation accuracy, latency measured on the compiled model, and bytes added to the store.

``SearchCompressor`` is the ``Compressor`` the CLI hands the runner when ``search.enabled``; it
uses the pipeline's own compression passes (no second implementation).
"""

from __future__ import annotations

from search._compressor import SearchCompressor
from search._objective import Latency, LatencyFn, TaskProblem, TrialResult, apply_plan
from search._select import Point, pareto_front, select
from search._space import LayerSpace, resolve_space, suggest_plans
from search._storage import rdb_url
from search._study import study_name
from search._worker import run_worker
from search.objectives import Objective, ScoreContext, register_objective

__all__ = [
    "Latency",
    "LatencyFn",
    "LayerSpace",
    "Objective",
    "Point",
    "ScoreContext",
    "SearchCompressor",
    "TaskProblem",
    "TrialResult",
    "apply_plan",
    "run_worker",
    "pareto_front",
    "rdb_url",
    "register_objective",
    "resolve_space",
    "select",
    "study_name",
    "suggest_plans",
]
