"""The search's compressor passes the Compressor contract (tests/pipeline_tests).

Latency comes from a deterministic function of the compiled module passed as ``latency_fn``
(fewer nonzero weights = faster), so the contract runs in seconds; the end-to-end search test
measures real TVM builds.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from pipeline.compress import Compressor
from search import Latency, SearchCompressor
from tests.pipeline_tests.test_compressor_contract import CompressorContract


def nonzeros_latency(module: nn.Module, example: torch.Tensor) -> Latency:
    ws = [m.weight for m in module.modules() if isinstance(m, nn.Linear)]
    ms = 0.01 + sum(int((w != 0).sum()) for w in ws) / sum(w.numel() for w in ws)
    return Latency(ms, ms * 1.1)


class TestSearchCompressor(CompressorContract):
    extra: ClassVar[dict] = {"search": {
        "enabled": True, "trials": 3, "sampler": "random",
        "space": [{"match": ".*", "sparsity": [0.3, 0.6], "sparsity_step": 0.3,
                   "patterns": ["unstructured"], "bits": [8]}],
        "constraints": {"max_acc_drop": None},
        "selection": {"policy": "min_latency_within_acc_drop", "value": 100.0}}}

    def make(self, recipe) -> Compressor:  # noqa: ANN001
        return SearchCompressor(recipe, latency_fn=nonzeros_latency)


class TestSearchCompressorCLNP(TestSearchCompressor):  # "CLNP + search"
    method: ClassVar[dict] = {"kind": "clnp", "margin": 2.0, "threshold_step": 0.05}


class TestSearchCompressorNISPA(TestSearchCompressor):  # "NISPA + search"
    method: ClassVar[dict] = {"kind": "nispa", "density": 0.3, "phase_epochs": 1, "k": 4}


class TestSearchCompressorPackNet(TestSearchCompressor):  # "PackNet + search"
    method: ClassVar[dict] = {"kind": "packnet", "prune_fraction": 0.3, "retrain_epochs": 1}


class TestSearchCompressorExSSNeT(TestSearchCompressor):  # "ExSSNeT + search"
    method: ClassVar[dict] = {"kind": "exssnet", "density": 0.3, "mask_epochs": 1,
                              "weight_epochs": 1}


class TestSearchCompressorSupSup(TestSearchCompressor):  # "SupSup + search": masks only
    method: ClassVar[dict] = {"kind": "supsup", "density": 0.5}
    extra: ClassVar[dict] = {"search": {
        **TestSearchCompressor.extra["search"],
        "space": [{"match": ".*", "sparsity": [0.3, 0.6], "sparsity_step": 0.3,
                   "patterns": ["block(4,1)"], "bits": [4, 8]}]}}

    def test_the_mask_is_pruned_in_blocks_and_nothing_is_own(self, tmp_path) -> None:  # noqa: ANN001
        from pipeline.compress import Pattern, group_ids

        s, ctx = self._session(tmp_path)
        out = self.make(s.recipe).compress(s, ctx)
        import optuna
        from optuna.storages.journal import JournalFileBackend

        from search import study_name

        journal = JournalFileBackend(str(s.run_dir / "search" / "task-0.journal"))
        study = optuna.load_study(study_name=study_name(s.recipe, 0),
                                  storage=optuna.storages.JournalStorage(journal))
        params = {k for t in study.trials for k in t.params}
        assert params and not any(k.endswith(".bits") for k in params)  # no bits to choose
        for name, r in out.layers.items():
            assert not r.own.any() and r.bits == 32
            assert out.stats[f"{name}.pruned"] >= 0.3 - 1 / int(ctx.masks.mask[name].sum())
            before = ctx.masks.mask[name]
            removed = before & ~r.mask
            ids = group_ids(tuple(r.mask.shape), Pattern.parse("block(4,1)"), r.mask.device)
            # a removed position's whole 4x1 block is gone from the mask
            assert not torch.isin(ids[r.mask], ids[removed]).any()


def test_trials_fine_tune_at_search_finetune_lr_else_a_tenth_of_train_lr(tmp_path) -> None:  # noqa: ANN001
    from pipeline.recipe import recipe_from_dict
    from tests.pipeline_tests._tiny import trained_tiny_session

    for extra, want in [({}, 0.002 / 10), ({"finetune_lr": 0.003}, 0.003)]:
        recipe = recipe_from_dict({
            "name": "lr", "output_dir": str(tmp_path / "runs"),
            "method": {"kind": "tsn", "density": 0.5}, "train": {"lr": 0.002},
            "targets": [{"name": "host", "backend": "eager"}],
            "search": {"enabled": True, "finetune_epochs": 0.5, **extra}})
        s, ctx = trained_tiny_session(recipe, tmp_path / f"{want}.tpk", tmp_path / f"run{want}")
        compressor = SearchCompressor(recipe, latency_fn=nonzeros_latency)
        problem = compressor.task_problem(s, ctx, compressor.task_space(s))
        assert problem.lr == want and problem.finetune_epochs == 0.5
        assert problem.reference_accuracy == problem.ctx.accuracy(problem.trained)
