"""Trial runs are easy to navigate in MLflow: named ``task-K/trial-N``, tagged with task, target
and method; the task's run carries the committed plan as params.

A real search (``SearchCompressor`` on a tiny trained TSN task, real Optuna journal study, real
eager compiler), tracked by the in-memory ``NoopRun``."""

from __future__ import annotations

from pathlib import Path

from tests.search_tests.test_trial_failures import TRIALS, _session


def test_trials_are_named_per_task_and_tagged(tmp_path: Path) -> None:
    from search import SearchCompressor

    s, ctx, run = _session(tmp_path)
    out = SearchCompressor(s.recipe).compress(s, ctx)
    trials = {c.run_id.removeprefix("task-0/"): c for c in run.children
              if "trial-" in c.run_id}
    assert sorted(trials) == [f"task-0/trial-{i}" for i in range(TRIALS)]
    for child in [*trials.values(), *(c for c in run.children if c not in trials.values())]:
        assert child.tags["taskpack.task"] == "0"
        assert child.tags["taskpack.target"] == "host"
        assert child.tags["taskpack.method"] == "tsn"
    # the committed plan: the task run's params, named like a trial's
    chosen = int(run.params["search.chosen_trial"])
    assert chosen == out.stats["search_chosen_trial"]
    plan = {k: v for k, v in run.params.items() if k != "search.chosen_trial"}
    assert plan and all(k.rsplit(".", 1)[1] in ("sparsity", "pattern", "bits") for k in plan)
    if chosen >= 0:
        assert plan == trials[f"task-0/trial-{chosen}"].params
    else:  # the dense reference
        assert plan == next(c for c in run.children if "dense" in c.run_id).params
