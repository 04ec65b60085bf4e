"""bench/chaos/admin.py: every admin-listener finding of issue 20 answers as the README says."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.chaos.admin import run_admin


@pytest.mark.timeout(120)
def test_every_admin_finding_gets_its_specified_answer(tmp_path: Path) -> None:
    figures = run_admin(tmp_path)

    assert figures.problems == []
    findings = [finding for finding, _ in figures.rows]
    assert len(findings) == len(set(findings)) == 8
