"""The store's contract on both backends (a real SQLite file, a real PostgreSQL database):
group commit, dedupe, the queues, leases, versions. Tests that reach into SQLite's own
plumbing use `sqlite_store`."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import os
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from structlog.testing import capture_logs

from pulse_relay.logs import OUTAGE_WINDOW_SECONDS
from pulse_relay.store import (
    Attempt,
    IngestRecord,
    PostgresStore,
    SQLiteStore,
    StoreBackend,
    StoreUnavailableError,
    StoreVersionError,
    UnwritableRecordError,
)
from pulse_relay.store import base as store_base
from pulse_relay.store.model import record_problem
from pulse_relay.store.postgres import MIGRATIONS as POSTGRES_MIGRATIONS
from tests.helpers import FakeClock, count_events, ingest_record, wait_for


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(now=1_000_000.0)


@pytest.fixture(params=["sqlite", "postgresql"])
async def store(
    request: pytest.FixtureRequest, tmp_path: Path, clock: FakeClock
) -> AsyncIterator[StoreBackend]:
    opened: StoreBackend
    if request.param == "sqlite":
        opened = SQLiteStore(tmp_path / "relay.db", clock=clock)
    else:
        opened = PostgresStore(request.getfixturevalue("postgres_url"), clock=clock)
    async with opened:
        yield opened


@pytest.fixture
async def sqlite_store(tmp_path: Path, clock: FakeClock) -> AsyncIterator[SQLiteStore]:
    async with SQLiteStore(tmp_path / "relay.db", clock=clock) as opened:
        yield opened


def hex_record(event_id: str, body: bytes, **fields: Any) -> IngestRecord:
    """A record whose body is its only signed part: its digest is a second dedupe key."""
    digest = "sha256:" + hashlib.sha256(body).hexdigest()
    return dataclasses.replace(ingest_record(event_id, **fields), body=body, body_digest=digest)


def fetched(attempt: int = 1) -> Attempt:
    return Attempt(None, attempt, 0.0, 1.0, "fetched", 200)


async def test_concurrent_ingests_share_transactions_and_each_learns_its_outcome(
    store: StoreBackend,
) -> None:
    records = [ingest_record(f"m{n}", job_id=f"job-{n}") for n in range(200)]
    outcomes = await asyncio.gather(*(store.ingest(r) for r in [*records, records[0]]))
    assert outcomes.count("accepted") == 200
    assert outcomes[-1] == "duplicate"
    assert await count_events(store) == 200


async def test_a_second_event_for_the_same_job_status_is_kept_but_not_delivered(
    store: StoreBackend,
) -> None:
    assert await store.ingest(ingest_record("m1")) == "accepted"
    assert await store.ingest(ingest_record("m2")) == "accepted"
    second = await store.get_event("m2")
    assert second is not None
    assert (second.state, second.deliveries) == ("repeat", {})
    assert "m1" in (second.error or "")


async def test_deliveries_wait_for_the_fetch_then_are_claimed_within_the_limits(
    store: StoreBackend, clock: FakeClock
) -> None:
    for n in range(5):
        await store.ingest(ingest_record(f"m{n}", job_id=f"job-{n}"))
    view = await store.get_event("m0")
    assert view is not None
    assert view.deliveries["a"]["next_attempt_at"] is None  # waiting for the job
    fetches, deliveries = await store.claim(
        fetch_limit=2, free_slots={"a": 5, "b": 5}, total_limit=10, lease_seconds=30
    )
    assert [f.event_id for f in fetches] == ["m0", "m1"]
    assert deliveries == []
    started = await store.finish_fetch(
        "m0",
        job={"status": "completed"},
        result_url=None,
        attempt=fetched(),
        free_slots={"a": 1, "b": 0},
        total_limit=1,
        lease_seconds=30,
    )
    assert [(t.event_id, t.sink, t.job) for t in started] == [("m0", "a", {"status": "completed"})]
    # m0's other delivery is due now; m1 is leased for its fetch; the rest wait.
    fetches, deliveries = await store.claim(
        fetch_limit=0, free_slots={"a": 5, "b": 5}, total_limit=10, lease_seconds=30
    )
    assert [(t.event_id, t.sink) for t in deliveries] == [("m0", "b")]
    assert await store.next_due_at(["a", "b"], include_fetches=True) == clock.now


async def test_due_counts_are_the_deliveries_a_claim_could_take_now(
    store: StoreBackend, clock: FakeClock
) -> None:
    for n in range(4):
        await store.ingest(ingest_record(f"m{n}", job_id=f"job-{n}", needs_fetch=False))
    # Waiting for its job: not due.
    await store.ingest(ingest_record("f1", job_id="job-f"))
    assert await store.due_counts(["a", "b", "c"]) == {"a": 4, "b": 4, "c": 0}
    assert await store.due_counts([]) == {}
    # Leased: not due, until the lease runs out.
    _, leased = await store.claim(
        fetch_limit=0, free_slots={"a": 1}, total_limit=1, lease_seconds=30
    )
    # Retried later: not due until then.
    await store.finish_delivery(
        "m3", "b", outcome="retry", attempt=fetched(), next_attempt_at=clock.now + 60
    )
    assert len(leased) == 1
    assert await store.due_counts(["a", "b"]) == {"a": 3, "b": 3}
    clock.now += 60
    assert await store.due_counts(["a", "b"]) == {"a": 4, "b": 4}


async def test_leases_expire_so_work_of_a_dead_process_is_claimed_again(
    store: StoreBackend, clock: FakeClock
) -> None:
    await store.ingest(ingest_record("m1", needs_fetch=False))
    _, first = await store.claim(
        fetch_limit=0, free_slots={"a": 1, "b": 1}, total_limit=2, lease_seconds=30
    )
    assert len(first) == 2
    _, none = await store.claim(
        fetch_limit=0, free_slots={"a": 1, "b": 1}, total_limit=2, lease_seconds=30
    )
    assert none == []
    clock.now += 31
    _, again = await store.claim(
        fetch_limit=0, free_slots={"a": 1, "b": 1}, total_limit=2, lease_seconds=30
    )
    assert sorted(t.sink for t in again) == ["a", "b"]


async def test_sqlite_takes_back_a_dead_predecessors_leases_at_once(
    sqlite_store: SQLiteStore,
) -> None:
    await sqlite_store.ingest(ingest_record("m1", needs_fetch=False))
    await sqlite_store.ingest(ingest_record("m2", job_id="job-2"))
    await sqlite_store.add_watches(["job-w"], interval_seconds=5)
    fetches, deliveries = await sqlite_store.claim(
        fetch_limit=1, free_slots={"a": 1, "b": 1}, total_limit=2, lease_seconds=600
    )
    watches = await sqlite_store.claim_watches(limit=1, lease_seconds=600)
    assert (len(fetches), len(deliveries), len(watches)) == (1, 2, 1)

    await sqlite_store.take_back_leases()

    fetches, deliveries = await sqlite_store.claim(
        fetch_limit=1, free_slots={"a": 1, "b": 1}, total_limit=2, lease_seconds=600
    )
    assert [t.event_id for t in fetches] == ["m2"]
    assert sorted((t.event_id, t.sink) for t in deliveries) == [("m1", "a"), ("m1", "b")]
    assert [w.job_id for w in await sqlite_store.claim_watches(limit=1, lease_seconds=600)] == [
        "job-w"
    ]


async def test_a_failed_fetch_kills_the_deliveries_and_a_replay_fetches_again(
    store: StoreBackend,
) -> None:
    await store.ingest(ingest_record("m1"))
    await store.claim(fetch_limit=1, free_slots={}, total_limit=0, lease_seconds=30)
    await store.fail_fetch("m1", attempt=Attempt(None, 5, 0.0, 1.0, "dead", 404, "HTTP 404"))
    view = await store.get_event("m1")
    assert view is not None
    assert {d["state"] for d in view.deliveries.values()} == {"dead"}
    assert view.deliveries["a"]["last_error"] == "job fetch failed: HTTP 404"

    assert await store.replay(dead_only=True) == 2
    view = await store.get_event("m1")
    assert view is not None
    assert view.fetch_state == "pending"
    assert {d["state"] for d in view.deliveries.values()} == {"pending"}
    assert all(d["next_attempt_at"] is None for d in view.deliveries.values())
    fetches, deliveries = await store.claim(
        fetch_limit=1, free_slots={"a": 1, "b": 1}, total_limit=2, lease_seconds=30
    )
    assert ([f.event_id for f in fetches], deliveries) == (["m1"], [])


async def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "relay.db"
    async with SQLiteStore(path):
        pass
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA user_version = 99")
    with pytest.raises(StoreVersionError, match="upgrade pulse-relay"):
        async with SQLiteStore(path):
            pass


async def test_writes_fail_cleanly_when_another_writer_holds_the_lock(tmp_path: Path) -> None:
    path = tmp_path / "relay.db"
    async with SQLiteStore(path, busy_timeout_seconds=0.1) as store:
        blocker = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        try:
            await asyncio.to_thread(blocker.execute, "BEGIN EXCLUSIVE")
            with pytest.raises(StoreUnavailableError):
                await store.ingest(ingest_record("m1"))
            with pytest.raises(StoreUnavailableError):
                await store.check_writable()
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        assert await store.ingest(ingest_record("m1")) == "accepted"
        await store.check_writable()


async def test_an_op_that_raises_fails_alone(sqlite_store: SQLiteStore) -> None:
    def broken(db: sqlite3.Connection) -> None:
        db.execute("INSERT INTO probes (name, written_at) VALUES ('x', 1)")
        raise ValueError("bug")

    results = await asyncio.gather(
        sqlite_store.write(broken), sqlite_store.ingest(ingest_record("m1")), return_exceptions=True
    )
    assert isinstance(results[0], ValueError)
    assert results[1] == "accepted"
    # The failing op's own write was rolled back with its savepoint.
    async with sqlite_store.db.execute("SELECT COUNT(*) FROM probes WHERE name = 'x'") as cursor:
        assert (await cursor.fetchone())[0] == 0


async def test_a_delivery_view_reads_by_attribute_and_by_its_former_keys(
    store: StoreBackend,
) -> None:
    await store.ingest(ingest_record("m1", needs_fetch=False))
    await store.replay(["m1"], sink="a")
    view = await store.get_event("m1")
    assert view is not None
    delivery = view.deliveries["a"]
    assert (delivery.state, delivery.attempts, delivery.is_replay) == ("pending", 0, True)
    assert (delivery["state"], delivery["replay"]) == ("pending", True)
    with pytest.raises(KeyError):
        delivery["sink"]


async def test_pruned_ids_stay_known_until_forgotten(store: StoreBackend, clock: FakeClock) -> None:
    day = 86_400.0
    assert await store.ingest(ingest_record("m_old", sinks=(), needs_fetch=False)) == "accepted"
    assert await store.ingest(
        ingest_record("m_new", job_id="job-2", sinks=(), needs_fetch=False)
    ) == ("accepted")
    assert await store.prune(received_before=clock.now + 1, batch_size=1) == 2
    assert await count_events(store) == 0
    # Payload and rows are gone; the ids are not.
    assert await store.ingest(ingest_record("m_old")) == "duplicate"
    assert await store.ingest(ingest_record("m_new", job_id="job-2")) == "duplicate"
    assert await count_events(store) == 0
    assert await store.is_pruned("m_old")
    # Never within a day of the pruning, whatever the caller asks.
    assert await store.forget_ids(pruned_before=clock.now + 1) == 0
    clock.now += day + 1
    assert await store.forget_ids(pruned_before=clock.now - 2 * day) == 0
    assert await store.forget_ids(pruned_before=clock.now, batch_size=1) == 2
    assert not await store.is_pruned("m_old")
    assert await store.ingest(ingest_record("m_old")) == "accepted"


async def test_a_body_under_another_id_is_a_duplicate_while_its_ids_are_known(
    store: StoreBackend, clock: FakeClock
) -> None:
    day = 86_400.0
    body = b'{"type": "job.processing", "timestamp": 1000000}'
    first = hex_record("d1", body, event_type="job.processing", sinks=(), needs_fetch=False)
    assert await store.ingest(first) == "accepted"
    assert await store.ingest(dataclasses.replace(first, event_id="d2")) == "duplicate"
    other_body = hex_record(
        "d3", body + b" ", event_type="job.processing", job_id="job-2", sinks=(), needs_fetch=False
    )
    assert await store.ingest(other_body) == "accepted"
    # Records without a digest (Standard Webhooks) never collide on their bodies.
    assert await store.ingest(ingest_record("s1", job_id="job-3")) == "accepted"
    assert await store.ingest(ingest_record("s2", job_id="job-4")) == "accepted"

    assert await store.prune(received_before=clock.now + 1) == 2
    assert await store.ingest(dataclasses.replace(first, event_id="d4")) == "duplicate"
    clock.now += day + 1
    assert await store.forget_ids(pruned_before=clock.now) == 2
    assert await store.ingest(dataclasses.replace(first, event_id="d5")) == "accepted"
    assert await store.get_event("d2") is None


async def test_a_body_stored_under_its_digest_before_digests_were_kept_is_known(
    store: StoreBackend,
) -> None:
    body = b'{"type": "job.created"}'
    digest = "sha256:" + hashlib.sha256(body).hexdigest()
    # As the store held an id-less hex event before it kept digests: the digest as id only.
    old = dataclasses.replace(
        ingest_record(digest, event_type="job.created", job_id=None), body=body
    )
    assert await store.ingest(old) == "accepted"

    replayed = hex_record("delivery-9", body, event_type="job.created", job_id=None)
    assert await store.ingest(replayed) == "duplicate"


async def test_one_body_twice_in_one_group_commit_is_stored_once(store: StoreBackend) -> None:
    body = b'{"type": "job.created"}'
    records = [hex_record(f"g{n}", body, event_type="job.created", job_id=None) for n in range(5)]

    outcomes = await asyncio.gather(*(store.ingest(r) for r in records))

    assert sorted(outcomes) == ["accepted"] + ["duplicate"] * 4
    assert await count_events(store) == 1


async def test_pruned_ids_survive_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "relay.db"
    async with SQLiteStore(path) as store:
        assert await store.ingest(ingest_record("m1", sinks=(), needs_fetch=False)) == "accepted"
        assert await store.prune(received_before=2_000_000.0) == 1
    async with SQLiteStore(path) as store:
        assert await store.ingest(ingest_record("m1")) == "duplicate"


async def test_the_database_file_is_created_for_its_owner_only(tmp_path: Path) -> None:
    previous = os.umask(0o022)
    try:
        async with SQLiteStore(tmp_path / "state" / "relay.db"):
            pass
    finally:
        os.umask(previous)
    assert (tmp_path / "state").stat().st_mode & 0o777 == 0o700
    assert (tmp_path / "state" / "relay.db").stat().st_mode & 0o777 == 0o600


SQLITE_DEFAULT_MAX_VARIABLES = 32_766
MORE_IDS_THAN_ONE_STATEMENT_BINDS = 33_000


async def limit_writes_to_sqlite_default_variables(store: SQLiteStore) -> None:
    """Builds differ (Debian's allows 250 000 variables); the default is what must work."""

    def limit(db: sqlite3.Connection) -> None:
        db.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, SQLITE_DEFAULT_MAX_VARIABLES)

    await store.write(limit)


