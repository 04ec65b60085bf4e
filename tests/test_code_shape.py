"""The shape the code keeps: small functions and modules, the contract cited from docs/.

These are the limits a maintainer reading the whole codebase asked for; a change that breaks
one should split the code, not raise the limit. Import cycles:
tests/test_imports.py; test modules and bench files: tests/test_layout.py.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "src" / "pulse_relay"
MAX_FUNCTION_LINES = 60
MAX_MODULE_LINES = 500
# The emulator stands in for a whole external API: it is a fixture, not product code.
LONG_MODULES_ALLOWED = {"emulator.py"}


def modules() -> Iterator[tuple[str, Path]]:
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        yield name, path


def test_no_function_is_longer_than_the_limit() -> None:
    long = []
    for name, path in modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = (node.end_lineno or node.lineno) - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{name}.{node.name}: {lines} lines")
    assert long == []


def test_no_module_is_longer_than_the_limit() -> None:
    long = [
        f"{name}: {lines} lines"
        for name, path in modules()
        if path.name not in LONG_MODULES_ALLOWED
        and (lines := len(path.read_text().splitlines())) > MAX_MODULE_LINES
    ]
    assert long == []


@pytest.mark.parametrize("folder", ["src", "tests", "bench", "docs"])
def test_the_contract_is_cited_from_docs_not_from_a_file_outside_the_repository(
    folder: str,
) -> None:
    marker = "SPEC " + "§"
    citing = [
        str(path.relative_to(REPO))
        for path in sorted((REPO / folder).rglob("*"))
        if path.is_file()
        and path.suffix in {".py", ".md", ".html", ".js", ".toml"}
        and marker in path.read_text(errors="replace")
    ]
    assert citing == []
