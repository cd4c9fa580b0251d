"""Contract tests every registered continual-learning method passes (Optuna-style).

A new method is tested by one subclass of ``MethodContract`` naming its ``method`` section. The
last subclass is a method defined only in this module and registered through
``register_method``: the runner runs it end to end without knowing it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

import pytest
import torch

from pipeline.compress import PlanCompressor
from pipeline.methods import Method, Phase, TaskMasks, build_method, method_class, register_method
from pipeline.recipe import MethodConfig, Recipe, TrainConfig, recipe_from_dict
from pipeline.runner import run_recipe
from pipeline.store import PackedStore
from pipeline.tracking import NoopRun, NoopTracker
from pipeline.train import train_task
from tests.pipeline_tests._tiny import tiny_mlp, tiny_task


class MethodContract:
    """Subclass with ``method`` (the recipe's method section) to test a method."""

    method: ClassVar[dict[str, Any]]

    def recipe(self, tmp_path: Path | None = None, **extra: Any) -> Recipe:
        data: dict[str, Any] = {
            "name": "contract", "method": self.method,
            "benchmark": {"stream": "permuted_mnist", "tasks": 2, "train_limit": 600,
                          "test_limit": 200, "val_fraction": 0.2},
            "model": {"arch": "mlp", "hidden": [32, 32]},
            "train": {"epochs": 2, "lr": 0.01, "batch_size": 32, "eval_batch_size": 100},
            "compression": {"default": {"sparsity": 0.3, "bits": 8}},
        }
        if tmp_path is not None:
            data["output_dir"] = str(tmp_path / "runs")
        return recipe_from_dict(data | extra)

    def test_kind_is_registered_and_builds(self) -> None:
        recipe = self.recipe()
        method = build_method(tiny_mlp(), recipe)
        assert type(method) is method_class(self.method["kind"])
        assert method.cfg == recipe.method

    def test_end_task_masks_partition_the_mask(self) -> None:
        model = tiny_mlp()
        method = build_method(model, self.recipe())
        for t in range(2):
            task = tiny_task(t)
            model.add_task(task.num_classes)
            method.begin_task(t, None, task)  # as the runner calls it: with the task's data
            train_task(method, t, task, TrainConfig(lr=0.01, epochs=1, batch_size=16))
            masks = method.end_task(t)
            assert isinstance(masks, TaskMasks)
            for name, shape in model.layer_shapes().items():
                m, own, shared = masks.mask[name], masks.own[name], masks.shared[name]
                assert m.dtype == own.dtype == shared.dtype == torch.bool
                assert tuple(m.shape) == shape
                assert torch.equal(own | shared, m) and not (own & shared).any()

    def test_phases_name_trainable_tensors(self) -> None:
        model = tiny_mlp()
        method = build_method(model, self.recipe())
        model.add_task(3)
        method.begin_task(0, None, tiny_task(0))
        phases = list(method.phases(0))
        assert phases and all(isinstance(p, Phase) for p in phases)
        assert all(p.param_groups and all("params" in g for g in p.param_groups) for p in phases)

    @pytest.mark.slow
    def test_two_tasks_run_end_to_end_without_forgetting(self, tmp_path: Path) -> None:
        recipe = self.recipe(tmp_path)
        result = run_recipe(recipe, compressor=PlanCompressor())
        rows = result.matrix.as_list()
        assert rows[1][0] == rows[0][0] and result.bwt == 0.0  # re-measured from the store
        assert all(a > 20.0 for a in result.matrix.final), result.matrix.final  # chance: 10%
        store = PackedStore.open(result.store_path)
        assert store.num_tasks == 2
        assert store.report().as_metrics()["store/bytes_total"] == result.store_path.stat().st_size

    @pytest.mark.gpu
    def test_two_tasks_run_on_the_gpu_without_forgetting(self, tmp_path: Path) -> None:
        # everything a method reads from the store must reach the model's device
        # (Method.from_store); this is where a method that forgets to move it fails
        recipe = self.recipe(tmp_path, train={**self.recipe().train.model_dump(),
                                              "device": "cuda"})
        result = run_recipe(recipe, compressor=PlanCompressor())
        rows = result.matrix.as_list()
        assert rows[1][0] == rows[0][0] and result.bwt == 0.0


    @pytest.mark.slow
    def test_a_stopped_run_resumes_to_the_same_store(self, tmp_path: Path) -> None:
        small = {"benchmark": {"stream": "permuted_mnist", "tasks": 3, "train_limit": 200,
                               "test_limit": 50, "val_fraction": 0.2},
                 "train": {"epochs": 1, "lr": 0.01, "batch_size": 32, "eval_batch_size": 50}}
        whole = run_recipe(self.recipe(tmp_path / "whole", **small))
        stopped = self.recipe(tmp_path / "stopped", **small)
        with pytest.raises(_Stop):
            run_recipe(stopped, tracker=_StopAfterTask1())
        assert PackedStore.open(stopped.output_dir / stopped.name / "store.tpk").num_tasks == 2
        resumed = run_recipe(stopped)
        assert resumed.resumed_from == 2
        assert resumed.store_path.read_bytes() == whole.store_path.read_bytes()
        assert resumed.matrix.as_list() == whole.matrix.as_list()


class _Stop(Exception):
    pass


class _StopAfterTask1(NoopTracker):
    """Ends the run right after task 1 is committed and tracked, as a kill would."""

    def start(self, name: str, tags: dict[str, str] | None = None) -> NoopRun:
        parent = super().start(name, tags)

        def child(name: str, tags: dict[str, str] | None = None) -> NoopRun:
            run = NoopRun.child(parent, name, tags)
            if name == "task-1":
                def end(status: str = "FINISHED") -> None:
                    if status == "FINISHED":
                        raise _Stop
                run.end = end  # type: ignore[method-assign]
            return run

        parent.child = child  # type: ignore[method-assign]
        return parent


class TestWSN(MethodContract):
    method = {"kind": "wsn", "density": 0.5}


class TestTSNSplit(MethodContract):
    method = {"kind": "tsn", "density": 0.5, "policy": "split",
              "prune": {"steps": 2}, "quantize": {"bits": [4, 8]}}


class TestTSNReuseOnly(MethodContract):
    method = {"kind": "tsn", "density": 0.5, "policy": "reuse_only",
              "prune": {"steps": 2, "finetune_epochs": 0}, "quantize": {"bits": [8]}}


class TestPackNet(MethodContract):
    method = {"kind": "packnet", "prune_fraction": 0.5, "retrain_epochs": 1}


class TestExSSNeT(MethodContract):
    method = {"kind": "exssnet", "density": 0.3, "kkt": True, "kkt_k": 20}


class TestSupSup(MethodContract):
    method = {"kind": "supsup", "density": 0.3, "optimizer": "adam"}


# ``mask: rigl``: the same contract with the mask rewired every 2 steps (the updates run: the
# contract recipe has ~15 steps per epoch)
_RIGL = {"mask": "rigl", "rigl": {"interval": 2, "fraction": 0.5, "end": 1.0}}


class TestWSNRigL(MethodContract):
    method = {**TestWSN.method, **_RIGL}


class TestTSNSplitRigL(MethodContract):
    method = {**TestTSNSplit.method, **_RIGL}


class TestTSNReuseOnlyRigL(MethodContract):
    method = {**TestTSNReuseOnly.method, **_RIGL}


class TestExSSNeTRigL(MethodContract):
    method = {**TestExSSNeT.method, **_RIGL}


class TestCLNP(MethodContract):
    method = {"kind": "clnp", "l1": 1e-4, "margin": 1.0, "threshold_step": 0.05}


class TestCLNPCompressed(MethodContract):  # with the TSN passes: prune and quantize own links
    method = {"kind": "clnp", "margin": 1.0, "threshold_step": 0.05,
              "prune": {"steps": 2, "finetune_epochs": 1},
              "quantize": {"bits": [4, 8], "adaptive": True}}


class TestNISPA(MethodContract):
    method = {"kind": "nispa", "density": 0.3, "phase_epochs": 1, "k": 4, "margin": 2.0}


# ---- a method that exists only here, registered like any other --------------------------------
class FirstTaskConfig(MethodConfig):
    kind: Literal["test-first-task"] = "test-first-task"


class FirstTask(Method):
    """Task 0 trains the whole (dense) backbone; later tasks share it frozen and train only
    their head: the 'feature extractor' baseline, as a registered method."""

    def __init__(self, model, cfg, recipe=None) -> None:  # noqa: ANN001 - the Method signature
        super().__init__(model, cfg, recipe)
        self.held = {n: torch.zeros_like(m.weight, dtype=torch.bool)
                     for n, m in model.masked_layers().items()}

    def phases(self, task: int) -> list[Phase]:
        state = dict(self.model.named_parameters())
        groups = [{"params": [state[n] for n in self.model.task_param_names(task)
                              if n in state]}]
        if task == 0:
            groups.append({"params": [m.weight for m in self.model.masked_layers().values()]})
        return [Phase("train", groups)]

    def end_task(self, task: int) -> TaskMasks:
        mask = {n: torch.ones_like(h) for n, h in self.held.items()}
        own = {n: mask[n] & ~h for n, h in self.held.items()}
        shared = {n: mask[n] & h for n, h in self.held.items()}
        for n in self.held:
            self.held[n] = self.held[n] | mask[n]
        return TaskMasks(mask, own, shared)

    def after_commit(self, task: int, store: PackedStore) -> None:
        self.held = self.from_store(store.union_mask())
        values = self.from_store(store.current_values())
        with torch.no_grad():
            for n, m in self.model.masked_layers().items():
                m.weight.copy_(torch.where(self.held[n], values[n], m.weight))


register_method("test-first-task", FirstTaskConfig, FirstTask)


class TestMethodDefinedInATest(MethodContract):
    method = {"kind": "test-first-task"}


def test_registering_a_taken_kind_with_another_class_fails() -> None:
    class Other(FirstTask):
        pass

    with pytest.raises(ValueError, match="already registered"):
        register_method("test-first-task", FirstTaskConfig, Other)
    with pytest.raises(TypeError, match="must subclass"):
        register_method("test-not-a-method", FirstTaskConfig, dict)  # type: ignore[arg-type]