async def test_replay_takes_more_event_ids_than_one_statement_can_bind(
    sqlite_store: SQLiteStore,
) -> None:
    ids = [f"m{n}" for n in range(MORE_IDS_THAN_ONE_STATEMENT_BINDS)]

    def insert_dead_deliveries(db: sqlite3.Connection) -> None:
        # Straight into the tables in one transaction: ingesting them one by one would be slow.
        db.executemany(
            "INSERT INTO events (id, received_at, source, state, headers, body, fetch_state) "
            "VALUES (?, 0, 'webhook', 'accepted', '{}', x'', 'none')",
            [(event_id,) for event_id in ids],
        )
        db.executemany(
            "INSERT INTO deliveries (event_id, sink, state, next_attempt_at, updated_at) "
            "VALUES (?, 'a', 'dead', 0, 0)",
            [(event_id,) for event_id in ids],
        )

    await sqlite_store.write(insert_dead_deliveries)
    await limit_writes_to_sqlite_default_variables(sqlite_store)
    # A repeated id is one delivery, however the ids are split up.
    assert await sqlite_store.replay([*ids, ids[0]]) == len(ids)
    assert await sqlite_store.pending_counts() == {"a": len(ids)}
    last = await sqlite_store.get_event(ids[-1])
    assert last is not None and last.deliveries["a"].is_replay


