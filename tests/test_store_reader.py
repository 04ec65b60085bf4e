"""The listing `pulse-relay events` reads straight from a SQLite file (store/sqlite/reader.py):
the same views as the store proper's `list_events`, and None (the store proper answers)
wherever that path is not sure to be right."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from pulse_relay.store import MIGRATIONS, Attempt, SQLiteStore
from pulse_relay.store.sqlite.reader import list_events_now
from tests.helpers import FakeClock, ingest_record

# Every filter `events` takes, alone and together, each matching something and nothing.
QUERIES: list[dict[str, Any]] = [
    {},
    {"limit": 2},
    {"event_type": "job.failed"},
    {"state": "delivered"},
    {"state": "dead", "sink": "b"},
    {"state": "pending"},
    {"state": "accepted"},
    {"sink": "b"},
    {"sink": "nowhere"},
    {"job_id": "job-2"},
    {"source": "webhook"},
    {"source": "poll"},
    {"text": "M1"},
    {"text": "failed"},
    {"text": "100%_"},
]


async def filled_store(path: Path) -> SQLiteStore:
    """A closed store at `path` with events in every delivery state: m1 delivered to a,
    dead at b; m2 (another job, failed) pending; m3 with no sink; m4 waiting for its job."""
    store = SQLiteStore(path, clock=FakeClock(now=1_000_000.0))
    async with store:
        await store.ingest(ingest_record("m1", needs_fetch=False, received_at=10.0))
        await store.ingest(
            ingest_record("m2", job_id="job-2", event_type="job.failed", received_at=20.0)
        )
        await store.ingest(ingest_record("m3", sinks=(), needs_fetch=False, received_at=30.0))
        await store.ingest(ingest_record("m4", job_id="job-4", received_at=30.0))
        _, tasks = await store.claim(
            fetch_limit=0, free_slots={"a": 5, "b": 5}, total_limit=10, lease_seconds=30
        )
        for task in tasks:
            outcome = "delivered" if task.sink == "a" else "dead"
            attempt = Attempt(task.sink, 1, 0.0, 1.0, outcome, 200)
            await store.finish_delivery(task.event_id, task.sink, outcome=outcome, attempt=attempt)
    return store


@pytest.mark.parametrize("query", QUERIES, ids=repr)
async def test_the_file_read_lists_what_the_store_lists(
    tmp_path: Path, query: dict[str, Any]
) -> None:
    store = await filled_store(tmp_path / "relay.db")
    read = list_events_now(store.path, busy_timeout_seconds=1.0, **query)
    async with store:
        expected = await store.list_events(**query)
    assert read == expected
    assert read is not None


async def test_the_store_fixture_holds_every_delivery_state(tmp_path: Path) -> None:
    # Without this the comparison above could pass on listings that show nothing.
    store = await filled_store(tmp_path / "relay.db")
    read = list_events_now(store.path, busy_timeout_seconds=1.0)
    assert read is not None
    assert [view.id for view in read] == ["m3", "m4", "m2", "m1"]
    states = {(view.id, sink): d.state for view in read for sink, d in view.deliveries.items()}
    assert states[("m1", "a")] == "delivered"
    assert states[("m1", "b")] == "dead"
    assert states[("m2", "a")] == "pending"
    assert read[1].deliveries["a"].next_attempt_at is None  # waiting for its job


async def test_a_schema_to_migrate_or_refuse_is_left_to_the_store(tmp_path: Path) -> None:
    store = await filled_store(tmp_path / "relay.db")
    for version in (len(MIGRATIONS) - 1, len(MIGRATIONS) + 1):
        with sqlite3.connect(store.path) as db:
            db.execute(f"PRAGMA user_version = {version}")
        assert list_events_now(store.path, busy_timeout_seconds=1.0) is None


def test_a_file_that_is_no_store_is_left_to_the_store(tmp_path: Path) -> None:
    missing = tmp_path / "missing.db"
    assert list_events_now(missing, busy_timeout_seconds=1.0) is None
    assert not missing.exists()  # never created here: the store proper creates it private
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"not a database, " * 1000)
    assert list_events_now(garbage, busy_timeout_seconds=1.0) is None
    empty = tmp_path / "empty.db"
    sqlite3.connect(empty).close()
    assert list_events_now(empty, busy_timeout_seconds=1.0) is None
