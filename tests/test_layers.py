"""Imports point down: no module of the library imports one that imports it back (type-only
and function-local imports count too), and the library never imports its test harness."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, List, Set

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "sente_lite"


def library_modules() -> Dict[str, Path]:
    """Module name -> file, for the library (not the harness nor the benchmarks: sente_lite/bench)."""
    out = {}
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE.parent)
        if "testing" in rel.parts or "bench" in rel.parts:
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
