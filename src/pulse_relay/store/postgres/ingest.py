"""PostgreSQL ingest: one transaction per group, INSERT … ON CONFLICT DO NOTHING.

Relays ingest concurrently, so two guards replace SQLite's single writer: the
primary key (and the unique body digest, for bodies signed alone) settles which
relay stores an id (the insert that loses reports nothing and its record is a
duplicate), and a transaction-scoped advisory lock
per job key makes "is this job status already accepted?" a question only one
relay asks at a time.

The caller runs it in pipeline mode: the locks and both reads go to the server
together (one round trip), then the insert of events and deliveries, its NOTIFY and
the COMMIT together (a second); which ids were stored is read once committed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from psycopg import AsyncConnection, AsyncCursor

from pulse_relay.store.decide import Decision, decide_ingest, dedupe_keys
from pulse_relay.store.model import IngestOutcome, IngestRecord, headers_json

# No conflict target: a concurrent insert of the same id, or of the same body digest
# under another id, wins its unique index, and this row is left out (so are its
# deliveries, joined on the ids stored). One NOTIFY, and only if something was stored:
# `woken` has a row then, and the cross join with it keeps every stored id.
_INSERT = (
    "WITH new AS (INSERT INTO events (id, received_at, source, type, job_id, job_key, state, "
    "error, headers, body, fetch_state, next_fetch_at, client_address, body_digest) "
    "SELECT * FROM unnest(%s::text[], %s::float8[], %s::text[], %s::text[], %s::text[], "
    "%s::text[], %s::text[], %s::text[], %s::text[], %s::bytea[], %s::text[], %s::float8[], "
    "%s::text[], %s::text[]) "
    "ON CONFLICT DO NOTHING RETURNING id), "
    "started AS (INSERT INTO deliveries (event_id, sink, state, next_attempt_at, updated_at) "
    "SELECT t.e, t.s, 'pending', t.n, t.u FROM unnest(%s::text[], %s::text[], %s::float8[], "
    "%s::float8[]) AS t(e, s, n, u) JOIN new ON new.id = t.e), "
    "woken AS MATERIALIZED (SELECT pg_notify(%s, %s) FROM (SELECT FROM new LIMIT 1) AS one) "
    "SELECT new.id FROM new, woken"
)


# The two reads of a group are planned each time they run (sent unprepared): a plan kept
# from a group's first executions was made for the table as it was then, and a
# sequential scan chosen for a table of a few rows is kept as the table grows, until
# autovacuum first analyzes it (a minute or more on a new database). Planned for the
# table as it is, both read an index, analyzed or not (tests/test_postgres_plans.py).
#
# The keys already known: ids and body digests of stored or pruned events.
KNOWN_KEYS = (
    "SELECT id FROM events WHERE id = ANY(%s) "
    "UNION SELECT id FROM pruned_events WHERE id = ANY(%s) "
    "UNION SELECT body_digest FROM events WHERE body_digest = ANY(%s) "
    "UNION SELECT body_digest FROM pruned_events WHERE body_digest = ANY(%s)"
)
# The accepted event holding each job key: one index probe per key, whatever the
# planner knows. `job_key = ANY(…)` on a table not yet analyzed is planned as a
# sequential scan, which every event stored makes longer.
SEEN_JOB_KEYS = (
    "SELECT k, e.id FROM unnest(%s::text[]) AS k CROSS JOIN LATERAL "
    "(SELECT id FROM events WHERE job_key = k AND state = 'accepted' LIMIT 1) AS e"
)


@dataclass
class IngestWrite:
    """A group's decisions, and its insert whose answer is read after the commit."""

    decisions: list[Decision]
    insert: AsyncCursor[Any] | None

    async def outcomes(self) -> list[IngestOutcome]:
        """An outcome per record: ids another relay stored first are duplicates."""
        stored = set() if self.insert is None else {row[0] for row in await self.insert.fetchall()}
        return [
            "accepted" if d.outcome == "accepted" and d.record.event_id in stored else "duplicate"
            for d in self.decisions
        ]


async def insert_events(
    conn: AsyncConnection[Any], records: Sequence[IngestRecord], channel: str, sender: str
) -> IngestWrite:
    """Queue the insert of `records`' new events and their deliveries (NOTIFY on
    `channel`, from relay `sender`, if any is stored) in the transaction open on `conn`."""
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
    known = await conn.execute(KNOWN_KEYS, (keys, keys, keys, keys), prepare=False)
    seen = await conn.execute(SEEN_JOB_KEYS, (job_keys,), prepare=False)
    known_keys = {row[0] for row in await known.fetchall()}
    seen_keys = {row[0]: row[1] for row in await seen.fetchall()}
    decisions = decide_ingest(records, known_keys, seen_keys)
    accepted = [d for d in decisions if d.outcome == "accepted"]
    if not accepted:
        return IngestWrite(decisions, None)
    deliveries = [
        (d.record.event_id, sink, d.due_at, d.record.received_at)
        for d in accepted
        for sink in d.sinks
    ]
    insert = await conn.execute(
        _INSERT,
        [
            *_event_columns(accepted),
            *([list(column) for column in zip(*deliveries, strict=True)] or [[]] * 4),
            channel,
            sender,
        ],
    )
    return IngestWrite(decisions, insert)


def _event_columns(decisions: list[Decision]) -> list[list[Any]]:
    return [
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
