"""Recipes: every shipped recipe validates, the schema file is fresh, bad input names its path."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.errors import RecipeError
from pipeline.recipe import (
    CompressionConfig,
    LayerPlan,
    load_recipe,
    plan_for_layers,
    recipe_from_dict,
    recipe_to_yaml,
)

RECIPES = Path(__file__).resolve().parents[2] / "recipes"


@pytest.mark.parametrize("path", sorted(RECIPES.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_recipes_validate_and_round_trip(path: Path, tmp_path: Path) -> None:
    recipe = load_recipe(path)
    again = tmp_path / "again.yaml"
    again.write_text(recipe_to_yaml(recipe))
    assert load_recipe(again) == recipe


def test_required_recipes_exist() -> None:
    names = {p.stem for p in RECIPES.glob("*.yaml")}
    assert {"quickstart", "pmnist-mlp2000", "split-mnist", "split-fmnist"} <= names
    pm = load_recipe(RECIPES / "pmnist-mlp2000.yaml")
    assert (pm.benchmark.stream, pm.benchmark.tasks, pm.model.hidden) == (
        "permuted_mnist", 10, [2000, 2000])


def test_schema_json_is_fresh(tmp_path: Path) -> None:
    # a fresh interpreter: test modules register methods of their own (the schema lists every
    # registered method), and the file holds the built-in ones
    out = tmp_path / "schema.json"
    subprocess.run([sys.executable, "-m", "pipeline.cli", "schema", "--out", str(out)],
                   check=True, capture_output=True, cwd=RECIPES.parent)
    assert (RECIPES / "schema.json").read_text() == out.read_text(), (
        "recipes/schema.json is stale: run `taskpack schema`")


def _err(data: dict) -> str:
    with pytest.raises(RecipeError) as info:
        recipe_from_dict({"name": "t", **data})
    return str(info.value)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"train": {"lr": -1}}, "train.lr: must be > 0, got -1"),
        ({"train": {"epochs": 0}}, "train.epochs: must be >= 1, got 0"),
        ({"train": {"bogus": 1}}, "train.bogus: unknown key"),
        ({"bogus": 1}, "bogus: unknown key"),
        ({"train": {"epochs": "many"}}, "train.epochs: must be an integer, got 'many'"),
        ({"benchmark": {"val_fraction": 1.5}}, "benchmark.val_fraction: must be < 1, got 1.5"),
        ({"benchmark": {"stream": "cifar1000"}}, "benchmark.stream: must be one of"),
        ({"model": {"arch": "vgg"}}, "model.arch: must be one of"),
        ({"method": {"kind": "ewc"}}, "method: unknown kind 'ewc'"),
        ({"method": {"kind": "wsn", "density": 0}}, "method.density: must be > 0, got 0"),
        ({"train": {"lr": 0.001, "lr_min": 0.01}}, "`lr_min <= lr` must hold"),
        ({"compression": {"default": {"bits": 5}}}, "compression.default.bits: must be one of"),
        ({"compression": {"rules": [{"match": "x", "pattern": "block(0,4)"}]}},
         "compression.rules.0.pattern: block(h,w) needs h, w >= 1"),
        ({"compression": {"rules": [{"match": "(", "bits": 4}]}},
         "compression.rules.0.match: not a valid regular expression"),
        ({"targets": [{"name": "a"}, {"name": "a"}]}, "target names must be unique"),
        ({"targets": [{"name": "r", "kind": "rpc"}]}, "needs an `rpc` section"),
        ({"benchmark": {"stream": "split_cifar100", "pad_to": 32}},
         "benchmark: pad_to applies only to the MNIST-family streams"),
        ({"benchmark": {"pad_to": 16}}, "benchmark.pad_to: must be >= 28, got 16"),
        ({"model": {"arch": "resnet18", "alexnet_widths": [1, 2, 3, 4, 5]}},
         "model: alexnet_widths applies only to arch 'alexnet', got 'resnet18'"),
        ({"model": {"arch": "alexnet", "alexnet_widths": [1, 2]}},
         "model.alexnet_widths: "),
        ({"model": {"norm": "stateless"}, "method": {"kind": "tsn"},
          "search": {"enabled": True}}, "`search.latency_batch >= 2` must hold, got 1"),
    ],
)
def test_bad_values_name_their_path(data: dict, expected: str) -> None:
    assert expected in _err(data)


def test_missing_name_and_non_mapping() -> None:
    with pytest.raises(RecipeError, match="name: required key is missing"):
        recipe_from_dict({})
    with pytest.raises(RecipeError, match="must be a YAML mapping, got list"):
        recipe_from_dict([1, 2])


def test_file_errors(tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match="no such recipe file"):
        load_recipe(tmp_path / "nope.yaml")
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    with pytest.raises(RecipeError, match="the file is empty"):
        load_recipe(empty)
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ntrain: {lr: [1, 2\n")
    with pytest.raises(RecipeError, match=r"malformed YAML \(line \d+, column \d+\)"):
        load_recipe(bad)


def test_overrides(tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text("name: x\ntargets: [{name: host}]\n")
    r = load_recipe(path, ["train.epochs=2", "model.hidden=[8, 8]", "targets.0.tune_trials=3",
                           "method.density=0.25"])
    assert (r.train.epochs, r.model.hidden, r.targets[0].tune_trials, r.method.density) == (
        2, [8, 8], 3, 0.25)
    with pytest.raises(RecipeError, match="train.lr: must be > 0, got -1"):
        load_recipe(path, ["train.lr=-1"])
    with pytest.raises(RecipeError, match="--set expects key=value"):
        load_recipe(path, ["train.lr"])
    with pytest.raises(RecipeError, match="targets.5 is not an index"):
        load_recipe(path, ["targets.5.name=x"])


def test_frozen() -> None:
    r = recipe_from_dict({"name": "x"})
    with pytest.raises(Exception, match="frozen"):
        r.train.lr = 1.0  # type: ignore[misc]


def test_plan_resolution_exact_then_regex_then_default() -> None:
    cfg = CompressionConfig.model_validate({
        "default": {"sparsity": 0.1, "bits": 8},
        "rules": [{"match": r"backbone\.\d", "sparsity": 0.5, "pattern": "block(16, 1)"},
                  {"match": "backbone.4", "bits": 4, "pattern": "2:4"}],
    })
    plans = plan_for_layers(cfg, ["backbone.1", "backbone.4", "head"])
    assert plans["backbone.1"] == LayerPlan(sparsity=0.5, pattern="block(16,1)", bits=32)
    assert plans["backbone.4"] == LayerPlan(sparsity=0.0, pattern="2:4", bits=4)
    assert plans["head"] == LayerPlan(sparsity=0.1, pattern="unstructured", bits=8)


def test_rule_matching_no_layer_is_an_error() -> None:
    cfg = CompressionConfig.model_validate({"rules": [{"match": "conv9", "bits": 4}]})
    with pytest.raises(RecipeError,
                       match=r"compression.rules\[0\].match: 'conv9' matches no layer"):
        plan_for_layers(cfg, ["backbone.1"])


def test_a_run_saved_before_a_field_was_added_is_the_same_recipe(tmp_path: Path) -> None:
    from pipeline.runner import same_recipe

    recipe = load_recipe(RECIPES / "split-fmnist-x86.yaml")
    text = recipe_to_yaml(recipe)
    saved = tmp_path / "recipe.yaml"
    older = "".join(line for line in text.splitlines(keepends=True)
                    if "warm_start" not in line)  # as written before search.warm_start existed
    assert older != text
    saved.write_text(older)
    assert same_recipe(saved, recipe)
    saved.write_text(text.replace("trials: 16", "trials: 17"))
    assert not same_recipe(saved, recipe)
    saved.write_text(text + "retired_field: 1\n")  # a field since removed: not the same run
    assert not same_recipe(saved, recipe)


@pytest.mark.parametrize("name", ["..", ".", ".hidden", "a/b", "/abs", "x" * 129, "a\x00b"])
def test_run_names_cannot_leave_output_dir(name: str) -> None:
    # `taskpack run --fresh` deletes <output_dir>/<name>: `..` would delete output_dir's parent
    with pytest.raises(RecipeError, match="name: "):
        recipe_from_dict({"name": name})


@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan")])
def test_numbers_must_be_finite(value: float) -> None:
    with pytest.raises(RecipeError, match="train.lr: must be a finite number"):
        recipe_from_dict({"name": "t", "train": {"lr": value}})


@pytest.mark.parametrize("name", ["split-fmnist-cnn-x86", "split-mnist-cnn-gpu"])
def test_cnn_search_recipes_give_the_convs_their_own_rule(name: str) -> None:
    """The first search rule of the CNN recipes is for the conv layers, and for them only (a
    layer-name typo would silently hand the convs the fc rule)."""
    import re

    from pipeline.models import MaskedConv2d, build_model

    recipe = load_recipe(RECIPES / f"{name}.yaml")
    assert recipe.benchmark.pad_to == 32
    model = build_model(recipe.model, (1, 32, 32))
    convs = {n for n, m in model.masked_layers().items() if isinstance(m, MaskedConv2d)}
    rule = recipe.search.space[0]
    assert {n for n in model.masked_layers() if re.fullmatch(rule.match, n)} == convs
    assert "channel" in rule.patterns and "2:4" in rule.patterns
