"""NISPA invariants (docs/methods.md): exact density after every rewiring, no plastic->stable
link after any phase, stable sets only grow, frozen links never move, the phase schedule and
its stopping rule."""

from __future__ import annotations

import math
from collections.abc import Iterator

import pytest
import torch

from pipeline.compress import task_tensors, trained_layers
from pipeline.data import Split, Task
from pipeline.errors import PipelineError
from pipeline.evaluation import snapshot_logits
from pipeline.methods import NISPA, Phase, TaskMasks, task_snapshot
from pipeline.methods._units import source_units
from pipeline.methods.clnp import link_mask
from pipeline.methods.nispa import phase_share, top_share
from pipeline.recipe import NISPAMethod, TrainConfig
from pipeline.store import LayerCommit, PackedStore, TaskCommit
from tests.pipeline_tests._tiny import learn_task, tiny_mlp, tiny_task

CFG = TrainConfig(lr=0.01, epochs=2, batch_size=16, eval_batch_size=32)
SMALL = NISPAMethod(density=0.3, phase_epochs=1, k=5, margin=50.0)


def _method(cfg: NISPAMethod = SMALL) -> NISPA:
    method = NISPA(tiny_mlp(hidden=(24, 24)), cfg)
    method.setup()
    return method


def _learn(method: NISPA, t: int) -> TaskMasks:
    return learn_task(method, tiny_task(t), CFG)


def _check_structure(method: NISPA, stable: dict[str, torch.Tensor]) -> None:
    """Exact density, and no link from a plastic unit into a ``stable`` unit."""
    src = source_units(method.model, stable)
    for n, layer in method.model.masked_layers().items():
        conn = method.conn[n]
        assert int(conn.sum()) == method.budget[n], n
        assert not (conn & link_mask(stable[n], ~src[n])).any(), n
        assert not layer.weight.detach()[~conn].any(), "weights outside the links are 0"


def test_phase_share_and_top_share() -> None:
    assert phase_share(0, 30) == 1.0 and phase_share(15, 30) == pytest.approx(0.5)
    assert phase_share(30, 30) == pytest.approx(0.0)
    acts = torch.tensor([0.1, 0.5, 0.0, 0.3, 0.1])  # total 1.0
    assert top_share(acts, 0.5).tolist() == [False, True, False, False, False]
    assert top_share(acts, 0.8).tolist() == [False, True, False, True, False]
    assert top_share(acts, 0.85).tolist() == [True, True, False, True, False]  # ties: position
    assert top_share(acts, 1.0).tolist() == [True, True, False, True, True]
    assert not top_share(torch.zeros(4), 0.5).any()


def test_setup_draws_exactly_the_density() -> None:
    method = _method()
    for n, layer in method.model.masked_layers().items():
        assert int(method.conn[n].sum()) == round(0.3 * layer.weight.numel())
        assert torch.equal(layer.weight.detach() != 0, method.conn[n])


def test_density_is_exact_and_no_plastic_to_stable_link_after_every_phase() -> None:
    method = _method()
    original = method.phases
    seen: list[str] = []

    def checked(task: int) -> Iterator[Phase]:
        for phase in original(task):
            _check_structure(method, method.working)  # right after the rewiring
            assert phase.mode.masks is not None
            for n, c in method.conn.items():  # the phase runs on the current links
                assert torch.equal(phase.mode.masks[n], c)
            seen.append(phase.name)
            yield phase

    method.phases = checked  # type: ignore[method-assign]
    previous = {n: s.clone() for n, s in method.stable.items()}
    for t in range(3):
        masks = _learn(method, t)
        _check_structure(method, method.stable)
        for n in method.stable:
            assert not (previous[n] & ~method.stable[n]).any(), "stable sets only grow"
            # the task's mask is every link into a stable unit
            assert torch.equal(masks.mask[n],
                               method.conn[n] & method.stable[n][:, None])
            assert torch.equal(masks.own[n] | masks.shared[n], masks.mask[n])
            assert not (masks.own[n] & masks.shared[n]).any()
            assert masks.stats[f"density.{n}"] == method.budget[n] / method.conn[n].numel()
            previous[n] = method.stable[n].clone()
        last = list(method.model.masked_layers())[-1]
        assert not method.model.heads[t].weight.detach()[:, ~method.stable[last]].any()
    assert len(seen) >= 6 and "phase 2" in seen


