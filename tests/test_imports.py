"""Import structure of pipeline/, search/, compilers/, checked statically with ``ast``.

Every import statement counts: top level, inside functions (lazy imports) and under
``if TYPE_CHECKING:``. Relative imports are resolved against the importing module's package,
and ``from pkg import name`` points at the submodule ``pkg.name`` when that module exists, else
at ``pkg`` itself. An import of ``a.b.c`` is an edge to ``a.b.c`` only: the parent packages
Python initialises on the way are not edges, so a submodule importing a sibling is not a cycle
through its own package's ``__init__``. Likewise an import of one's own ancestor package (e.g.
``search/_worker.py`` doing ``from search import x`` in a function) is no cycle edge: Python
always initialises a package before its submodules, so that dependency exists anyway.

Rules:
  (a) no import cycle between modules;
  (b) ``tvm`` (and ``tvm_ffi``) is imported only under ``compilers/tvm/``;
  (c) ``pipeline`` does not import ``search``;
  (d) ``compilers`` imports neither ``pipeline`` nor ``search``;
  (e) no module is longer than 400 lines.
"""

from __future__ import annotations

import ast
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("pipeline", "search", "compilers")
MAX_LINES = 400
TVM_TOP = ("tvm", "tvm_ffi")
TVM_HOME = "compilers.tvm"
# importer package -> top-level packages it must not import
FORBIDDEN = {"pipeline": ("search",), "compilers": ("pipeline", "search")}
# the composition root: the CLI wires the search into a run (a Compressor) and nothing else does
COMPOSITION_ROOT = "pipeline.cli"


@dataclass(frozen=True)
class Module:
    name: str  # dotted, e.g. "pipeline.store._codec"; a package is named by its __init__
    path: Path
    is_package: bool


@dataclass(frozen=True)
class Import:
    importer: str
    target: str  # the internal module it resolves to, or the external module's name
    imported: str  # the absolute dotted module name as written (relative ones resolved)
    line: int
    kind: str  # "top", "lazy" (inside a function) or "TYPE_CHECKING"

    def where(self, modules: dict[str, Module], root: Path) -> str:
        path = modules[self.importer].path.relative_to(root).as_posix()
        tag = "" if self.kind == "top" else f", {self.kind}"
        return f"{path}:{self.line}{tag}"


