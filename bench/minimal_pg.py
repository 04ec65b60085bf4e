"""The lower-bound handler's group commit on PostgreSQL (`bench.minimal --relay-work
--postgres URL`): the same rows as on SQLite, committed the least costly way on this stack.

One psycopg connection on the writer thread, the relay's own schema (its migrate, so the
columns and indexes match), one transaction per group: a single
`INSERT ... SELECT FROM unnest(...) ON CONFLICT DO NOTHING RETURNING id`, sent with its
BEGIN and COMMIT in one pipeline, so a group costs one round trip. Sync psycopg on a thread
rather than async psycopg on the event loop: measured side by side, the async writer
answered no faster and cost about 5 % more CPU per answer. What it leaves out of
the relay's PostgreSQL ingest (store/postgres/ingest.py): the job-key advisory locks, the
pruned-id and job-status dedupe queries and the NOTIFY that wakes the delivery workers.
"""

from __future__ import annotations

import asyncio
import queue
from collections.abc import Callable
from typing import Any

import psycopg

from pulse_relay.store.postgres.schema import migrate

# Every column the relay's PostgreSQL ingest writes, typed as it types them.
INSERT = (
    "INSERT INTO events (id, received_at, source, type, job_id, job_key, state, error, "
    "headers, body, fetch_state, next_fetch_at, client_address, body_digest) "
    "SELECT * FROM unnest(%s::text[], %s::float8[], %s::text[], %s::text[], %s::text[], "
    "%s::text[], %s::text[], %s::text[], %s::text[], %s::bytea[], %s::text[], %s::float8[], "
    "%s::text[], %s::text[]) ON CONFLICT DO NOTHING RETURNING id"
)
INSERT_DELIVERIES = (
    "INSERT INTO deliveries (event_id, sink, state, next_attempt_at, updated_at) "
    "SELECT e, s, 'pending', n, u FROM unnest(%s::text[], %s::text[], %s::float8[], "
    "%s::float8[]) AS t(e, s, n, u)"
)


async def _migrate(url: str) -> None:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await migrate(conn, url)


def inserted(ids: list[str], stored: set[str]) -> list[bool]:
    """Whether each id of a group was stored by it: an id twice in one group is stored once,
    so only its first request is accepted."""
    seen: set[str] = set()
    answers = []
    for webhook_id in ids:
        answers.append(webhook_id in stored and webhook_id not in seen)
        seen.add(webhook_id)
    return answers


def pg_connect(url: str) -> psycopg.Connection[Any]:
    """The writer's connection, on the relay's schema. Opened before the handler serves, as
    the relay opens its pool: its server process exists when the bench counts the server's."""
    asyncio.run(_migrate(url))
    return psycopg.connect(url, autocommit=True)


def pg_writer(
    conn: psycopg.Connection[Any],
    jobs: queue.SimpleQueue[Any],
    due: Callable[[Any], list[tuple[Any, ...]]],
    resolve: Callable[[list[Any], list[bool]], None],
) -> None:
    """Commit groups of (row, future, loop) from `jobs` on `conn`; `due` gives an item's
    deliveries rows, `resolve` answers a group's futures on their loop."""
    with conn:
        while True:
            batch = [jobs.get()]
            while not jobs.empty():
                batch.append(jobs.get_nowait())
            columns = [list(column) for column in zip(*(item[0] for item in batch), strict=True)]
            deliveries = [row for item in batch for row in due(item)]
            with conn.pipeline(), conn.transaction():
                cursor = conn.execute(INSERT, columns)
                if deliveries:
                    # Rows for ids already stored are skipped by the primary key's conflict.
                    conn.execute(
                        INSERT_DELIVERIES + " ON CONFLICT DO NOTHING",
                        [list(column) for column in zip(*deliveries, strict=True)],
                    )
            done = inserted(columns[0], {row[0] for row in cursor.fetchall()})
            batch[0][2].call_soon_threadsafe(resolve, [item[1] for item in batch], done)
