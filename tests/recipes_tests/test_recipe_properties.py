"""Property tests (Hypothesis): generated YAML documents, byte strings and ``--set`` overrides
through ``taskpack validate`` get exit 0, or exit 2 with exactly one line, never a traceback, each
within a time bound (see test_hostile_recipes.py for the fixed corpus)."""

from __future__ import annotations

import pytest
import yaml

from tests.recipes_tests.hostile import BASE, check, validate_in_process, warm_up

pytest.importorskip("hypothesis", reason="needs the dev extra: pip install -e '.[dev]'")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

# deadline=None: Hypothesis's own deadline is flaky on a loaded machine; the bound is asserted
# per call instead, with room for load. derandomize: the same examples on every run (a failure
# reproduces; CI is not flaky). database=None: nothing written into the tree.
FAST = settings(max_examples=150, deadline=None, database=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module", autouse=True)
def _warm(tmp_path_factory: pytest.TempPathFactory) -> None:
    warm_up(tmp_path_factory.mktemp("properties"))


# Keys a recipe really has (so generated documents reach the schema's checks), plus noise.
_KEYS = st.sampled_from(["name", "train", "lr", "epochs", "threads", "batch_size", "benchmark",
                         "tasks", "search", "trials", "storage", "enabled", "model", "hidden",
                         "method", "kind", "density", "targets", "output_dir", "compression",
                         "default", "bits", "pattern", "rules", "match", "seed", "store",
                         "path"]) | st.text(max_size=8)
_SCALARS = (st.none() | st.booleans() | st.integers() | st.floats()
            | st.integers(min_value=-(10**60), max_value=10**60) | st.text(max_size=20)
            | st.sampled_from(["..", "/", "a/b", "x" * 300, "sqlite:///x.db", "nonsense://x",
                               "postgresql://h/db", "block(4,1)", "2:4", "tsn", "wsn", "1e-3"]))
_DATA = st.recursive(_SCALARS, lambda inner: st.lists(inner, max_size=4)
                     | st.dictionaries(_KEYS, inner, max_size=5), max_leaves=25)


@FAST
@given(data=st.dictionaries(_KEYS, _DATA, max_size=6), name=st.booleans())
def test_generated_documents(data: dict, name: bool) -> None:
    if name:
        data = {**data, "name": "g"}
    doc = yaml.safe_dump(data, allow_unicode=True).encode()
    check(*validate_in_process(doc, []))


@FAST
@given(doc=st.binary(max_size=300) | st.text(max_size=300).map(str.encode))
def test_generated_bytes(doc: bytes) -> None:
    check(*validate_in_process(doc, []))


@FAST
@given(doc=st.text(alphabet="{}[]:,&*!|>-'\"#%@` \n\tab01.", max_size=120).map(str.encode))
def test_generated_yaml_syntax(doc: bytes) -> None:
    # YAML's punctuation in every order: anchors, aliases, tags, flow and block collections
    check(*validate_in_process(b"name: s\n" + doc, []))


# a document whose sections are not all sections: overrides must not walk into a scalar
ODD = "name: h\ntargets: [1, [2], {name: a}]\nmodel: 3\ntrain: {lr: [0.1]}\n"
_OVERRIDE_KEYS = st.sampled_from([
    "name", "train.lr", "train.epochs", "train.threads", "benchmark.tasks", "search.storage",
    "search.trials", "targets.0.name", "targets.9.name", "targets.1.0", "targets.1.0.x",
    "model.hidden", "model.hidden.0", "model.arch", "train.lr.0", "train.lr.0.x", "output_dir",
    "train", "method.kind", "compression.default.pattern", "a..b", ".", "x" * 40])
_OVERRIDE_VALUES = (st.text(max_size=30) | st.integers().map(str) | st.floats().map(str)
                    | st.sampled_from(["true", "null", "[1, 2", "{a: 1, a: 2}", "&a [*a]",
                                       "9" * 5000, "[" * 100, ".inf", "..",
                                       "nonsense://x", "!!binary aGk=", "/dev/null"]))


@FAST
@given(overrides=st.lists(st.tuples(_OVERRIDE_KEYS | st.text(max_size=12), _OVERRIDE_VALUES)
                          .map(lambda kv: f"{kv[0]}={kv[1]}") | st.text(max_size=20),
                          min_size=1, max_size=4), odd=st.booleans())
def test_generated_overrides(overrides: list[str], odd: bool) -> None:
    check(*validate_in_process((ODD if odd else BASE).encode(), overrides))
