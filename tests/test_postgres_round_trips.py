"""Round trips the PostgreSQL store makes per operation, counted on the wire.

The store talks to a real server through bench/pg_roundtrips.py's counting proxy,
so what is asserted is what the protocol carried, whatever the code that produced
it. Each operation the dispatcher repeats per event is one round trip (a single
statement in autocommit, or a pipeline); an ingest group is two (its reads, then
its writes with the commit), shared by every event of the group.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import psycopg
import pytest

from bench.pg_roundtrips import CountingProxy
from pulse_relay.store import Attempt, PostgresStore, StoreUnavailableError
from pulse_relay.store.model import DeliveryTask, FetchTask
from pulse_relay.store.postgres.plumbing import WORK_CHANNEL
from tests.helpers import FakeClock, ingest_record, wait_for

SINKS = ("a", "b", "c")
SLOTS = {sink: 100 for sink in SINKS}
# Events ingested, fetched and delivered together, as a relay under load handles them.
GROUP = 20
ROUND_TRIPS_PER_EVENT = 5


@dataclass
class Counted:
    store: PostgresStore
    proxy: CountingProxy
    clock: FakeClock


@pytest.fixture
async def counted(postgres_url: str) -> AsyncIterator[Counted]:
    port = urlsplit(postgres_url).port
    assert port is not None
    clock = FakeClock(now=1_000_000.0)
    with CountingProxy(port) as proxy:
        store = PostgresStore(proxy.url(postgres_url), clock=clock)
        listening = asyncio.Event()
        # The listener wakes the store once its LISTEN is done.
        store.add_wake_listener(listening.set)
        async with store:
            # The pool's first connection is made, the listener's too: what follows is
            # the operations' cost.
            await store.next_due_at(list(SINKS), include_fetches=True)
            await asyncio.wait_for(listening.wait(), 10)
            proxy.reset()
            yield Counted(store, proxy, clock)


def fetched() -> Attempt:
    return Attempt(None, 1, 1_000_000.0, 1.0, "fetched", 200)


async def finish(store: PostgresStore, fetch: FetchTask) -> list[DeliveryTask]:
    """Finish `fetch` with a completed job, leasing its deliveries within SLOTS."""
    return await store.finish_fetch(
        fetch.event_id,
        job={"status": "completed"},
        result_url=None,
        attempt=fetched(),
        free_slots=SLOTS,
        total_limit=300,
        lease_seconds=30,
        token=fetch.token,
    )


def delivered(sink: str) -> Attempt:
    return Attempt(sink, 1, 1_000_000.0, 1.0, "delivered", 200)


async def test_each_operation_of_an_event_is_one_round_trip(counted: Counted) -> None:
    store, proxy = counted.store, counted.proxy
    assert await store.ingest(ingest_record("m1", sinks=SINKS)) == "accepted"
    assert proxy.reset() <= 2
    fetches, deliveries = await store.claim(
        fetch_limit=10, free_slots=SLOTS, total_limit=300, lease_seconds=30
    )
    assert ([f.event_id for f in fetches], deliveries) == (["m1"], [])
    assert proxy.reset() == 1
    await store.renew_leases(fetches, [], lease_seconds=30)
    assert proxy.reset() == 1
    tasks = await finish(store, fetches[0])
    assert sorted((t.sink, t.job) for t in tasks) == [
        (sink, {"status": "completed"}) for sink in SINKS
    ]
    assert proxy.reset() == 1
    await store.renew_leases([], tasks, lease_seconds=30)
    assert proxy.reset() == 1
    for task in tasks:
        await store.finish_delivery(
            "m1", task.sink, outcome="delivered", attempt=delivered(task.sink), token=task.token
        )
        assert proxy.reset() == 1
    assert await store.next_due_at(list(SINKS), include_fetches=True) is None
    assert proxy.reset() == 1
    view = await store.get_event("m1")
    assert view is not None
    assert {sink: d["state"] for sink, d in view.deliveries.items()} == dict.fromkeys(
        SINKS, "delivered"
    )


async def test_an_event_costs_at_most_five_round_trips_in_a_group(counted: Counted) -> None:
    """Ingest, fetch and three deliveries of each of GROUP events handled together."""
    store, proxy = counted.store, counted.proxy
    ids = [f"m{n}" for n in range(GROUP)]
    outcomes = await asyncio.gather(
        *(store.ingest(ingest_record(i, job_id=f"job-{i}", sinks=SINKS)) for i in ids)
    )
    assert outcomes == ["accepted"] * GROUP
    fetches, _ = await store.claim(
        fetch_limit=GROUP, free_slots=SLOTS, total_limit=300, lease_seconds=30
    )
    assert sorted(f.event_id for f in fetches) == sorted(ids)
    tasks = [task for fetch in fetches for task in await finish(store, fetch)]
    assert len(tasks) == GROUP * len(SINKS)
    for task in tasks:
        await store.finish_delivery(
            task.event_id,
            task.sink,
            outcome="delivered",
            attempt=delivered(task.sink),
            token=task.token,
        )
    round_trips = proxy.reset()
    assert round_trips <= ROUND_TRIPS_PER_EVENT * GROUP, round_trips / GROUP
    for event_id in ids:
        view = await store.get_event(event_id)
        assert view is not None
        assert [d["state"] for d in view.deliveries.values()] == ["delivered"] * len(SINKS)


async def leased_deliveries(store: PostgresStore, ids: list[str]) -> list[DeliveryTask]:
    """Ingest, claim and fetch `ids`: their deliveries, leased."""
    for event_id in ids:
        await store.ingest(ingest_record(event_id, job_id=f"job-{event_id}", sinks=SINKS))
    fetches, _ = await store.claim(
        fetch_limit=len(ids), free_slots={}, total_limit=0, lease_seconds=30
    )
    return [task for fetch in fetches for task in await finish(store, fetch)]


async def delivery_states(store: PostgresStore, ids: list[str]) -> dict[tuple[str, str], str]:
    states = {}
    for event_id in ids:
        view = await store.get_event(event_id)
        assert view is not None
        states.update({(event_id, sink): d["state"] for sink, d in view.deliveries.items()})
    return states


async def test_finishes_that_arrive_together_share_one_statement(counted: Counted) -> None:
    """Finishes queued before the statement is sent all go in it: one round trip."""
    store, proxy = counted.store, counted.proxy
    ids = ["m1", "m2", "m3", "m4"]
    tasks = await leased_deliveries(store, ids)
    proxy.reset()
    await asyncio.gather(
        *(
            store.finish_delivery(
                t.event_id, t.sink, outcome="delivered", attempt=delivered(t.sink), token=t.token
            )
            for t in tasks
        )
    )
    assert proxy.reset() == 1
    assert set((await delivery_states(store, ids)).values()) == {"delivered"}
    for event_id in ids:
        view = await store.get_event(event_id)
        assert view is not None
        assert sorted(a.sink for a in view.attempts if a.sink) == sorted(SINKS)


async def test_a_finish_that_breaks_its_statement_fails_alone(counted: Counted) -> None:
    """A value the server refuses (a status code beyond its integer column) fails the
    shared statement: each finish is then sent alone, and only the bad one fails. A
    finish whose lease was taken over changes nothing, in a shared statement too."""
    store = counted.store
    ids = ["m1", "m2"]
    good, bad, taken_over, *rest = await leased_deliveries(store, ids)
    broken = Attempt(bad.sink, 1, 1_000_000.0, 1.0, "delivered", 2**40)

    def finishing(task: DeliveryTask, attempt: Attempt, token: str | None) -> Any:
        return store.finish_delivery(
            task.event_id, task.sink, outcome="delivered", attempt=attempt, token=token
        )

    first = finishing(rest[0], delivered(rest[0].sink), rest[0].token)
    outcomes = await asyncio.gather(
        first,
        finishing(good, delivered(good.sink), good.token),
        finishing(bad, broken, bad.token),
        finishing(taken_over, delivered(taken_over.sink), "another-relay:1"),
        *(finishing(t, delivered(t.sink), t.token) for t in rest[1:]),
        return_exceptions=True,
    )
    assert isinstance(outcomes[2], psycopg.errors.NumericValueOutOfRange), outcomes
    assert [o for n, o in enumerate(outcomes) if n != 2] == [None] * (len(outcomes) - 1)
    states = await delivery_states(store, ids)
    assert states.pop((bad.event_id, bad.sink)) == "pending"
    assert states.pop((taken_over.event_id, taken_over.sink)) == "pending"
    assert set(states.values()) == {"delivered"}


async def test_retrying_failing_renewing_and_releasing_are_one_round_trip_each(
    counted: Counted,
) -> None:
    store, proxy = counted.store, counted.proxy
    for event_id in ("m1", "m2"):
        await store.ingest(ingest_record(event_id, job_id=f"job-{event_id}", sinks=SINKS))
    fetches, _ = await store.claim(fetch_limit=2, free_slots={}, total_limit=0, lease_seconds=30)
    first, second = sorted(fetches, key=lambda f: f.event_id)
    proxy.reset()
    await store.retry_fetch(
        "m1", next_fetch_at=counted.clock.now, attempt=fetched(), token=first.token
    )
    assert proxy.reset() == 1
    await store.fail_fetch("m2", attempt=fetched(), token=second.token)
    assert proxy.reset() == 1
    fetches, _ = await store.claim(fetch_limit=2, free_slots={}, total_limit=0, lease_seconds=30)
    assert [f.event_id for f in fetches] == ["m1"]
    proxy.reset()
    await store.release_leases()
    assert proxy.reset() == 1
    # Released: the fetch is claimable again at once.
    fetches, _ = await store.claim(fetch_limit=2, free_slots={}, total_limit=0, lease_seconds=30)
    assert [f.event_id for f in fetches] == ["m1"]
    view = await store.get_event("m2")
    assert view is not None
    assert [d["state"] for d in view.deliveries.values()] == ["dead"] * len(SINKS)


async def test_a_record_that_breaks_its_group_fails_alone_and_the_connection_recovers(
    counted: Counted,
) -> None:
    """The check before queueing missed something (here a NUL in an id, which the text
    columns refuse): the group's pipelined transaction fails, is rolled back, and each
    record is committed alone, so only the bad one fails."""
    store = counted.store
    ids = ["m1", "bad\x00id", "m2"]
    # Queued together, so they share one group commit.
    futures = [
        store._queue_record(ingest_record(i, job_id=f"job-{n}", sinks=SINKS))
        for n, i in enumerate(ids)
    ]
    outcomes = await asyncio.gather(*futures, return_exceptions=True)
    assert outcomes[0] == outcomes[2] == "accepted"
    assert isinstance(outcomes[1], StoreUnavailableError)
    assert await store.ingest(ingest_record("m3", job_id="job-3", sinks=SINKS)) == "accepted"
    fetches, _ = await store.claim(fetch_limit=10, free_slots={}, total_limit=0, lease_seconds=30)
    assert sorted(f.event_id for f in fetches) == ["m1", "m2", "m3"]


async def test_a_relay_is_woken_by_its_own_commit_at_once_and_by_another_relays_notify(
    postgres_url: str,
) -> None:
    """Its own NOTIFY would wake it a second time, a claim round for nothing."""
    store = PostgresStore(postgres_url)
    listening = asyncio.Event()
    # Its listener wakes it once its LISTEN is done.
    store.add_wake_listener(listening.set)
    async with store, await psycopg.AsyncConnection.connect(postgres_url) as other:
        await asyncio.wait_for(listening.wait(), 10)
        wakes: list[str] = []
        store.add_wake_listener(lambda: wakes.append("woken"))
        # Its own notification, then another relay's, committed together: the server
        # sends both at once, and the listener reads them in one go.
        async with other.transaction():
            await other.execute(f"NOTIFY {WORK_CHANNEL}, '{store.relay_id}'".encode())
            await other.execute(f"NOTIFY {WORK_CHANNEL}, 'another-relay'".encode())
        await wait_for(lambda: len(wakes) >= 1)
        assert wakes == ["woken"]
        assert await store.ingest(ingest_record("m1", job_id="job-1")) == "accepted"
        # Before its answer, without waiting for the server's notification.
        assert wakes == ["woken"] * 2


async def test_a_pooled_connection_the_server_closed_is_not_handed_out(postgres_url: str) -> None:
    """Used moments ago, so not pinged: what the server sent when it closed the
    connection (as a restart does) is read for free before it is handed out."""
    async with (
        PostgresStore(postgres_url) as store,
        await psycopg.AsyncConnection.connect(postgres_url, autocommit=True) as admin,
    ):
        await store.next_due_at(list(SINKS), include_fetches=True)
        cursor = await admin.execute(
            "SELECT pid FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        pids = [row[0] for row in await cursor.fetchall()]
        assert pids
        await admin.execute(
            "SELECT pg_terminate_backend(pid) FROM unnest(%s::int[]) AS pid", (pids,)
        )

        async def gone() -> bool:
            cursor = await admin.execute(
                "SELECT pid FROM pg_stat_activity WHERE pid = ANY(%s)", (pids,)
            )
            return not await cursor.fetchall()

        await wait_for(gone)
        assert await store.next_due_at(list(SINKS), include_fetches=True) is None
