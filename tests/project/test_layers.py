"""Imports point down: no module of the library imports one that imports it back (type-only
and function-local imports count too), every import goes to the module's own layer or a lower
one, and the library never imports its test harness. And no class of the library is over
``MAX_CLASS_LINES`` lines, no function over ``MAX_FUNCTION_LINES``."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, Iterator, List, Set, Tuple

import pytest
from support import REPO

PACKAGE = REPO / "sente_lite"


def library_modules() -> Dict[str, Path]:
    """Module name -> file, for the library and its benchmarks (not the harness)."""
    out = {}
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE.parent)
        if "testing" in rel.parts:
            continue
        name = ".".join(rel.with_suffix("").parts)
        out[name[: -len(".__init__")] if name.endswith(".__init__") else name] = path
    return out


def imports_of(name: str, path: Path, modules: Dict[str, Path]) -> Set[str]:
    """Every module ``name`` imports, wherever the import stands."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found: Set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(parts + ([base] if base else []))
            found.update(f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base
                         for a in node.names)
    return found - {name}


def cycles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """The strongly connected groups of more than one module (Tarjan)."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    groups: List[List[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for v in graph:
        if v not in index:
            visit(v)
    return groups


@pytest.fixture(scope="module")
def graph() -> Dict[str, Set[str]]:
    modules = library_modules()
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def test_no_module_imports_one_that_imports_it_back(graph: Dict[str, Set[str]]) -> None:
    internal = {name: {t for t in targets if t in graph} for name, targets in graph.items()}
    assert cycles(internal) == []


def test_the_library_never_imports_its_test_harness(graph: Dict[str, Set[str]]) -> None:
    assert {name for name, targets in graph.items()
            if any(t.startswith("sente_lite.testing") for t in targets)} == set()


def test_the_checker_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


# -- the layer order ---------------------------------------------------------------------------
#: Top-level leaf modules: the lowest layer, importable by every other.
LEAVES = {"version", "errors", "logsafe", "counters", "limits", "discovery"}
#: The layers above the leaves, lowest first; faces (server, client, asgi, aio) share one layer but never
#: import each other. Any other top-level module or package (cli, __main__, the package's
#: __init__, a later face) is above them all.
LAYERS = {"wire": 1, "session": 2, "brokers": 3, "core": 4, "api": 5, "server": 6, "client": 6,
          "asgi": 6, "aio": 6}
FACES_LAYER = 6
TOP_LAYER = 7
#: Imports that go up today, each to be removed by the work named. A new one fails the test;
#: so does an entry here once its import is gone: the list only shrinks.
UPWARD_ALLOWED: Set[Tuple[str, str]] = set()


def layer_of(module: str) -> Tuple[int, str]:
    """``(rank, part)`` of ``module``: its layer and the top-level name it belongs to."""
    parts = module.split(".")
    if len(parts) == 1:  # the package's own __init__
        return TOP_LAYER, parts[0]
    top = parts[1]
    if top in LEAVES:
        return 0, top
    return LAYERS.get(top, TOP_LAYER), top


def upward_imports(graph: Dict[str, Set[str]]) -> Set[Tuple[str, str]]:
    """Every ``(importer, imported)`` that goes to a higher layer, or from one face to another."""
    out = set()
    for name, targets in graph.items():
        rank, part = layer_of(name)
        for target in targets & graph.keys():
            t_rank, t_part = layer_of(target)
            if t_rank > rank or (t_rank == rank == FACES_LAYER and t_part != part):
                out.add((name, target))
    return out


def test_every_import_goes_to_the_same_or_a_lower_layer(graph: Dict[str, Set[str]]) -> None:
    upward = upward_imports(graph)
    assert upward - UPWARD_ALLOWED == set(), "imports going up (or between faces)"
    assert UPWARD_ALLOWED - upward == set(), "gone: remove them from UPWARD_ALLOWED"


def test_the_layer_checker_finds_an_upward_import_and_one_between_faces() -> None:
    graph = {"sente_lite.wire.protocol": {"sente_lite.core.hub", "sente_lite.errors"},
             "sente_lite.core.hub": {"sente_lite.wire.protocol"},
             "sente_lite.errors": set(),
             "sente_lite.server.server": {"sente_lite.client.client", "sente_lite.core.hub"},
             "sente_lite.client.client": {"sente_lite.wire.protocol"},
             "sente_lite.cli": {"sente_lite.server.server", "sente_lite.client.client"}}
    assert upward_imports(graph) == {("sente_lite.wire.protocol", "sente_lite.core.hub"),
                                     ("sente_lite.server.server", "sente_lite.client.client")}


# -- sizes -----------------------------------------------------------------------------------
MAX_CLASS_LINES = 300
MAX_FUNCTION_LINES = 60
#: Classes and functions over their limit today, with their size now (a ceiling: growing one
#: fails the test). Each is being split by the work named; an entry that fits its limit
#: fails the test until it is removed: the list only shrinks, to empty.
OVERSIZE_ALLOWED: Dict[str, int] = {}


def definitions(path: Path) -> Iterator[Tuple[str, bool, int]]:
    """``(qualified name, is a class, lines)`` of every class and function in ``path``."""
    def walk(node: ast.AST, prefix: str) -> Iterator[Tuple[str, bool, int]]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                assert child.end_lineno is not None
                yield (prefix + child.name, isinstance(child, ast.ClassDef),
                       child.end_lineno - child.lineno + 1)
                yield from walk(child, prefix + child.name + ".")
            else:
                yield from walk(child, prefix)
    yield from walk(ast.parse(path.read_text()), "")


def oversize() -> Dict[str, int]:
    """``"path::name" -> lines`` of every library class over MAX_CLASS_LINES and function over
    MAX_FUNCTION_LINES (the benchmarks and the harness are not the library)."""
    out = {}
    for path in library_modules().values():
        rel = path.relative_to(PACKAGE.parent).as_posix()
        if rel.startswith("sente_lite/bench/"):
            continue
        for name, is_class, lines in definitions(path):
            if lines > (MAX_CLASS_LINES if is_class else MAX_FUNCTION_LINES):
                out[f"{rel}::{name}"] = lines
    return out


def test_no_class_or_function_is_over_its_size() -> None:
    found = oversize()
    assert {k: n for k, n in found.items() if k not in OVERSIZE_ALLOWED} == {}
    assert {k: (n, OVERSIZE_ALLOWED[k]) for k, n in found.items()
            if k in OVERSIZE_ALLOWED and n > OVERSIZE_ALLOWED[k]} == {}, "grew past its ceiling"
    assert set(OVERSIZE_ALLOWED) - set(found) == set(), "fits now: remove it from OVERSIZE_ALLOWED"


#: Names a broker goes by in the library: ``broker``, ``channels`` (``Server.channels``),
#: and attributes of those names (``self.broker``, ``srv.channels``, ``self._channels``).
BROKER_NAMES = {"broker", "channels", "_channels", "_broker"}


def test_brokers_import_nothing_above_them(graph: Dict[str, Set[str]]) -> None:
    above = ("sente_lite.core", "sente_lite.server", "sente_lite.client", "sente_lite.api")
    assert {name: sorted(t for t in targets if t.startswith(above))
            for name, targets in graph.items()
            if name.startswith("sente_lite.brokers") and any(t.startswith(above) for t in targets)
            } == {}


def broker_probes(path: Path) -> List[str]:
    """``getattr``/``hasattr`` calls in ``path`` whose first argument names a broker."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                and node.func.id in ("getattr", "hasattr") and node.args):
            target = node.args[0]
            name = (target.id if isinstance(target, ast.Name)
                    else target.attr if isinstance(target, ast.Attribute) else None)
            if name in BROKER_NAMES:
                found.append(f"{path.name}:{node.lineno} {ast.unparse(node)}")
    return found


def test_no_getattr_or_hasattr_on_a_broker() -> None:
    assert [probe for path in library_modules().values() for probe in broker_probes(path)] == []


def test_the_probe_checker_finds_a_probe(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("getattr(srv.channels, 'health', None)\nhasattr(broker, 'x')\n"
                      "getattr(conn, 'uid')\n")
    assert len(broker_probes(module)) == 2
