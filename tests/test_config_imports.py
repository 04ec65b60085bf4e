"""The configuration sits below the components it configures: no import goes back up.

The graph counts every import in the source, at the top of a module, under
`if TYPE_CHECKING:` and inside functions alike: a lazy import still ties the
two modules' rules together.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pulse_relay

PACKAGE_ROOT = Path(pulse_relay.__file__).parent


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE_ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Each pulse_relay module and the pulse_relay modules it imports anywhere in its source."""
    paths = {_module_name(path): path for path in PACKAGE_ROOT.rglob("*.py")}

    def known(name: str) -> str | None:
        while name and name not in paths:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for module, path in paths.items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        imported: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                imported.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*parent, base] if base else parent)
                imported.add(base)
                imported.update(f"{base}.{alias.name}" for alias in node.names)
        graph[module] = {found for name in imported if (found := known(name)) not in (None, module)}
    return graph


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen: set[str] = set()
    pending = list(graph[start])
    while pending:
        module = pending.pop()
        if module not in seen:
            seen.add(module)
            pending.extend(graph[module])
    return seen


def test_the_graph_sees_imports_under_type_checking_and_in_functions() -> None:
    graph = import_graph()
    # cli imports the configuration only under TYPE_CHECKING and inside its commands.
    assert "pulse_relay.config" in graph["pulse_relay.cli"]
    # The file sink reads its settings' type under TYPE_CHECKING.
    assert "pulse_relay.config" in graph["pulse_relay.sinks.file"]


def test_no_import_cycle_runs_through_the_configuration_the_sinks_or_redaction() -> None:
    graph = import_graph()
    watched = [
        module
        for module in graph
        if module.startswith(("pulse_relay.config", "pulse_relay.sinks"))
        or module == "pulse_relay.redaction"
    ]
    assert "pulse_relay.config.types" in watched
    cycles = {module: sorted(reachable(graph, module) & {module}) for module in watched}
    assert {module: found for module, found in cycles.items() if found} == {}


def test_the_configuration_imports_no_sink() -> None:
    graph = import_graph()
    config_modules = [module for module in graph if module.startswith("pulse_relay.config")]
    imported = set().union(*(graph[module] for module in config_modules))
    assert sorted(module for module in imported if module.startswith("pulse_relay.sinks")) == []
