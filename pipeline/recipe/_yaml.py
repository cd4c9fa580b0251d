"""A bounded YAML reader for recipes: plain data in, every hostile document out with one line.

PyYAML's ``safe_load`` is safe from code execution, not from size: a few lines of aliases expand
to millions of values, deep nesting overflows Python's stack, a 5000-digit integer raises
``ValueError`` and a repeated key silently replaces the first. This reader composes the document,
checks it against the limits below *before* building Python objects, and builds only what a
recipe can hold: mappings with string keys, lists, strings, integers, floats, booleans and null
(a timestamp stays the string it was written as).
"""

from __future__ import annotations

import re
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

__all__ = ["MAX_BYTES", "MAX_DEPTH", "MAX_NODES", "YAMLRejected", "dump_yaml", "load_yaml"]

# A shipped recipe is under 4 KiB, about 150 values and 5 levels deep: these leave 100x headroom
# and still bound the time and memory of validating anything.
MAX_BYTES = 1 << 20
MAX_DEPTH = 32
MAX_NODES = 20_000
MAX_INT_CHARS = 30  # int64 has 19 digits; seeds and sizes never need more

_MERGE = "tag:yaml.org,2002:merge"
_FLOAT = "tag:yaml.org,2002:float"
_INT = "tag:yaml.org,2002:int"
# Numbers as YAML 1.2 (and every person) reads them, not PyYAML's YAML 1.1: `1e-3` is a number,
# not a string; `1:30` (base 60) and `010` (octal) are strings, not 90 and 8.
_FLOAT_RE = re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+
    |[-+]?\.[0-9_]+(?:[eE][-+]?[0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""", re.X)
_INT_RE = re.compile(r"^(?:[-+]?0b[01_]+|[-+]?0x[0-9a-fA-F_]+|[-+]?(?:0|[1-9][0-9_]*))$")


class YAMLRejected(yaml.MarkedYAMLError):
    """A document that parses but is not a recipe's plain data (limits, keys, tags)."""

    def __init__(self, problem: str, mark: yaml.Mark | None) -> None:
        super().__init__(problem=problem, problem_mark=mark)


class _Loader(yaml.SafeLoader):
    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Node | None, index: Any) -> Node | None:
        # composition recurses once per level: stop long before Python's recursion limit
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise YAMLRejected(f"nesting must be at most {MAX_DEPTH} levels deep",
                                   self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node: Node, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, MappingNode):
            seen: set[str] = set()
            for key_node, _ in node.value:
                if key_node.tag == _MERGE:
                    continue
                key = self.construct_object(key_node, deep=True)
                if not isinstance(key, str):
                    raise YAMLRejected(
                        f"mapping keys must be strings, found {type(key).__name__} "
                        f"{key_node.value!r:.40} (quote it: YAML reads yes/no/on/off as booleans)"
                        if isinstance(key_node, ScalarNode) else
                        f"mapping keys must be strings, found a {type(key).__name__}",
                        key_node.start_mark)
                if key in seen:
                    raise YAMLRejected(f"key {key!r:.60} must appear once in its mapping, found "
                                       "it again", key_node.start_mark)
                seen.add(key)
        return super().construct_mapping(node, deep=deep)  # type: ignore[arg-type]

    def construct_bounded_int(self, node: ScalarNode) -> int:
        text = str(node.value)
        if len(text) > MAX_INT_CHARS:
            raise YAMLRejected(f"integers must be at most {MAX_INT_CHARS} characters long, "
                               f"found one of {len(text)}", node.start_mark)
        return int(super().construct_yaml_int(node))

    def construct_timestamp_text(self, node: ScalarNode) -> str:
        return str(self.construct_scalar(node))  # a date is whatever the field makes of text

    def construct_not_allowed(self, node: Node) -> Any:
        raise YAMLRejected(f"tag {node.tag} is not allowed in a recipe (plain data only)",
                           node.start_mark)


_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag not in (_FLOAT, _INT)]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_Loader.add_implicit_resolver(_INT, _INT_RE, list("-+0123456789"))
_Loader.add_implicit_resolver(_FLOAT, _FLOAT_RE, list("-+0123456789."))
_Loader.add_constructor(_INT, _Loader.construct_bounded_int)
_Loader.add_constructor("tag:yaml.org,2002:timestamp", _Loader.construct_timestamp_text)
for _tag in ("binary", "set", "omap", "pairs"):
    _Loader.add_constructor(f"tag:yaml.org,2002:{_tag}", _Loader.construct_not_allowed)


def _check_size(node: Node, memo: dict[int, tuple[int, int]], active: set[int]) -> tuple[int, int]:
    """(values, depth) of ``node`` with every alias expanded; raises past the limits or on a cycle.

    Memoized per node, so a tower of aliases costs one visit per node. The first visit of every
    node is at its anchor (an alias cannot come before it), so this recursion is as deep as the
    document's written nesting, which composition already bounded.
    """
    key = id(node)
    if key in memo:
        return memo[key]
    if key in active:
        raise YAMLRejected("an alias must not refer to a structure that contains it",
                           node.start_mark)
    active.add(key)
    children: list[Node] = []
    if isinstance(node, SequenceNode):
        children = list(node.value)
    elif isinstance(node, MappingNode):
        children = [n for pair in node.value for n in pair]
    count, depth = 1, 0
    for child in children:
        c, d = _check_size(child, memo, active)
        count, depth = count + c, max(depth, d)
    depth += 1
    active.discard(key)
    if count > MAX_NODES:
        raise YAMLRejected(f"a recipe must hold at most {MAX_NODES} values with aliases expanded, "
                           f"found more here", node.start_mark)
    if depth > MAX_DEPTH:
        raise YAMLRejected(f"nesting must be at most {MAX_DEPTH} levels deep with aliases "
                           "expanded, found more here", node.start_mark)
    memo[key] = (count, depth)
    return count, depth


def load_yaml(text: str) -> Any:
    """Parse one YAML document into plain data; ``yaml.YAMLError`` (``YAMLRejected`` for the
    checks above) when it is malformed or exceeds a limit."""
    if len(text) > MAX_BYTES:
        raise YAMLRejected(f"a recipe must be at most {MAX_BYTES} characters, found "
                           f"{len(text)}", None)
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_size(node, {}, set())
        return loader.construct_document(node)
    finally:
        loader.dispose()


class _Dumper(yaml.SafeDumper):
    """Quotes every string this reader would take for a number (``"1e-3"``, a name ``"1e5"``),
    so what ``dump_yaml`` writes, ``load_yaml`` reads back as the same data."""


_Dumper.add_implicit_resolver(_INT, _INT_RE, list("-+0123456789"))
_Dumper.add_implicit_resolver(_FLOAT, _FLOAT_RE, list("-+0123456789."))


def dump_yaml(data: Any) -> str:
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False)
