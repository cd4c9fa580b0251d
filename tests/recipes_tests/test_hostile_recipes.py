"""Hostile and careless recipes (issue 14): ``taskpack validate`` answers every one with exit 0
or with exactly one line on stderr and exit 2, never a traceback, never a hang.

A fixed corpus (tests/recipes_tests/hostile.py) through the CLI's ``main`` in-process (fast) and a
few through a real process; generated documents and overrides are in test_recipe_properties.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.recipes_tests.hostile import BASE, CORPUS, check, validate_in_process, warm_up

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module", autouse=True)
def _warm(tmp_path_factory: pytest.TempPathFactory) -> None:
    warm_up(tmp_path_factory.mktemp("hostile"))


@pytest.mark.parametrize(("doc", "expected"), [(d, e) for _, d, e in CORPUS],
                         ids=[i for i, _, _ in CORPUS])
def test_corpus_is_rejected_with_one_line(doc: bytes, expected: str) -> None:
    rc, lines, seconds = validate_in_process(doc, [])
    check(rc, lines, seconds)
    assert rc == 2 and expected in lines[0], lines


@pytest.mark.parametrize("name", ["binary", "alias-bomb", "deep-flow", "huge-int", "name-dotdot"])
def test_corpus_in_a_real_process(name: str, tmp_path: Path) -> None:
    doc = next(d for i, d, _ in CORPUS if i == name)
    path = tmp_path / "r.yaml"
    path.write_bytes(doc)
    proc = subprocess.run([sys.executable, "-m", "pipeline.cli", "validate", str(path)],
                          capture_output=True, text=True, cwd=REPO, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 2
    assert len(proc.stderr.splitlines()) == 1 and proc.stderr.startswith("error: ")
    assert "Traceback" not in proc.stderr


def test_overrides_go_through_the_same_checks() -> None:
    for override, expected in [("train.lr=true", "train.lr: must be a number, got True"),
                               ("train.epochs=null", "train.epochs: must not be null"),
                               ("train.epochs=" + "9" * 5000, "integers must be at most"),
                               ("search.storage=nonsense://x", "search.storage: must be"),
                               ("name=..", "name: must match"),
                               ("train={lr: 1, lr: 2}", "key 'lr' must appear once"),
                               ("output_dir=/dev/null", "output_dir: must be a directory"),
                               ("model.hidden.²=3", "is not an index"),
                               ("targets=[1]", "targets.0: must be a mapping")]:
        rc, lines, seconds = validate_in_process(BASE.encode(), [override])
        check(rc, lines, seconds)
        assert rc == 2 and expected in lines[0], (override, lines)


def test_overrides_never_walk_into_a_scalar() -> None:
    doc = b"name: h\ntargets: [1, {name: a}]\n"
    for override in ["targets.0.name=x", "targets.0.0=x", "name.x=1"]:
        rc, lines, seconds = validate_in_process(doc, [override])
        check(rc, lines, seconds)
        assert rc == 2 and "is not a section" in lines[0], (override, lines)


def test_numbers_read_as_yaml_1_2(tmp_path: Path) -> None:
    from pipeline.recipe import load_recipe

    path = tmp_path / "r.yaml"
    path.write_text("name: n\ntrain: {lr: 1e-2, lr_min: 1E-6, epochs: 1_0, seed: 0x10}\n"
                    "description: 2020-01-01\n")
    r = load_recipe(path)
    assert (r.train.lr, r.train.lr_min, r.train.epochs, r.train.seed) == (0.01, 1e-6, 10, 16)
    assert r.description == "2020-01-01"  # a date stays the text it was written as


@pytest.mark.parametrize("text", ["1e-3", "1e5", "0x1f", "-.5", "1:30", "010", "2020-01-01", "on"])
def test_a_resolved_recipe_reads_back_as_itself(text: str) -> None:
    from pipeline.recipe import recipe_from_dict, recipe_to_yaml
    from pipeline.recipe._yaml import load_yaml

    name = text if text[0].isalnum() and ":" not in text else "n"
    recipe = recipe_from_dict({"name": name, "description": text})
    assert recipe_from_dict(load_yaml(recipe_to_yaml(recipe))) == recipe
