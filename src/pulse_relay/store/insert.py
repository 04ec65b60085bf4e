"""The SQL of `insert_event` (an imported event written whole), for both backends, in `?`
style (`Dialect.sql` turns it into psycopg's)."""

from __future__ import annotations

from typing import Any

from pulse_relay.store.model import StoredEvent, headers_json, storable_json

# Whether an event's id or body digest is stored, or remembered from a pruned event: a row
# when known. A NULL digest matches nothing.
KNOWN_QUERY = (
    "SELECT 1 FROM events WHERE id = ? UNION ALL SELECT 1 FROM pruned_events WHERE id = ? "
    "UNION ALL SELECT 1 FROM events WHERE body_digest = ? "
    "UNION ALL SELECT 1 FROM pruned_events WHERE body_digest = ? LIMIT 1"
)
# The event's row: `event_values`.
INSERT_EVENT = (
    "INSERT INTO events (id, received_at, source, type, job_id, job_key, state, error, "
    "headers, body, fetch_state, fetch_attempts, next_fetch_at, fetch_error, job, result_url, "
    "fetched_at, client_address, body_digest) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
# One delivery: `delivery_rows`.
INSERT_DELIVERY = (
    "INSERT INTO deliveries (event_id, sink, state, attempts, next_attempt_at, last_error, "
    "replay, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)


def insert_watch(json_type: str) -> str:
    """The INSERT of `watch_values`: the job's metadata kept, the watch not polled (its
    state `done`), and a watch the store already has left as it is."""
    return (
        "INSERT INTO watches (job_id, metadata, origin, state, added_at, next_poll_at, "
        f"interval_seconds, updated_at) VALUES (?, CAST(? AS {json_type}), 'import', 'done', "
        "?, ?, 0, ?) ON CONFLICT (job_id) DO NOTHING"
    )


def known_values(event: StoredEvent) -> tuple[Any, ...]:
    """The parameters of KNOWN_QUERY."""
    return (event.event_id, event.event_id, event.body_digest, event.body_digest)


def event_values(event: StoredEvent) -> tuple[Any, ...]:
    """The parameters of INSERT_EVENT."""
    return (
        event.event_id,
        event.received_at,
        event.source,
        event.event_type,
        event.job_id,
        event.job_key,
        event.state,
        event.error,
        headers_json(event.headers),
        event.body,
        event.fetch_state,
        event.fetch_attempts,
        event.next_fetch_at,
        event.fetch_error,
        None if event.job is None else storable_json(event.job),
        event.result_url,
        # When the job was fetched is not exported; the event's arrival stands in for it.
        event.received_at if event.job is not None else None,
        event.client_address,
        event.body_digest,
    )


def delivery_rows(event: StoredEvent, now: float) -> list[tuple[Any, ...]]:
    """The parameters of INSERT_DELIVERY, one tuple per delivery."""
    return [
        (
            event.event_id,
            d.sink,
            d.state,
            d.attempts,
            d.next_attempt_at,
            d.last_error,
            d.is_replay,
            now,
        )
        for d in event.deliveries
    ]


def watch_values(event: StoredEvent, now: float) -> tuple[Any, ...] | None:
    """The parameters of `insert_watch`, or None when the event brings no watch metadata."""
    if event.job_id is None or event.metadata is None:
        return None
    return (event.job_id, storable_json(event.metadata), now, now, now)
