"""The layout of the tools around the code. Shared test helpers live in tests/helpers.py (or
tests/rawhttp.py), fixtures in a conftest.py; no test module imports from another test
module or from a conftest, so that each test module can be read, moved or deleted on its
own. No benchmark module grows past a size one can hold in mind."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
BENCH = TESTS.parent / "bench"
MAX_BENCH_FILE_LINES = 600


def _is_forbidden(module: str) -> bool:
    """A test module (`test_*`) or a conftest, wherever it sits under tests/."""
    package, _, last = module.rpartition(".")
    is_ours = package == "tests" or package.startswith("tests.")
    return is_ours and (last.startswith("test_") or last == "conftest")


def _package_of(path: Path) -> str:
    """The dotted package a file under tests/ belongs to: `tests`, `tests.reliability`."""
    return ".".join(("tests", *path.parent.relative_to(TESTS).parts))


def forbidden_imports(source: str, package: str = "tests") -> Iterator[str]:
    """Every module imported by `source` (top level or not, absolute or relative) that is
    a test module or a conftest."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names if _is_forbidden(alias.name))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1])
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            if _is_forbidden(module):
                yield module
            elif module == "tests" or module.startswith("tests."):
                # `from tests import test_cli` or `from . import conftest`.
                names = (f"{module}.{alias.name}" for alias in node.names)
                yield from (name for name in names if _is_forbidden(name))


@pytest.mark.parametrize(
    "source",
    [
        "from tests.test_cli import run_cli",
        "from tests.conftest import make_body",
        "from tests.reliability.conftest import READ_TIMEOUT",
        "import tests.test_store",
        "from tests import test_server",
        "from .conftest import signed",
        "from . import test_cli",
        "def helper():\n    from tests.test_operations import post_captured\n",
    ],
)
def test_the_check_sees_every_form_of_import(source: str) -> None:
    assert list(forbidden_imports(source)), source


def test_the_check_lets_helpers_and_libraries_through() -> None:
    source = (
        "from tests.helpers import signed\n"
        "from tests.rawhttp import exchange\n"
        "from aiohttp.test_utils import make_mocked_request\n"
        "from pulse_relay.config import Settings\n"
        "import pytest\n"
    )
    assert list(forbidden_imports(source)) == []


def test_no_file_under_tests_imports_a_test_module_or_a_conftest() -> None:
    files = sorted(TESTS.rglob("*.py"))
    assert TESTS / "helpers.py" in files and TESTS / "test_layout.py" in files
    found = {
        str(path.relative_to(TESTS)): sorted(
            set(forbidden_imports(path.read_text(), _package_of(path)))
        )
        for path in files
    }
    assert {name: modules for name, modules in found.items() if modules} == {}


@pytest.mark.skipif(not BENCH.is_dir(), reason="bench/ is not in this checkout")
def test_no_bench_file_is_over_600_lines() -> None:
    sizes = {
        str(path.relative_to(BENCH)): len(path.read_text().splitlines())
        for path in BENCH.rglob("*.py")
    }
    assert "scenarios.py" in sizes
    assert {name: lines for name, lines in sizes.items() if lines > MAX_BENCH_FILE_LINES} == {}