async def test_unwatch_takes_more_job_ids_than_one_statement_can_bind(
    sqlite_store: SQLiteStore,
) -> None:
    job_ids = [f"job-{n}" for n in range(MORE_IDS_THAN_ONE_STATEMENT_BINDS)]
    await sqlite_store.add_watches(job_ids, interval_seconds=5)
    await limit_writes_to_sqlite_default_variables(sqlite_store)
    assert await sqlite_store.remove_watches([*job_ids, "job-unknown"]) == len(job_ids)
    assert await sqlite_store.list_watches() == []


# --- PostgreSQL: several relays on one database ------------------------------------------


async def test_an_id_ingested_by_two_relays_at_once_is_accepted_by_exactly_one(
    postgres_url: str,
) -> None:
    async with PostgresStore(postgres_url) as first, PostgresStore(postgres_url) as second:
        outcomes = await asyncio.gather(
            *(
                relay.ingest(ingest_record(f"m{n}", job_id=f"job-{n}"))
                for n in range(50)
                for relay in (first, second)
            )
        )
        assert sorted(outcomes) == ["accepted"] * 50 + ["duplicate"] * 50
        assert await count_events(first) == 50
        # One delivery per sink for each id: the losing insert started none.
        assert await first.pending_counts() == {"a": 50, "b": 50}