def test_frozen_links_never_move_and_earlier_logits_stay_bit_identical() -> None:
    method = _method()
    model = method.model
    frozen: dict[str, torch.Tensor] = {}
    original = method.after_backward
    steps: list[int] = []

    def check_then_gate(task: int) -> None:
        for n, layer in model.masked_layers().items():
            rows = method.stable[n]
            assert torch.equal(layer.weight.detach()[rows], frozen[n][rows]), (task, n)
        steps.append(task)
        original(task)

    method.after_backward = check_then_gate  # type: ignore[method-assign]
    probe = torch.randn(20, 1, 1, 8, generator=torch.Generator().manual_seed(9))
    logits, masks = [], []
    for t in range(3):
        frozen = {n: m.weight.detach().clone() for n, m in model.masked_layers().items()}
        masks.append(_learn(method, t))
        logits.append(snapshot_logits(model, task_snapshot(model, masks[t].mask, t), t, probe, 10))
    for t in range(3):
        now = snapshot_logits(model, task_snapshot(model, masks[t].mask, t), t, probe, 10)
        assert torch.equal(now, logits[t]), t
    assert set(steps) == {0, 1, 2}



def test_a_phase_below_best_minus_margin_reverts_to_the_phase_before(
        monkeypatch: pytest.MonkeyPatch) -> None:
    scripted = iter([50.0, 60.0, 70.0, 10.0])  # phase 4 falls below 70 - margin
    monkeypatch.setattr("pipeline.methods.nispa.evaluate_live",
                        lambda *a, **k: (next(scripted), 0.0))
    method = _method(NISPAMethod(density=0.3, phase_epochs=1, k=30, margin=5.0))
    model = method.model
    task = tiny_task(0)
    model.add_task(task.num_classes)
    method.begin_task(0, None, task)
    gen = method.phases(0)
    kept = None
    for i, _phase in enumerate(gen, start=1):
        with torch.no_grad():  # stand-in for training: every phase leaves its own weights
            for layer in model.masked_layers().values():
                layer.weight.mul_(1.5)
        if i == 3:
            kept = {n: m.weight.detach().clone() for n, m in model.masked_layers().items()}
    assert kept is not None
    assert method.stats["phases_accepted"] == 3.0
    assert method.stats["p_at_stop"] == pytest.approx(phase_share(2, 30))
    for n, m in model.masked_layers().items():
        assert torch.equal(m.weight.detach(), kept[n])


def test_the_schedule_stops_once_p_falls_to_min_p() -> None:
    method = _method(NISPAMethod(density=0.3, phase_epochs=1, k=3, min_p=0.3, margin=100.0))
    task = tiny_task(0)
    method.model.add_task(task.num_classes)
    method.begin_task(0, None, task)
    assert [p.name for p in method.phases(0)] == ["phase 1", "phase 2"]  # p_2 = 0.25
    assert method.stats["phases_accepted"] == 2.0
    assert math.isclose(method.stats["p_at_stop"], 0.75)


def test_links_the_compression_pruned_regrow_into_plastic_units(tmp_path) -> None:  # noqa: ANN001
    method = _method()
    masks = _learn(method, 0)
    layers = trained_layers(method, 0, masks)
    gen = torch.Generator().manual_seed(0)
    for r in layers.values():  # prune half of the task's own links, as a compression would
        drop = r.own & (torch.rand(r.own.shape, generator=gen) < 0.5)
        r.mask, r.own = r.mask & ~drop, r.own & ~drop
    store = PackedStore.create(tmp_path / "s.tpk", method.model.layer_shapes(), "tiny", 32)
    store.commit(TaskCommit(0, {n: LayerCommit(r.mask, r.own, 32, r.values)
                                for n, r in layers.items()},
                            task_tensors(method.model, 0), {"num_classes": 3}))
    method.after_commit(0, store)
    _check_structure(method, method.stable)
    for n, layer in method.model.masked_layers().items():
        rows = method.stable[n][:, None]
        assert torch.equal(method.conn[n] & rows, layers[n].mask)  # stable rows: what is held
        assert torch.equal(layer.weight.detach() * rows,
                           torch.where(layers[n].mask, layers[n].values, 0.0))


def test_no_validation_data_is_a_clear_error() -> None:
    method = _method()
    task = tiny_task(0)
    empty = Task(0, "t", 3, task.train, Split(task.val.x[:0], task.val.y[:0]), task.test)
    method.model.add_task(3)
    method.begin_task(0, None, empty)
    with pytest.raises(PipelineError, match="no validation examples"):
        next(iter(method.phases(0)))
