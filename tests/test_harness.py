"""The test run itself: what a newcomer's machine skips, and what CI refuses to skip."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

NEEDS_A_PACKAGE = """
import pytest

from tests.helpers import require_debian_package

@pytest.fixture
async def program():
    require_debian_package("no-such-package", False)

async def test_{name}_one(program):
    pass

def test_{name}_two():
    require_debian_package("no-such-package", False)

def test_{name}_other():
    require_debian_package("other-package", False)

def test_{name}_present():
    require_debian_package("present-package", True)
"""


@pytest.fixture(autouse=True)
def _inner_settings(pytester: pytest.Pytester) -> None:
    # The settings of pyproject.toml the inner runs need: async tests and fixtures.
    pytester.makeini(
        "[pytest]\nasyncio_mode = auto\nasyncio_default_fixture_loop_scope = function\n"
    )


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    pytester.makepyfile(
        test_first=NEEDS_A_PACKAGE.format(name="first"),
        test_second=NEEDS_A_PACKAGE.format(name="second"),
    )
    return pytester.runpytest_inprocess("-p", "tests.skips", "-ra", *args)


def test_an_absent_package_skips_with_one_line_naming_its_install(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CI", raising=False)
    result = run(pytester)
    assert result.ret == pytest.ExitCode.OK
    result.assert_outcomes(passed=2, skipped=6)
    lines = [line for line in result.outlines if line.startswith("SKIPPED")]
    assert len(lines) == 2, lines
    # One from an async fixture, one from a test, in each of two modules: one line.
    assert re.fullmatch(
        r"SKIPPED \[4\] \S*tests/helpers\.py: no-such-package is not installed "
        r"\(apt-get install no-such-package\)",
        lines[0],
    ), lines
    assert lines[1].endswith("other-package is not installed (apt-get install other-package)")


def test_under_ci_an_absent_package_fails(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CI", "1")
    result = run(pytester)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.assert_outcomes(passed=2, failed=4, errors=2)
    result.stdout.fnmatch_lines(["*no-such-package is not installed*.ci/run installs it*"])


@pytest.mark.parametrize("ci", ["", "1"])
def test_under_ci_any_skip_fails_the_run(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, ci: str
) -> None:
    monkeypatch.setenv("CI", ci)
    pytester.makepyfile(
        test_marks="""
import pytest

@pytest.mark.skipif(True, reason="not here")
def test_skipped():
    pass

def test_passes():
    pass

@pytest.mark.xfail(reason="known", strict=True)
def test_expected_to_fail():
    raise AssertionError
"""
    )
    result = pytester.runpytest_inprocess("-p", "tests.skips", "-q")
    result.assert_outcomes(passed=1, skipped=1, xfailed=1)
    if ci:
        assert result.ret == pytest.ExitCode.TESTS_FAILED
        result.stdout.fnmatch_lines(["CI: 1 skipped, and under CI every test must run*"])
    else:
        assert result.ret == pytest.ExitCode.OK


def test_ci_runs_the_readme_test_command_verbatim() -> None:
    readme = (REPO / "README.md").read_text()
    (command,) = re.findall(r"^python3 -m venv .venv && .*coverage report$", readme, re.M)
    assert command in (REPO / ".ci" / "run").read_text()