async def test_a_body_ingested_by_two_relays_under_two_ids_is_accepted_by_exactly_one(
    postgres_url: str,
) -> None:
    async with PostgresStore(postgres_url) as first, PostgresStore(postgres_url) as second:
        outcomes = await asyncio.gather(
            *(
                relay.ingest(
                    hex_record(f"{name}{n}", b'{"type": "job.created", "n": %d}' % n, job_id=None)
                )
                for n in range(50)
                for name, relay in (("x", first), ("y", second))
            )
        )
        assert sorted(outcomes) == ["accepted"] * 50 + ["duplicate"] * 50
        assert await count_events(first) == 50
        assert await first.pending_counts() == {"a": 50, "b": 50}


async def listener_pid(conn: psycopg.AsyncConnection[tuple[object, ...]]) -> int | None:
    cursor = await conn.execute(
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
        "AND query LIKE 'LISTEN %%' AND pid <> pg_backend_pid()"
    )
    row = await cursor.fetchone()
    return None if row is None else int(str(row[0]))


async def drop_listener(conn: psycopg.AsyncConnection[tuple[object, ...]]) -> None:
    """End the store's LISTEN connection, and return once it has listened again."""
    await wait_for(lambda: listener_pid(conn), timeout_seconds=10)
    dropped = await listener_pid(conn)
    await conn.execute("SELECT pg_terminate_backend(%s)", (dropped,))

    async def listens_again() -> bool:
        return (await listener_pid(conn)) not in (None, dropped)

    await wait_for(listens_again, timeout_seconds=10)