def find_modules(root: Path, packages: tuple[str, ...]) -> dict[str, Module]:
    modules: dict[str, Module] = {}
    for pkg in packages:
        for path in sorted((root / pkg).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            is_package = parts[-1] == "__init__"
            if is_package:
                parts = parts[:-1]
            name = ".".join(parts)
            modules[name] = Module(name, path, is_package)
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _walk(node: ast.AST, kind: str):
    """Yield (import node, kind) for every import below ``node``."""
    for child in ast.iter_child_nodes(node):
        child_kind = kind
        if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            child_kind = "lazy"
        if isinstance(child, ast.Import | ast.ImportFrom):
            yield child, kind
        if isinstance(child, ast.If) and kind == "top" and _is_type_checking(child.test):
            for stmt in child.body:
                yield from _walk_stmt(stmt, "TYPE_CHECKING")
            for stmt in child.orelse:
                yield from _walk_stmt(stmt, kind)
            continue
        yield from _walk(child, child_kind)


def _walk_stmt(stmt: ast.stmt, kind: str):
    if isinstance(stmt, ast.Import | ast.ImportFrom):
        yield stmt, kind
    yield from _walk(stmt, kind)


def _resolve_base(mod: Module, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    package = mod.name.split(".") if mod.is_package else mod.name.split(".")[:-1]
    if node.level - 1 > len(package) - 1:
        raise ValueError(f"{mod.path}:{node.lineno}: relative import beyond the top package")
    base = package[: len(package) - (node.level - 1)]
    if node.module:
        base += node.module.split(".")
    return ".".join(base)


def _longest_module(name: str, modules: dict[str, Module]) -> str:
    """``name`` itself, or its longest prefix that is a known module (``import a.b.c``)."""
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        if ".".join(parts[:i]) in modules:
            return ".".join(parts[:i])
    return name  # external


def imports_of(mod: Module, modules: dict[str, Module]) -> list[Import]:
    tree = ast.parse(mod.path.read_text(encoding="utf-8"), filename=str(mod.path))
    found: list[Import] = []
    for node, kind in _walk(tree, "top"):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            base = _resolve_base(mod, node)
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                names.append(sub if alias.name != "*" and sub in modules else base)
        for name in dict.fromkeys(names):
            found.append(Import(mod.name, _longest_module(name, modules), name, node.lineno,
                                kind))
    return found


def _top(name: str) -> str:
    return name.split(".")[0]


def _under(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module, each sorted (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    sccs: list[list[str]] = []

    def connect(v: str) -> None:  # recursion depth <= number of modules
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            scc = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                scc.append(w)
                if w == v:
                    break
            if len(scc) > 1:
                sccs.append(sorted(scc))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return sorted(sccs)


@dataclass
class Report:
    cycles: list[str]
    tvm: list[str]
    layering: list[str]
    too_long: list[str]


def check_tree(root: Path, packages: tuple[str, ...] = PACKAGES) -> Report:
    modules = find_modules(root, packages)
    edges: dict[tuple[str, str], list[Import]] = {}
    tvm: list[str] = []
    layering: list[str] = []
    too_long: list[str] = []
    for name, mod in modules.items():
        n_lines = len(mod.path.read_text(encoding="utf-8").splitlines())
        if n_lines > MAX_LINES:
            too_long.append(f"{mod.path.relative_to(root).as_posix()}: {n_lines} lines "
                            f"(max {MAX_LINES})")
        for imp in imports_of(mod, modules):
            where = imp.where(modules, root)
            if _top(imp.imported) in TVM_TOP and not _under(name, TVM_HOME):
                tvm.append(f"{where}: imports {imp.imported} outside "
                           f"{TVM_HOME.replace('.', '/')}/")
            for banned in FORBIDDEN.get(_top(name), ()):
                if _top(imp.imported) == banned and name != COMPOSITION_ROOT:
                    layering.append(f"{where}: {_top(name)} imports {imp.imported}")
            # a self-import or an import of one's own ancestor package is no cycle edge
            if imp.target in modules and not _under(name, imp.target):
                edges.setdefault((name, imp.target), []).append(imp)
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for a, b in edges:
        graph[a].add(b)
    cycles = []
    for scc in find_cycles(graph):
        lines = [f"import cycle among {', '.join(scc)}:"]
        for (a, b), imps in sorted(edges.items()):
            if a in scc and b in scc:
                lines.append(f"  {a} -> {b} ("
                             + "; ".join(i.where(modules, root) for i in imps) + ")")
        cycles.append("\n".join(lines))
    return Report(cycles, tvm, layering, too_long)


@pytest.fixture(scope="module")
def tree() -> Report:
    return check_tree(ROOT)


def _fail_if(problems: list[str], what: str) -> None:
    if problems:
        pytest.fail(f"{len(problems)} {what}:\n" + "\n".join(problems), pytrace=False)


def test_no_import_cycles(tree: Report) -> None:
    _fail_if(tree.cycles, "import cycle(s)")


def test_tvm_only_in_compilers_tvm(tree: Report) -> None:
    _fail_if(tree.tvm, "tvm import(s) outside compilers/tvm/")


def test_package_layering(tree: Report) -> None:
    _fail_if(tree.layering, "forbidden cross-package import(s)")


def test_module_length(tree: Report) -> None:
    _fail_if(tree.too_long, f"module(s) longer than {MAX_LINES} lines")


# --- the checker itself, on synthetic packages ---------------------------------------------


def _write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))


def test_checker_finds_a_cycle(tmp_path: Path) -> None:
    _write(tmp_path, {
        "pipeline/__init__.py": "",
        "pipeline/a.py": "from pipeline.b import f\n",
        "pipeline/b.py": "from . import c\n",
        "pipeline/c.py": "import pipeline.a\n",
    })
    report = check_tree(tmp_path, ("pipeline",))
    assert report.cycles == [
        "import cycle among pipeline.a, pipeline.b, pipeline.c:\n"
        "  pipeline.a -> pipeline.b (pipeline/a.py:1)\n"
        "  pipeline.b -> pipeline.c (pipeline/b.py:1)\n"
        "  pipeline.c -> pipeline.a (pipeline/c.py:1)"
    ]


def test_checker_finds_a_lazy_and_a_type_checking_cycle(tmp_path: Path) -> None:
    _write(tmp_path, {
        "compilers/__init__.py": "",
        "compilers/eager.py": "from .quantize import q\n",
        "compilers/quantize.py": """\
            def q():
                from .eager import EagerModel
            """,
        "search/__init__.py": "",
        "search/x.py": """\
            from typing import TYPE_CHECKING
            if TYPE_CHECKING:
                from search.y import Y
            """,
        "search/y.py": "from .x import X\n",
    })
    report = check_tree(tmp_path, ("compilers", "search"))
    assert report.cycles == [
        "import cycle among compilers.eager, compilers.quantize:\n"
        "  compilers.eager -> compilers.quantize (compilers/eager.py:1)\n"
        "  compilers.quantize -> compilers.eager (compilers/quantize.py:2, lazy)",
        "import cycle among search.x, search.y:\n"
        "  search.x -> search.y (search/x.py:3, TYPE_CHECKING)\n"
        "  search.y -> search.x (search/y.py:1)",
    ]


def test_checker_clean_package_has_no_false_positives(tmp_path: Path) -> None:
    _write(tmp_path, {
        # a package __init__ re-exporting its submodules, submodules importing siblings by
        # absolute and relative imports, and a lazy import of the package from below
        "pipeline/__init__.py": "from pipeline.store import Store\nfrom . import store\n",
        "pipeline/store/__init__.py": """\
            from pipeline.store._store import Store
            from ._codec import encode
            from . import _codec
            import pipeline.store._store
            from pipeline.store import _codec as codec_again
            """,
        "pipeline/store/_store.py": """\
            import pipeline.store._codec
            from ._codec import encode
            from .. import errors
            def lazy():
                import pipeline.errors
                from pipeline.store import Store  # its own package: not a cycle
            """,
        "pipeline/store/_codec.py": "from pipeline.errors import StoreError\nimport numpy\n",
        "pipeline/errors.py": "class StoreError(Exception): ...\n",
        "search/__init__.py": "from pipeline import store\n",  # search may use pipeline
        "compilers/__init__.py": "import torch\n",
        "compilers/tvm/__init__.py": "import tvm\nfrom tvm import relax\n",
        "compilers/tvm/build.py": "from tvm.relax.frontend.torch import from_exported_program\n",
    })
    report = check_tree(tmp_path)
    assert report == Report(cycles=[], tvm=[], layering=[], too_long=[])


def test_checker_flags_tvm_layering_and_length(tmp_path: Path) -> None:
    _write(tmp_path, {
        "pipeline/__init__.py": "",
        "pipeline/runner.py": "def f():\n    from search import run\n",
        "search/__init__.py": "",
        "compilers/__init__.py": "",
        "compilers/_tvm.py": "import tvm.relax\n",
        "compilers/tvm_ish.py": "from . import _tvm\nfrom pipeline.errors import E\n",
        "compilers/tvmx/__init__.py": "from tvm_ffi import x\n",  # not compilers/tvm/
        "compilers/big.py": "x = 1\n" * (MAX_LINES + 1),
        "compilers/ok.py": "x = 1\n" * MAX_LINES,
    })
    report = check_tree(tmp_path)
    assert report.cycles == []
    assert report.tvm == [
        "compilers/_tvm.py:1: imports tvm.relax outside compilers/tvm/",
        "compilers/tvmx/__init__.py:1: imports tvm_ffi outside compilers/tvm/",
    ]
    assert report.layering == [
        "pipeline/runner.py:2, lazy: pipeline imports search",
        "compilers/tvm_ish.py:2: compilers imports pipeline.errors",
    ]
    assert report.too_long == [f"compilers/big.py: {MAX_LINES + 1} lines (max {MAX_LINES})"]
