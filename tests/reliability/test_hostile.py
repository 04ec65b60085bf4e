"""Hostile input against a running relay: fuzzing, slow clients, duplicate ids, disk full."""

from __future__ import annotations

import subprocess
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings

from bench.chaos.hostile import (
    SyncRelay,
    disk_full,
    duplicate_ids,
    hostile_requests,
    signed_post,
    slow_clients,
)
from tests.helpers import HOSTILE_READ_TIMEOUT_SECONDS


@settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(request=hostile_requests())
def test_forged_or_garbled_requests_are_never_accepted_nor_a_5xx(
    hostile_relay: SyncRelay, request: tuple[dict[str, str], bytes]
) -> None:
    headers, body = request
    status, answer = hostile_relay.post(body, headers)
    assert status < 500 or status == 503
    assert not 200 <= status < 300, answer
    assert hostile_relay.is_alive()


def test_after_the_fuzzing_nothing_forged_is_stored_and_genuine_events_still_are(
    hostile_relay: SyncRelay,
) -> None:
    forged = {i for i in hostile_relay.stored_ids() if not i.startswith("msg_genuine")}
    assert forged == set()
    assert signed_post(hostile_relay, "msg_genuine_1") == 202
    assert signed_post(hostile_relay, "msg_genuine_1") == 200
    assert hostile_relay.is_alive()


def test_slow_clients_are_cut_off_while_others_are_answered(hostile_relay: SyncRelay) -> None:
    figures = slow_clients(
        hostile_relay, clients=5, others=30, read_timeout=HOSTILE_READ_TIMEOUT_SECONDS
    )
    # Headers trickled byte by byte: the connection is closed at the read timeout.
    assert figures.header_answers == Counter({"closed": 5})
    assert all(
        HOSTILE_READ_TIMEOUT_SECONDS - 0.1 <= s <= HOSTILE_READ_TIMEOUT_SECONDS + 1.5
        for s in figures.header_cutoff_seconds
    )
    # A body trickled byte by byte: 408 at the read timeout.
    assert figures.body_statuses == Counter({"408": 5})
    assert all(s <= HOSTILE_READ_TIMEOUT_SECONDS + 1.5 for s in figures.body_cutoff_seconds)
    # Everyone else was served meanwhile (latency is a figure of the long run).
    assert figures.other_statuses == Counter({202: 30})
    assert hostile_relay.is_alive()


@pytest.mark.timeout(60)
def test_random_ids_with_duplicates_store_each_distinct_id_once(tmp_path: Path) -> None:
    relay = SyncRelay(tmp_path / "dup", read_timeout=5.0)
    try:
        figures = duplicate_ids(relay, requests=2000, duplicate_rate=0.1)
    finally:
        assert relay.stop() == 0
    assert figures.unique_ids == 1800
    assert figures.statuses == Counter({202: 1800, 200: 200})
    assert figures.stored == 1800


def _can_mount_tmpfs(tmp_path: Path) -> bool:
    probe = tmp_path / "probe"
    probe.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(probe)],
        capture_output=True,
        check=False,
    )
    if mounted.returncode != 0:
        return False
    subprocess.run(["umount", str(probe)], check=False)
    return True


@pytest.mark.timeout(60)
def test_disk_full_answers_503_and_recovers_without_losing_anything(tmp_path: Path) -> None:
    if not _can_mount_tmpfs(tmp_path):
        pytest.skip("cannot mount a small tmpfs here (needs CAP_SYS_ADMIN)")
    figures = disk_full(tmp_path / "disk")
    assert figures is not None
    assert figures.acked_before == 20
    assert figures.unavailable == 20
    assert figures.readyz_while_full == 503
    assert figures.statuses_after == Counter({202: 40})
    assert figures.lost == 0
    assert figures.integrity == "ok"
    assert figures.exit_code == 0