async def test_a_listener_that_keeps_losing_its_connection_warns_once_a_window(
    postgres_url: str, clock: FakeClock
) -> None:
    async with (
        PostgresStore(postgres_url, clock=clock),
        await psycopg.AsyncConnection.connect(postgres_url, autocommit=True) as admin,
    ):
        with capture_logs() as logs:
            for _ in range(3):
                await drop_listener(admin)
            clock.now += OUTAGE_WINDOW_SECONDS
            await drop_listener(admin)

    lost = [line for line in logs if line["event"].startswith("store listener lost")]
    assert [line["log_level"] for line in lost] == ["warning", "warning"]


async def test_a_late_relay_cannot_finish_work_another_took_over(
    postgres_url: str, clock: FakeClock
) -> None:
    slots = {"a": 1}
    async with (
        PostgresStore(postgres_url, clock=clock) as late,
        PostgresStore(postgres_url, clock=clock) as other,
    ):
        await late.ingest(ingest_record("m1", needs_fetch=False, sinks=("a",)))
        _, [stale] = await late.claim(
            fetch_limit=0, free_slots=slots, total_limit=1, lease_seconds=30
        )
        clock.now += 31
        _, [taken] = await other.claim(
            fetch_limit=0, free_slots=slots, total_limit=1, lease_seconds=30
        )
        dead = Attempt("a", 1, clock.now, 1.0, "dead", 400, "late answer")
        await late.finish_delivery("m1", "a", outcome="dead", attempt=dead, token=stale.token)
        await late.renew_leases([], [stale], lease_seconds=600)
        view = await other.get_event("m1")
        assert view is not None
        assert (view.deliveries["a"].state, view.attempts) == ("pending", [])

        done = Attempt("a", 1, clock.now, 1.0, "delivered", 200)
        await other.finish_delivery("m1", "a", outcome="delivered", attempt=done, token=taken.token)
        view = await late.get_event("m1")
        assert view is not None
        assert view.deliveries["a"].state == "delivered"


