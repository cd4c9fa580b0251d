"""The CLI: every bad input gets one clear line on stderr and exit code 2, never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.cli import main

REPO = Path(__file__).resolve().parents[2]


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "r.yaml"
    path.write_text(text)
    return path


def _fails(capsys: pytest.CaptureFixture[str], argv: list[str], expected: str) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: "), err
    assert expected in err[-1]
    assert not any("Traceback" in line for line in err)
    return err[-1]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("name: x\ntrain: {lr: [1, 2\n", "malformed YAML (line 3, column 1)"),
        ("name: x\ntrian: {lr: 0.1}\n", "trian: unknown key"),
        ("name: x\ntrain: {lr: -1}\n", "train.lr: must be > 0, got -1"),
        ("name: x\ntrain: {batch_size: big}\n", "train.batch_size: must be an integer, got 'big'"),
        ("name: x\nmodel: {arch: vgg16}\n", "model.arch: must be one of"),
        ("name: x\nbenchmark: {stream: cifar1000}\n", "benchmark.stream: must be one of"),
        ("name: x\nmethod: {kind: ewc}\n", "method: unknown kind 'ewc'"),
        ("- just\n- a list\n", "a recipe must be a YAML mapping, got list"),
    ],
)
def test_validate_rejects_bad_recipes(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                      text: str, expected: str) -> None:
    _fails(capsys, ["validate", str(_write(tmp_path, text))], expected)


def test_validate_ok_and_overrides(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", str(REPO / "recipes/quickstart.yaml")]) == 0
    assert capsys.readouterr().out.startswith("ok: quickstart: stream permuted_mnist (3 tasks)")
    _fails(capsys, ["validate", str(REPO / "recipes/quickstart.yaml"), "--set", "train.lr=-1"],
           "train.lr: must be > 0, got -1")


def test_missing_data_names_the_fetch_command(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    path = _write(tmp_path, f"name: x\nbenchmark: {{cache_dir: {tmp_path / 'empty'}}}\n"
                            "tracking: {enabled: false}\n")
    line = _fails(capsys, ["run", str(path)], "MNIST is not in the data cache")
    assert "taskpack data fetch mnist" in line


def test_local_data_not_configured(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _write(tmp_path, "name: x\nbenchmark: {stream: split_cifar100}\n"
                            "model: {arch: alexnet}\ntracking: {enabled: false}\n")
    _fails(capsys, ["run", str(path)], "benchmark.data_dir is not set")


def test_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    _fails(capsys, ["frobnicate"], "invalid choice: 'frobnicate'")
    _fails(capsys, ["data", "fetch", "imagenet"], "invalid choice: 'imagenet'")
    _fails(capsys, ["validate", "/no/such/recipe.yaml"], "no such recipe file")


def test_real_process_prints_one_line_and_exits_2(tmp_path: Path) -> None:
    path = _write(tmp_path, "name: x\ntrain: {lr: -1}\n")
    proc = subprocess.run([sys.executable, "-m", "pipeline.cli", "run", str(path)],
                          capture_output=True, text=True, cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"error: {path}: train.lr: must be > 0, got -1"


def test_version_names_the_versions_that_decide_a_run(capsys) -> None:  # noqa: ANN001
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    assert out.startswith("taskpack ") and "torch" in out and "apache-tvm" in out


def test_every_flag_of_every_command_has_help() -> None:
    import argparse

    from pipeline.cli import build_parser

    missing, parsers = [], [("taskpack", build_parser())]
    while parsers:
        name, parser = parsers.pop()
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                parsers += [(f"{name} {k}", p) for k, p in action.choices.items()]
            elif action.option_strings and not action.help:
                missing.append(f"{name} {'/'.join(action.option_strings)}")
    assert not missing, missing
