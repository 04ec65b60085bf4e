"""PostgreSQL ingest: one transaction per group, INSERT … ON CONFLICT DO NOTHING.

Relays ingest concurrently, so two guards replace SQLite's single writer: the
primary key (and the unique body digest, for bodies signed alone) settles which
relay stores an id (the insert that loses reports nothing and its record is a
duplicate), and a transaction-scoped advisory lock
per job key makes "is this job status already accepted?" a question only one
relay asks at a time.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from psycopg import AsyncConnection

from pulse_relay.store.decide import Decision, decide_ingest, dedupe_keys
from pulse_relay.store.model import IngestOutcome, IngestRecord, headers_json


async def insert_events(
    conn: AsyncConnection[Any], records: Sequence[IngestRecord]
) -> list[IngestOutcome]:
    """Insert the new events of `records` and their deliveries; an outcome per record."""
    job_keys = sorted({r.job_key for r in records if r.job_key is not None})
    # Sorted, so two relays never wait on each other's keys in opposite orders.
    await conn.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended(k, 0)) FROM unnest(%s::text[]) AS k",
        (job_keys,),
    )
    keys = [key for record in records for key in dedupe_keys(record)]
    # A pruned id or digest is still known (for store.dedupe_days): a replay is a duplicate.
    # Both columns for every key: an event stored before digests were kept has its
    # digest as its id when it came without an id header.
    cursor = await conn.execute(
        "SELECT id FROM events WHERE id = ANY(%s) "
        "UNION SELECT id FROM pruned_events WHERE id = ANY(%s) "
        "UNION SELECT body_digest FROM events WHERE body_digest = ANY(%s) "
        "UNION SELECT body_digest FROM pruned_events WHERE body_digest = ANY(%s)",
        (keys, keys, keys, keys),
    )
    known_keys = {row[0] for row in await cursor.fetchall()}
    cursor = await conn.execute(
        "SELECT job_key, id FROM events WHERE state = 'accepted' AND job_key = ANY(%s)",
        (job_keys,),
    )
    seen_keys = {row[0]: row[1] for row in await cursor.fetchall()}
    decisions = decide_ingest(records, known_keys, seen_keys)
    stored = await _insert_new(conn, [d for d in decisions if d.outcome == "accepted"])
    return [
        "accepted" if d.outcome == "accepted" and d.record.event_id in stored else "duplicate"
        for d in decisions
    ]


async def _insert_new(conn: AsyncConnection[Any], decisions: list[Decision]) -> set[str]:
    """Insert `decisions`' events; the ids this transaction stored (another relay's
    concurrent insert of the same id or body digest wins and is not among them)."""
    if not decisions:
        return set()
    columns = [
        [d.record.event_id for d in decisions],
        [d.record.received_at for d in decisions],
        [d.record.source for d in decisions],
        [d.record.event_type for d in decisions],
        [d.record.job_id for d in decisions],
        [d.record.job_key for d in decisions],
        [d.state for d in decisions],
        [d.error for d in decisions],
        [headers_json(d.record.headers) for d in decisions],
        [d.record.body for d in decisions],
        ["pending" if d.needs_fetch else "none" for d in decisions],
        [d.record.received_at if d.needs_fetch else None for d in decisions],
        [d.record.client_address for d in decisions],
        [d.record.body_digest for d in decisions],
    ]
    # No conflict target: a concurrent insert of the same id, or of the same body digest
    # under another id, wins its unique index, and this row is left out.
    cursor = await conn.execute(
        "INSERT INTO events (id, received_at, source, type, job_id, job_key, state, error, "
        "headers, body, fetch_state, next_fetch_at, client_address, body_digest) "
        "SELECT * FROM unnest(%s::text[], %s::float8[], %s::text[], %s::text[], %s::text[], "
        "%s::text[], %s::text[], %s::text[], %s::text[], %s::bytea[], %s::text[], %s::float8[], "
        "%s::text[], %s::text[]) "
        "ON CONFLICT DO NOTHING RETURNING id",
        columns,
    )
    stored = {row[0] for row in await cursor.fetchall()}
    rows = [
        (d.record.event_id, sink, d.due_at, d.record.received_at)
        for d in decisions
        if d.record.event_id in stored
        for sink in d.sinks
    ]
    if rows:
        await conn.execute(
            "INSERT INTO deliveries (event_id, sink, state, next_attempt_at, updated_at) "
            "SELECT e, s, 'pending', n, u FROM unnest(%s::text[], %s::text[], %s::float8[], "
            "%s::float8[]) AS t(e, s, n, u)",
            [list(column) for column in zip(*rows, strict=True)],
        )
    return stored
