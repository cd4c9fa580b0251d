"""Contract tests every ``Compressor`` passes; the search's compressor subclasses this in
tests/search_tests. A compressor returns, per layer, what the store can commit."""

from __future__ import annotations

from typing import ClassVar

import pytest
import torch

from pipeline.compress import Compressed, Compressor, PlanCompressor
from pipeline.recipe import recipe_from_dict
from pipeline.session import Session, TaskContext
from pipeline.store import LayerCommit, PackedStore, TaskCommit
from tests.pipeline_tests._tiny import trained_tiny_session


class CompressorContract:
    """Subclass with ``make`` returning the compressor and ``method`` naming a method section."""

    method: ClassVar[dict] = {"kind": "tsn", "density": 0.5, "prune": {"steps": 2},
                              "quantize": {"bits": [4, 8]}}
    extra: ClassVar[dict] = {}  # more recipe sections, e.g. ``search``

    def make(self, recipe) -> Compressor:  # noqa: ANN001
        raise NotImplementedError

    def _session(self, tmp_path) -> tuple[Session, TaskContext]:  # noqa: ANN001
        recipe = recipe_from_dict({"name": "c", "method": self.method,
                                   "output_dir": str(tmp_path),
                                   "compression": {"default": {"sparsity": 0.5, "bits": 4}},
                                   **self.extra})
        return trained_tiny_session(recipe, tmp_path / "s.tpk", tmp_path)

    def test_result_is_committable_and_within_the_trained_mask(self, tmp_path) -> None:  # noqa: ANN001
        s, ctx = self._session(tmp_path)
        out = self.make(s.recipe).compress(s, ctx)
        assert isinstance(out, Compressed)
        assert set(out.layers) == set(s.model.layer_shapes())
        for name, r in out.layers.items():
            assert not (r.mask & ~ctx.masks.mask[name]).any()  # never adds positions
            assert not (r.own & ~r.mask).any()
            assert all(isinstance(v, int | float) for v in out.stats.values())
        s.store.commit(TaskCommit(0, {n: LayerCommit(r.mask, r.own, r.bits, r.values, r.codebook)
                                      for n, r in out.layers.items()}, {}, {"name": "t"}))
        mat = PackedStore.open(s.store.path).materialize(0)
        for name, r in out.layers.items():  # the store holds exactly what was compressed
            assert torch.equal(mat[name], torch.where(r.mask, r.values, 0.0))


class TestPlanCompressor(CompressorContract):
    def make(self, recipe) -> Compressor:  # noqa: ANN001
        return PlanCompressor()

    def test_a_method_without_passes_commits_as_trained(self, tmp_path) -> None:  # noqa: ANN001
        self.method = {"kind": "wsn", "density": 0.5}
        s, ctx = self._session(tmp_path)
        s.method.compression = lambda: None  # type: ignore[method-assign]
        out = PlanCompressor().compress(s, ctx)
        assert out.stats == {}
        for name, m in s.model.masked_layers().items():
            assert out.layers[name].bits == 32
            assert torch.equal(out.layers[name].values, m.weight.detach())

    def test_the_default_plan_leaves_a_task_as_trained(self, tmp_path) -> None:  # noqa: ANN001
        s, ctx = trained_tiny_session(
            recipe_from_dict({"name": "c", "method": {"kind": "wsn", "density": 0.5},
                              "output_dir": str(tmp_path)}), tmp_path / "s.tpk", tmp_path)
        out = PlanCompressor().compress(s, ctx)
        for name, m in s.model.masked_layers().items():
            r = out.layers[name]
            assert r.bits == 32 and torch.equal(r.mask, ctx.masks.mask[name])
            assert torch.equal(r.values, m.weight.detach())


class TestPlanCompressorOnSupSup(CompressorContract):
    """A method whose tasks only mask the store's base: nothing own to compress, all shared."""

    method: ClassVar[dict] = {"kind": "supsup", "density": 0.3,  # every pruning step accepted
                              "prune": {"delta": 100.0, "step_fraction": 0.5}}

    def make(self, recipe) -> Compressor:  # noqa: ANN001
        return PlanCompressor()

    def test_masks_only_reach_the_store(self, tmp_path) -> None:  # noqa: ANN001
        s, ctx = self._session(tmp_path)
        out = self.make(s.recipe).compress(s, ctx)
        assert s.store.has_base and all(not r.own.any() for r in out.layers.values())

    def test_the_plan_prunes_the_mask_lowest_scores_first(self, tmp_path) -> None:  # noqa: ANN001
        s, ctx = self._session(tmp_path)  # the plan: sparsity 0.5, unstructured
        out = self.make(s.recipe).compress(s, ctx)
        for name, m in s.model.masked_layers().items():
            before, after = ctx.masks.mask[name], out.layers[name].mask
            assert int(after.sum()) <= int(before.sum()) - int(0.5 * int(before.sum()))
            score = m.score.detach().abs()
            # every removed position scores no higher than every kept one
            assert float(score[before & ~after].max()) <= float(score[after].min())
            assert out.stats[f"{name}.pruned"] == 1 - int(after.sum()) / int(before.sum())


class TestPlanCompressorPackNet(CompressorContract):  # "PackNet + TSN compression"
    method: ClassVar[dict] = {"kind": "packnet", "prune_fraction": 0.3, "retrain_epochs": 1,
                              "prune": {"steps": 2}, "quantize": {"bits": [4, 8]}}

    def make(self, recipe) -> Compressor:  # noqa: ANN001
        return PlanCompressor()


class TestPlanCompressorExSSNeT(TestPlanCompressorPackNet):  # "ExSSNeT + TSN compression"
    method: ClassVar[dict] = {"kind": "exssnet", "density": 0.3, "mask_epochs": 1,
                              "weight_epochs": 1, "prune": {"steps": 2},
                              "quantize": {"bits": [4, 8]}}


class TestPlanCompressorCLNP(CompressorContract):  # "CLNP + TSN compression"
    method: ClassVar[dict] = {"kind": "clnp", "margin": 2.0, "threshold_step": 0.05,
                              "prune": {"steps": 2}, "quantize": {"bits": [4, 8],
                                                                  "adaptive": True}}

    def make(self, recipe) -> Compressor:  # noqa: ANN001
        return PlanCompressor()


class TestPlanCompressorNISPA(TestPlanCompressorCLNP):  # "NISPA + TSN compression"
    method: ClassVar[dict] = {"kind": "nispa", "density": 0.3, "phase_epochs": 1, "k": 4,
                              "prune": {"steps": 2}, "quantize": {"bits": [4, 8]}}


def test_compressor_is_abstract() -> None:
    with pytest.raises(TypeError):
        Compressor()  # type: ignore[abstract]
