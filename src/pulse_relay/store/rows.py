"""Rows mapped to model objects, for both backends: the columns each mapper reads, and
the mapper.

A query that feeds a mapper selects the mapper's columns in the order named here.
JSON documents come back as text on both backends (PostgreSQL's jsonb is cast to
text), so one mapper serves a `sqlite3.Row` and a psycopg tuple alike.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from pulse_relay.store.view_model import AWAITING_FETCH, Attempt, DeliveryView, EventView, Watch
from pulse_relay.unencodable import without_lone_surrogates

if TYPE_CHECKING:
    from pulse_relay.store.model import DeliveryTask

# An event as listings show it: `event_view`.
EVENT_COLUMNS = (
    "e.id, e.received_at, e.source, e.type, e.job_id, e.state, e.error, e.fetch_state, "
    "e.fetch_error"
)
# What `show` adds to a listed event.
EVENT_DETAIL_COLUMNS = "e.headers, e.body, e.job, e.result_url, e.client_address, e.body_digest"
# One sink's delivery of an event, keyed by the event: `delivery_view` reads from `state`.
DELIVERY_VIEW_COLUMNS = "event_id, sink, state, attempts, next_attempt_at, last_error, replay"
# One row of the attempt log: `attempt`.
ATTEMPT_COLUMNS = (
    "sink, attempt, started_at, duration_ms, outcome, status_code, error, output_tail, "
    "edited_envelope"
)
# A watch: `watch`.
WATCH_COLUMNS = (
    "job_id, CAST(metadata AS TEXT), origin, state, added_at, next_poll_at, interval_seconds, "
    "polls, last_status, last_error"
)
# Every watch, active first, newest first: `watch`.
LIST_WATCHES_QUERY = (
    f"SELECT {WATCH_COLUMNS} FROM watches ORDER BY state = 'active' DESC, added_at DESC"
)
# One watch: `watch`.
GET_WATCH_QUERY = f"SELECT {WATCH_COLUMNS} FROM watches WHERE job_id = ?"
# Events in full, with their job's watch metadata, less the WHERE: `event_detail`.
EVENT_DETAIL_SELECT = (
    f"SELECT {EVENT_COLUMNS}, {EVENT_DETAIL_COLUMNS}, CAST(w.metadata AS TEXT) "
    "FROM events e LEFT JOIN watches w ON w.job_id = e.job_id"
)
# One event in full: `event_detail`.
EVENT_DETAIL_QUERY = f"{EVENT_DETAIL_SELECT} WHERE e.id = ?"
# One event's attempt log, oldest first: `attempt`.
ATTEMPTS_QUERY = f"SELECT {ATTEMPT_COLUMNS} FROM attempts WHERE event_id = ? ORDER BY id"
# Several events' attempt logs, less the WHERE on `event_id`: the event's id, then
# `attempt`'s columns; `attach_attempts` reads them.
ATTEMPTS_OF_EVENTS_SELECT = f"SELECT event_id, {ATTEMPT_COLUMNS} FROM attempts"

# One event's edited envelopes, by sink: `attach_edited_envelopes`.
EDITED_ENVELOPES_QUERY = (
    "SELECT sink, edited_envelope FROM deliveries "
    "WHERE event_id = ? AND edited_envelope IS NOT NULL"
)
# The INSERT of `attempt_values`, in `?` style.
INSERT_ATTEMPT = (
    "INSERT INTO attempts (event_id, sink, attempt, started_at, duration_ms, outcome, "
    "status_code, error, output_tail, edited_envelope) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


def document(text: str | None) -> Any:
    """A stored JSON document (None stays None)."""
    return None if text is None else json.loads(text)


def envelope_text(envelope: dict[str, Any] | None) -> str | None:
    """An edited envelope as stored: compact JSON text, its keys in their order, each lone
    surrogate replaced by U+FFFD (as the sinks receive it); None stays None."""
    if envelope is None:
        return None
    return without_lone_surrogates(json.dumps(envelope, ensure_ascii=False, separators=(",", ":")))


def event_view(row: Sequence[Any]) -> EventView:
    """An event from EVENT_COLUMNS (the first nine of `row`)."""
    return EventView(*row[:9])


def event_detail(row: Sequence[Any]) -> EventView:
    """An event in full from EVENT_DETAIL_QUERY (without its deliveries and attempts)."""
    view = event_view(row)
    headers, body, job, view.result_url, view.client_address, view.body_digest = row[9:15]
    metadata = row[15]
    view.headers = json.loads(headers)
    view.body = bytes(body)
    view.job = document(job)
    view.metadata = document(metadata)
    return view


def delivery_view(row: Sequence[Any]) -> DeliveryView:
    """A delivery from DELIVERY_VIEW_COLUMNS; waiting for its job, it has no due time."""
    _, _, state, attempts, due_at, last_error, replay = row
    return DeliveryView(
        state=state,
        attempts=attempts,
        next_attempt_at=None if due_at >= AWAITING_FETCH else due_at,
        last_error=last_error,
        is_replay=bool(replay),
    )


def attach_deliveries(views: Sequence[EventView], rows: Iterable[Sequence[Any]]) -> None:
    """Add each row of DELIVERY_VIEW_COLUMNS to its event among `views`, by sink."""
    by_id = {view.id: view for view in views}
    for row in rows:
        by_id[row[0]].deliveries[row[1]] = delivery_view(row)


def attach_attempts(views: Sequence[EventView], rows: Iterable[Sequence[Any]]) -> None:
    """Add each row of ATTEMPTS_OF_EVENTS_SELECT (in the log's order) to its event among
    `views`; an event not among them (pruned meanwhile) is passed over."""
    by_id = {view.id: view for view in views}
    for row in rows:
        view = by_id.get(row[0])
        if view is not None:
            view.attempts.append(attempt(row[1:]))


def attach_edited_envelopes(view: EventView, rows: Iterable[Sequence[Any]]) -> None:
    """Add each row of EDITED_ENVELOPES_QUERY to the delivery of `view` it belongs to."""
    for sink, text in rows:
        if sink in view.deliveries:
            delivery = view.deliveries[sink]
            view.deliveries[sink] = replace(delivery, edited_envelope=document(text))


def attempt(row: Sequence[Any]) -> Attempt:
    """An attempt from ATTEMPT_COLUMNS."""
    sink, number, started_at, duration_ms, outcome, status_code, error, output_tail = row[:8]
    return Attempt(
        sink,
        number,
        started_at,
        duration_ms,
        outcome,
        status_code,
        error,
        output_tail,
        edited_envelope=document(row[8]),
    )


def attempt_values(event_id: str, attempt: Attempt) -> tuple[Any, ...]:
    """The parameters of INSERT_ATTEMPT for `attempt` of `event_id`."""
    return (
        event_id,
        attempt.sink,
        attempt.attempt,
        attempt.started_at,
        attempt.duration_ms,
        attempt.outcome,
        attempt.status_code,
        attempt.error,
        attempt.output_tail,
        envelope_text(attempt.edited_envelope),
    )


def watch(row: Sequence[Any]) -> Watch:
    """A watch from WATCH_COLUMNS."""
    return Watch(row[0], json.loads(row[1]), *row[2:])


def delivery_task(row: Sequence[Any], token: str | None) -> DeliveryTask:
    """A claimed delivery from `d.event_id, d.sink, d.attempts, d.replay, e.type, e.job_id,
    e.received_at, e.source, e.body, e.job, e.result_url` of the delivery (`d`) and its
    event (`e`), then its job's watch metadata as JSON text, then `d.edited_envelope`;
    `token` is the claim's."""
    # Imported here: a command that only lists events maps rows without the write side's
    # records (`view_model`); by the first claim this is a dictionary look-up.
    from pulse_relay.store.model import DeliveryTask

    event_id, sink, attempts, replay, event_type, job_id, received_at, source = row[:8]
    body, job, result_url, metadata, edited_envelope = row[8:13]
    return DeliveryTask(
        event_id=event_id,
        sink=sink,
        attempts=attempts,
        is_replay=bool(replay),
        event_type=event_type,
        job_id=job_id,
        received_at=received_at,
        source=source,
        body=bytes(body),
        job=document(job),
        result_url=result_url,
        metadata=document(metadata) or None,
        token=token,
        edited_envelope=document(edited_envelope),
    )
