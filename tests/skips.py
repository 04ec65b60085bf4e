"""How skips are reported, and, under CI (`$CI` set, as `.ci/run` does), refused.

On a newcomer's machine a test that needs what is absent (a Debian package) skips,
and the run still passes; the summary gives one line per absent package. pytest
folds skips by where they were raised, and that place is the test itself when the
skip comes from an async fixture: so the location of every `AbsentPackage` skip
is replaced by the helper's module, and the package's skips fold into one line.

CI installs everything, so there any skip means a test that did not run: the
run's exit status says so, whatever raised the skip (a helper, a `skipif` mark, a
module skipped at collection).

Counting pytest's own reports, rather than reading its printed summary, holds
whatever the output options (`-q`, `-rN`, another reporter) and whatever wrapper
runs pytest (`coverage run -m pytest` passes the exit status on).
"""

from __future__ import annotations

import os
from collections.abc import Generator

import pytest

from tests import helpers


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if call.excinfo is not None and call.excinfo.errisinstance(helpers.AbsentPackage):
        report.longrepr = (helpers.__file__, None, str(call.excinfo.value))
    return report


class SkipsFailTheRun:
    """Counts the skipped tests and collectors; any makes a passing run fail."""

    def __init__(self) -> None:
        self.skipped: list[str] = []

    def _count(self, report: pytest.CollectReport | pytest.TestReport) -> None:
        # An expected failure (xfail) is reported as skipped too; it ran, so it counts not.
        if report.skipped and not hasattr(report, "wasxfail"):
            self.skipped.append(report.nodeid)

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        self._count(report)

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self._count(report)

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if self.skipped and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        if self.skipped:
            terminalreporter.write_line(
                f"CI: {len(self.skipped)} skipped, and under CI every test must run "
                "(the skip reasons are listed above): the run fails",
                red=True,
                bold=True,
            )


def pytest_configure(config: pytest.Config) -> None:
    if os.environ.get("CI"):
        config.pluginmanager.register(SkipsFailTheRun(), "pulse-relay-skips-fail-under-ci")
