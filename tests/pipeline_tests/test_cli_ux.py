"""What a person sees from the CLI: where outputs go, log lines above the progress bars, "did you
mean" for typos, ``inspect``'s pattern, latency and legend, the shared tuning cache."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import pytest
import torch
from rich.console import Console

from pipeline.cli import main, where_line
from pipeline.progress import Bars, ConsoleHandler
from pipeline.recipe import load_recipe
from pipeline.store import LayerCommit, PackedStore, TaskCommit

REPO = Path(__file__).resolve().parents[2]
QUICKSTART = REPO / "recipes/quickstart.yaml"


def _error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    assert main(argv) == 2
    return capsys.readouterr().err.strip().splitlines()[-1]


@pytest.mark.parametrize(("sets", "hint"), [
    (["trian.epochs=1"], "trian: unknown key (did you mean 'train'?)"),
    (["train.epoch=1"], "train.epoch: unknown key (did you mean 'epochs'?)"),
    (["method.densty=0.3"], "method.densty: unknown key (did you mean 'density'?)"),
    (["method.prune.stepz=2"], "method.prune.stepz: unknown key (did you mean 'steps'?)"),
    (["targets.0.backnd=tvm"], "targets.0.backnd: unknown key (did you mean 'backend'?)"),
    (["method.kind=tnsn"], "unknown kind 'tnsn'; expected one of"),
    (["search.target=hots"], "no target named 'hots' in the recipe; targets are ['host'] "
                             "(did you mean 'host'?)"),
])
def test_typos_get_a_suggestion(capsys: pytest.CaptureFixture[str], sets: list[str],
                                hint: str) -> None:
    argv = ["validate", str(QUICKSTART)] + [a for s in sets for a in ("--set", s)]
    line = _error(capsys, argv)
    assert hint in line and "did you mean" in line


def test_no_suggestion_when_nothing_is_close(capsys: pytest.CaptureFixture[str]) -> None:
    line = _error(capsys, ["validate", str(QUICKSTART), "--set", "zzzzzz=1"])
    assert line.endswith("zzzzzz: unknown key")


def test_unknown_commands_and_choices_get_a_suggestion(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert _error(capsys, ["exprot"]).endswith("(did you mean 'export'?)")
    assert _error(capsys, ["data", "fetch", "fashion_mnist"]).endswith(
        "(did you mean 'fashion-mnist'?)")


def test_export_target_typo_gets_a_suggestion(tmp_path: Path) -> None:
    from pipeline.errors import InputError
    from pipeline.export import resolve_target

    recipe = load_recipe(QUICKSTART)
    with pytest.raises(InputError, match=r"did you mean 'aarch64'\?"):
        resolve_target(recipe, "arch64")


def test_the_run_starts_by_saying_where_everything_goes(tmp_path: Path) -> None:
    recipe = load_recipe(QUICKSTART, [f"output_dir={tmp_path / 'out'}",
                                      f"tuning_cache={tmp_path / 'tuning'}"])
    line = where_line(recipe)
    assert f"outputs: {tmp_path / 'out' / 'quickstart'}" in line
    assert f"tuning cache: {tmp_path / 'tuning'}" in line
    assert "exports: mlruns/exports" in line and "MLflow: sqlite:///mlruns/mlflow.db" in line
    assert "MLflow" not in where_line(recipe, tracking=False)


def test_the_tuning_cache_is_shared_and_does_not_follow_output_dir(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import search._latency
    from search import SearchCompressor

    seen: list[Path] = []
    monkeypatch.setattr(search._latency, "compiled_latency",
                        lambda target, cache_dir: seen.append(cache_dir))
    monkeypatch.delenv("TASKPACK_TUNING")  # the default a user gets
    for out in ("a", "b"):  # two runs in different places share one tuning database
        SearchCompressor(load_recipe(QUICKSTART, [f"output_dir={tmp_path / out}"]))
    monkeypatch.setenv("TASKPACK_TUNING", str(tmp_path / "env"))
    SearchCompressor(load_recipe(QUICKSTART))
    SearchCompressor(load_recipe(QUICKSTART, [f"tuning_cache={tmp_path / 'own'}"]))
    assert seen == [Path.home() / ".cache/taskpack/tuning"] * 2 + [tmp_path / "env",
                                                                   tmp_path / "own"]
    assert load_recipe(QUICKSTART, ["tuning_cache=~/t"]).tuning_dir == Path.home() / "t"


def test_log_lines_print_above_live_bars() -> None:
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=100, color_system=None)
    logger = logging.getLogger("taskpack.test_console")
    handler = ConsoleHandler(console)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logger.addHandler(handler)
    try:
        with Bars(enabled=True, console=console) as bars, bars.bar("task 0 search", 4) as bar:
            bars.advance(bar)
            logger.warning("trial 1 failed: [bold]BuildFailed[/bold]")
            bars.advance(bar)
    finally:
        logger.removeHandler(handler)
    lines = out.getvalue().replace("\r", "\n").splitlines()
    logged = [ln for ln in lines if "trial 1 failed" in ln]
    # one whole line, markup kept as text, not interleaved with a bar's characters
    assert logged and all(ln.strip().endswith(
        "WARNING taskpack.test_console: trial 1 failed: [bold]BuildFailed[/bold]")
        for ln in logged)
    assert not any("task 0 search" in ln for ln in logged)


def _store(path: Path, meta: dict) -> Path:
    store = PackedStore.create(path, {"fc": (4, 8)}, "mlp-test", 32)
    mask = torch.zeros(4, 8, dtype=torch.bool)
    mask[0] = True
    values = torch.zeros(4, 8)
    values[0] = torch.tensor([0.5, -0.5, 0.5, 0.25, -0.25, 0.5, 0.25, -0.5])
    store.commit(TaskCommit(0, {"fc": LayerCommit(mask, mask, 2, values,
                                                  torch.tensor([-0.5, -0.25, 0.25, 0.5]))},
                            {"heads.0.weight": torch.ones(3, 4)}, {"name": "t0", **meta}))
    return path


def test_inspect_shows_pattern_bits_latency_and_a_legend(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _store(tmp_path / "s.tpk", {"pattern/fc": "block(16,1)", "latency_ms": 0.0213,
                                       "latency_target": "host"})
    assert main(["inspect", str(path)]) == 0
    text = capsys.readouterr().out
    header = next(ln for ln in text.splitlines() if ln.lstrip().startswith("task"))
    row = next(ln for ln in text.splitlines() if " fc " in ln)
    assert header.split()[6:9] == ["bits", "k", "pattern"]
    assert row.split()[6:9] == ["2", "4", "block(16,1)"]
    assert "latency 0.0213 ms on host" in text
    legend = text[text.index("columns"):]
    for column in ("density", "shared", "own", "split", "bits", "pattern", "b/own", "latency",
                   "M_t"):
        assert f"\n  {column}" in legend
    # a store committed without them says so instead of guessing
    plain = _store(tmp_path / "p.tpk", {})
    assert main(["inspect", str(plain)]) == 0
    text = capsys.readouterr().out
    assert "latency -" in text
    assert next(ln for ln in text.splitlines() if " fc " in ln).split()[8] == "-"
