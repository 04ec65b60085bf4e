"""SIGKILL the relay during ingest, fetch, delivery and download while faults are injected."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.chaos.plan import SINKS, ChaosConfig
from bench.chaos.rounds import run_chaos


@pytest.mark.timeout(150)
async def test_kills_and_faults_lose_nothing(tmp_path: Path) -> None:
    config = ChaosConfig(
        events=300,
        kill_rounds=4,
        send_rate_per_second=60.0,
        fault_rate=0.1,
        permanent_rate=0.04,
        drain_timeout_seconds=90.0,
        workdir=tmp_path / "chaos",
    )
    outcome = await run_chaos(config, say=lambda _: None)

    assert outcome.problems == []
    assert outcome.lost == 0
    assert outcome.kill_rounds == 4
    # Every moment was hit at least once or the run says why not.
    assert sum(outcome.kill_phases.values()) == 4
    assert outcome.integrity_final == "ok"
    assert set(outcome.integrity_after_kills) == {"ok"}
    assert outcome.acknowledged > 0
    assert outcome.abandoned_absent + outcome.abandoned_delivered + outcome.acknowledged == 300
    for sink in SINKS:
        # Duplicates come only from work in flight at a kill or from slow answers.
        assert outcome.duplicates.get(sink, 0) <= 4 * 20 + sum(outcome.faults.values())
    assert sum(outcome.faults.values()) > 0
    assert outcome.five_xx_other_than_503 == 0


@pytest.mark.timeout(120)
async def test_every_transient_fault_is_delivered_and_every_permanent_one_dead(
    tmp_path: Path,
) -> None:
    """No kills: faults alone. `check` holds each (event, sink) to delivered or dead."""
    config = ChaosConfig(
        events=150,
        kill_rounds=0,
        send_rate_per_second=100.0,
        fault_rate=0.3,
        permanent_rate=0.1,
        drain_timeout_seconds=90.0,
        workdir=tmp_path / "faults",
    )
    outcome = await run_chaos(config, say=lambda _: None)

    assert outcome.problems == []
    assert outcome.lost == 0
    assert outcome.acknowledged == 150
    assert sum(outcome.permanent.values()) > 0
    assert sum(outcome.dead_expected.values()) > 0
    kinds = {kind.split("-")[0] for kind in outcome.faults}
    assert kinds >= {"pulse", "http", "command"}