async def test_a_relay_releases_its_own_leases_only(postgres_url: str) -> None:
    slots = {"a": 1, "b": 1}
    async with PostgresStore(postgres_url) as first, PostgresStore(postgres_url) as second:
        await first.ingest(ingest_record("m1", needs_fetch=False))
        _, [held] = await first.claim(
            fetch_limit=0, free_slots={"a": 1}, total_limit=1, lease_seconds=600
        )
        _, [other] = await second.claim(
            fetch_limit=0, free_slots={"b": 1}, total_limit=1, lease_seconds=600
        )
        await second.release_leases()
        _, again = await first.claim(
            fetch_limit=0, free_slots=slots, total_limit=2, lease_seconds=600
        )
        assert [(t.event_id, t.sink) for t in again] == [("m1", "b")]
        assert (held.sink, other.sink) == ("a", "b")


async def test_relays_starting_together_migrate_once(postgres_url: str) -> None:
    stores = [PostgresStore(postgres_url) for _ in range(4)]
    await asyncio.gather(*(store.open() for store in stores))
    try:
        versions = {await store.schema_version() for store in stores}
        assert versions == {len(POSTGRES_MIGRATIONS)}
    finally:
        await asyncio.gather(*(store.close() for store in stores))


async def test_a_newer_postgres_schema_is_refused(postgres_url: str) -> None:
    async with PostgresStore(postgres_url):
        pass
    async with await psycopg.AsyncConnection.connect(postgres_url, autocommit=True) as conn:
        await conn.execute("UPDATE pulse_relay_schema SET version = 99")
    with pytest.raises(StoreVersionError, match="upgrade pulse-relay"):
        async with PostgresStore(postgres_url):
            pass


async def test_an_unreachable_postgres_is_unavailable_not_a_crash() -> None:
    store = PostgresStore("postgresql://nobody@127.0.0.1:1/none?connect_timeout=1")
    with pytest.raises(StoreUnavailableError):
        await store.open()


async def test_reads_racing_a_close_find_the_store_unavailable(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "relay.db")
    with pytest.raises(StoreUnavailableError):
        await store.next_due_at(["file"], include_fetches=True)
    await store.open()
    readers = [
        asyncio.create_task(store.next_due_at(["file"], include_fetches=True)) for _ in range(50)
    ]
    await asyncio.sleep(0)
    await store.close()
    for outcome in await asyncio.gather(*readers, return_exceptions=True):
        assert outcome is None or isinstance(outcome, StoreUnavailableError), repr(outcome)
    with pytest.raises(StoreUnavailableError):
        await store.next_due_at(["file"], include_fetches=True)


