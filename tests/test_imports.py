"""The package layout: no import cycle, counting imports under TYPE_CHECKING, imports inside
functions, and the package `__init__` an import from outside a package runs first."""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src"
LAYERED_PACKAGES = (
    "pulse_relay.admin",
    "pulse_relay.proxy",
    "pulse_relay.ingress",
    "pulse_relay.config",
    "pulse_relay.sinks",
)


def _modules() -> dict[str, tuple[Path, bool]]:
    """Every module's dotted name, with its file and whether it is a package."""
    found = {}
    for path in (SRC / "pulse_relay").rglob("*.py"):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        found[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return found


def _imported(tree: ast.AST, package: str) -> Iterator[str]:
    """The dotted names every import statement anywhere in `tree` asks for."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            yield base
            yield from (f"{base}.{alias.name}" for alias in node.names)


def _packages_read(tree: ast.AST, package: str, modules: set[str]) -> set[str]:
    """The packages whose own names a module reads: `import P`, or `from P import x` where x
    is not a submodule of P (`from P import submodule` asks for the submodule only)."""
    read = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            read.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = next(_imported(ast.Module(body=[node], type_ignores=[]), package))
            if any(f"{base}.{alias.name}" not in modules for alias in node.names):
                read.add(base)
    return read


def import_graph() -> dict[str, set[str]]:
    """Module -> the pulse_relay modules it imports (and the packages it enters)."""
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, (path, is_package) in modules.items():
        package = name if is_package else name.rpartition(".")[0]
        tree = ast.parse(path.read_text())
        read = _packages_read(tree, package, set(modules))
        targets = {
            wanted
            for wanted in _imported(tree, package)
            if wanted in modules and (not modules[wanted][1] or wanted in read)
        }
        # Importing a.b.c runs a/__init__ and a/b/__init__ first: entering a package
        # from outside depends on its __init__ too.
        for target in list(targets):
            parts = target.split(".")
            for n in range(2, len(parts)):
                ancestor = ".".join(parts[:n])
                if ancestor in modules and not f"{name}.".startswith(f"{ancestor}."):
                    targets.add(ancestor)
        targets.discard(name)
        graph[name] = targets
    return graph


def cyclic_groups(graph: dict[str, set[str]]) -> list[set[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[set[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = set()
            while True:
                member = stack.pop()
                group.add(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(group)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return groups


def test_the_finder_reports_a_cycle_and_nothing_else() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cyclic_groups(graph) == [{"a", "b", "c"}]


def test_type_checking_function_level_and_relative_imports_count() -> None:
    source = (
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n"
        "    from pulse_relay.admin.auth import AdminAuth\n"
        "def build():\n"
        "    from pulse_relay.ingress import edge\n"
        "from . import errors\n"
    )
    imported = set(_imported(ast.parse(source), "pulse_relay.admin"))
    assert {
        "pulse_relay.admin.auth",
        "pulse_relay.ingress.edge",
        "pulse_relay.admin.errors",
    } <= imported


def test_entering_a_package_from_outside_depends_on_its_init() -> None:
    assert "pulse_relay.admin" in import_graph()["pulse_relay.proxy.forward"]


def test_no_import_cycle() -> None:
    assert cyclic_groups(import_graph()) == []


def _layered_modules() -> list[str]:
    return sorted(
        name
        for name in _modules()
        if any(name == p or name.startswith(p + ".") for p in LAYERED_PACKAGES)
    )


@pytest.mark.parametrize("module", _layered_modules())
def test_each_module_imports_first_in_a_fresh_interpreter(module: str) -> None:
    """An import cycle through a package's __init__ shows only when the importer comes first."""
    result = subprocess.run(
        [sys.executable, "-c", f"import {module}"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
