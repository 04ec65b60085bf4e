"""bench/chaos/edge.py, small: every ingress finding of issue 13 answers as docs/ingress.md
(the edge) says."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.chaos.edge import run_edge


@pytest.mark.timeout(120)
def test_every_ingress_finding_gets_its_specified_answer(tmp_path: Path) -> None:
    # The idle-connection probe needs more than a thousand sockets: the long run has it,
    # and tests/test_idle_connections.py covers it scaled down.
    figures = run_edge(tmp_path, flood_requests=200, idle_connections=0)

    assert figures.problems == []
    findings = [finding for finding, _ in figures.rows]
    assert len(findings) == len(set(findings)) >= 12