async def test_a_read_sqlite_cannot_do_finds_the_store_unavailable(tmp_path: Path) -> None:
    async with SQLiteStore(tmp_path / "relay.db") as store:
        with sqlite3.connect(tmp_path / "relay.db") as other:
            other.execute("ALTER TABLE deliveries RENAME TO deliveries_elsewhere")
        with pytest.raises(StoreUnavailableError, match="store read failed: no such table"):
            await store.next_due_at(["file"], include_fetches=True)


async def test_stored_headers_come_back_as_received(store: StoreBackend) -> None:
    # Header values are text as aiohttp decodes it: non-ASCII, and a lone surrogate where
    # the bytes sent were not UTF-8.
    headers = {"webhook-id": "m1", "user-agent": "relé/1.0", "x-forwarded-for": "caf\udce9"}
    given = dataclasses.replace(ingest_record("m1"), headers=headers)
    assert await store.ingest(given) == "accepted"
    view = await store.get_event("m1")
    assert view is not None
    assert view.headers == headers


UNWRITABLE_TYPES = {"lone-surrogate": "job.\ud800", "nul": "job.\x00"}


@pytest.mark.parametrize("event_type", UNWRITABLE_TYPES.values(), ids=UNWRITABLE_TYPES.keys())
async def test_a_record_the_store_cannot_write_is_refused_alone(
    store: StoreBackend, event_type: str
) -> None:
    records = [ingest_record(f"m{n}", job_id=f"job-{n}") for n in range(40)]
    records[20] = dataclasses.replace(ingest_record("m20", job_id="job-20"), event_type=event_type)
    results = await asyncio.gather(*(store.ingest(r) for r in records), return_exceptions=True)
    refused = results.pop(20)
    assert isinstance(refused, UnwritableRecordError)
    assert refused.reason.startswith("event_type ")
    assert results == ["accepted"] * 39
    assert await count_events(store) == 39


_TEXT_FIELDS = ("event_id", "source", "event_type", "job_id", "job_key", "error", "client_address")
_UNSTORABLE = {
    "a\x00b": "holds a NUL character",
    "a\ud800": "is not valid Unicode text (a lone surrogate)",
}


@pytest.mark.parametrize("name", _TEXT_FIELDS)
@pytest.mark.parametrize("text", _UNSTORABLE)
def test_a_record_text_no_store_can_hold_is_named_by_its_field(name: str, text: str) -> None:
    record = dataclasses.replace(ingest_record("m1"), **{"client_address": "127.0.0.1", name: text})
    assert record_problem(record) == f"{name} {_UNSTORABLE[text]}"


@pytest.mark.parametrize("text", _UNSTORABLE)
def test_a_sink_name_no_store_can_hold_is_named(text: str) -> None:
    record = dataclasses.replace(ingest_record("m1"), sinks=("a", text))
    assert record_problem(record) == f"sink {_UNSTORABLE[text]}"


def test_a_record_every_store_can_hold_has_no_problem_and_split_surrogates_do_not_pair() -> None:
    assert record_problem(ingest_record("m1", job_id=None)) is None
    # A pair's halves in two fields are two lone surrogates, not one character.
    record = dataclasses.replace(
        ingest_record("m1"), job_id="caf\u00e9 \U0001f600", error="\ud83d", client_address="\ude00"
    )
    assert record_problem(record) == "error is not valid Unicode text (a lone surrogate)"


