"""SQLite ingest: a group's records decided together and inserted in one transaction."""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Sequence

from pulse_relay.store.decide import decide_ingest, dedupe_keys
from pulse_relay.store.model import IngestOutcome, IngestRecord, headers_json
from pulse_relay.store.sqlite.sql import chunks, placeholders


def insert_events(db: sqlite3.Connection, records: list[IngestRecord]) -> list[IngestOutcome]:
    """Insert the new events of `records` and their deliveries; an outcome per record."""
    known_keys = stored_keys(db, records)
    seen_keys = accepted_job_keys(db, [r.job_key for r in records if r.job_key is not None])
    decisions = decide_ingest(records, known_keys, seen_keys)
    stored = [d for d in decisions if d.outcome == "accepted"]
    if stored:
        db.executemany(
            "INSERT INTO events (id, received_at, source, type, job_id, job_key, state, "
            "error, headers, body, fetch_state, next_fetch_at, client_address, body_digest) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (
                    d.record.event_id,
                    d.record.received_at,
                    d.record.source,
                    d.record.event_type,
                    d.record.job_id,
                    d.record.job_key,
                    d.state,
                    d.error,
                    headers_json(d.record.headers),
                    d.record.body,
                    "pending" if d.needs_fetch else "none",
                    d.record.received_at if d.needs_fetch else None,
                    d.record.client_address,
                    d.record.body_digest,
                )
                for d in stored
            ],
        )
        deliveries = [
            (d.record.event_id, sink, d.due_at, d.record.received_at)
            for d in stored
            for sink in d.sinks
        ]
        if deliveries:
            db.executemany(
                "INSERT INTO deliveries (event_id, sink, state, next_attempt_at, updated_at) "
                "VALUES (?, ?, 'pending', ?, ?)",
                deliveries,
            )
    return [d.outcome for d in decisions]


def stored_keys(db: sqlite3.Connection, records: Sequence[IngestRecord]) -> set[str]:
    """Which of the records' ids and body digests the store already holds, or remembers
    from pruned events."""
    keys = [key for record in records for key in dedupe_keys(record)]
    found: set[str] = set()
    for chunk in chunks(list(dict.fromkeys(keys))):
        found.update(row[0] for row in db.execute(_known_keys_sql(len(chunk)), chunk))
    return found


@functools.lru_cache(maxsize=64)
def _known_keys_sql(count: int) -> str:
    # Both columns for every key: an event stored before digests were kept has its
    # digest as its id when it came without an id header. One statement, not four: each
    # is a hand-off of the GIL between the writer thread and the event loop. Numbered
    # parameters: the four lists bind the same `count` values.
    listed = ",".join(f"?{number}" for number in range(1, count + 1))
    return " UNION ALL ".join(
        f"SELECT {column} FROM {table} WHERE {column} IN ({listed})"
        for column in ("id", "body_digest")
        for table in ("events", "pruned_events")
    )


def accepted_job_keys(db: sqlite3.Connection, job_keys: Sequence[str]) -> dict[str, str]:
    """For each of `job_keys` already accepted, the id of the event that holds it."""
    found: dict[str, str] = {}
    for chunk in chunks(list(dict.fromkeys(job_keys))):
        sql = (
            "SELECT job_key, id FROM events WHERE state = 'accepted' "
            f"AND job_key IN ({placeholders(len(chunk))})"
        )
        found.update({row[0]: row[1] for row in db.execute(sql, chunk)})
    return found