async def test_a_failed_group_commit_is_retried_record_by_record(
    store: StoreBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As if the check before the batch missed what the database then refuses.
    monkeypatch.setattr(store_base, "record_problem", lambda record: None)
    records = [ingest_record(f"m{n}", job_id=f"job-{n}") for n in range(40)]
    records[20] = dataclasses.replace(
        ingest_record("m20", job_id="job-20"), event_type="job.\ud800"
    )
    results = await asyncio.gather(*(store.ingest(r) for r in records), return_exceptions=True)
    assert isinstance(results.pop(20), Exception)
    assert results == ["accepted"] * 39
    assert await count_events(store) == 39
    assert await store.ingest(ingest_record("m41", job_id="job-41")) == "accepted"


async def test_watch_metadata_no_store_can_hold_is_kept_with_replacements(
    store: StoreBackend,
) -> None:
    # A lone surrogate (from a JSON escape or a header that is not UTF-8) and a NUL
    # (PostgreSQL's jsonb refuses both); a backslash before `u0000` is only text.
    metadata = {"note": "caf\ud800", "nul": "a\x00b", "text": "\\u0000", "k\udfff": 1}
    await store.add_watches(["job-w"], metadata=metadata, interval_seconds=1.0)
    (watch,) = await store.list_watches()
    assert watch.metadata == {
        "note": "caf\ufffd",
        "nul": "a\ufffdb",
        "text": "\\u0000",
        "k\ufffd": 1,
    }


async def claim_all(store: StoreBackend) -> list[Any]:
    _, deliveries = await store.claim(
        fetch_limit=0, free_slots={"a": 5, "b": 5}, total_limit=10, lease_seconds=30
    )
    return sorted(deliveries, key=lambda task: task.sink)


def delivered(sink: str, task: Any) -> Attempt:
    return Attempt(sink, 1, 0.0, 1.0, "delivered", 200, edited_envelope=task.edited_envelope)


async def test_an_edited_replay_sends_its_envelope_once_and_keeps_it_with_its_attempts(
    store: StoreBackend,
) -> None:
    await store.ingest(ingest_record("m1", needs_fetch=False))
    for task in await claim_all(store):
        assert task.edited_envelope is None
        await store.finish_delivery(
            "m1", task.sink, outcome="delivered", attempt=delivered(task.sink, task)
        )
    # Key order is kept; a lone surrogate is stored (and sent) as U+FFFD, a NUL as written.
    edited = {"z": 1, "id": "m1", "a": ["caf\ud800", "nul\x00"]}
    assert await store.replay(["m1"], sink="a", edited_envelope=edited) == 1
    (task,) = await claim_all(store)
    assert (task.sink, task.is_replay) == ("a", True)
    assert task.edited_envelope == {"z": 1, "id": "m1", "a": ["caf\ufffd", "nul\x00"]}
    assert list(task.edited_envelope) == ["z", "id", "a"]
    await store.finish_delivery("m1", "a", outcome="delivered", attempt=delivered("a", task))

    view = await store.get_event("m1")
    assert view is not None
    assert view.body == ingest_record("m1").body  # the event itself never changes
    assert view.deliveries["a"].edited_envelope == task.edited_envelope
    assert view.deliveries["b"].edited_envelope is None
    assert [(a.sink, a.edited_envelope) for a in view.attempts] == [
        ("a", None),
        ("b", None),
        ("a", task.edited_envelope),
    ]
    (listed,) = await store.list_events(event_id="m1")
    assert listed.deliveries["a"].edited_envelope is None  # listings never read it

    # The edit held for its own replay only: the next one sends the event's envelope.
    assert await store.replay(["m1"]) == 2
    assert [task.edited_envelope for task in await claim_all(store)] == [None, None]
    view = await store.get_event("m1")
    assert view is not None and view.deliveries["a"].edited_envelope is None
    assert view.attempts[-1].edited_envelope == task.edited_envelope


async def test_a_sqlite_read_sees_every_commit_before_it_beside_a_read_in_progress(
    sqlite_store: SQLiteStore,
) -> None:
    # A statement left open on the reading connection (a listing read part way, or one
    # whose rows are awaited chunk by chunk) would pin every other read on that connection
    # to its snapshot: a watch just added would be missing from the next read.
    await sqlite_store.add_watches([f"job-{n}" for n in range(300)], interval_seconds=5)
    async with sqlite_store.read("SELECT job_id FROM watches") as rows:
        assert await rows.fetchone() is not None
        await sqlite_store.add_watches(["job-new"], interval_seconds=5)
        assert await sqlite_store.get_watch("job-new") is not None
        assert "job-new" in {watch.job_id for watch in await sqlite_store.list_watches()}
