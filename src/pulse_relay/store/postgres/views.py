"""PostgreSQL read views: the same documents as SQLite's, from any host."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from pulse_relay.store.filters import event_filters
from pulse_relay.store.model import (
    AWAITING_FETCH,
    Attempt,
    DeliveryView,
    EventCursor,
    EventView,
)
from pulse_relay.store.postgres.watches import WatchesMixin

_EVENT_COLUMNS = (
    "e.id, e.received_at, e.source, e.type, e.job_id, e.state, e.error, e.fetch_state, "
    "e.fetch_error"
)


def _postgres_sql(sql: str) -> bytes:
    """The shared `?`-placeholder SQL in psycopg's style; LIKE matches case-insensitively
    on both backends."""
    return sql.replace("?", "%s").replace(" LIKE ", " ILIKE ").encode()


class ViewsMixin(WatchesMixin):
    """What the CLI, the admin API and the dispatcher read."""

    async def list_events(
        self,
        *,
        event_type: str | None = None,
        state: str | None = None,
        limit: int = 50,
        sink: str | None = None,
        job_id: str | None = None,
        source: str | None = None,
        text: str | None = None,
        before: EventCursor | None = None,
        event_id: str | None = None,
    ) -> list[EventView]:
        """Newest events first, with each sink's delivery state (see the SQLite backend)."""
        clauses, params = event_filters(
            event_id=event_id,
            event_type=event_type,
            state=state,
            sink=sink,
            job_id=job_id,
            source=source,
            text=text,
            body_text="encode(e.body, 'escape')",
        )
        if before is not None:
            clauses.append("(e.received_at < ? OR (e.received_at = ? AND e.id > ?))")
            params += [before.received_at, before.received_at, before.event_id]
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        sql = (
            f"SELECT {_EVENT_COLUMNS} FROM events e {where} "
            'ORDER BY e.received_at DESC, e.id COLLATE "C" LIMIT ?'
        )
        async with self.connection() as conn:
            cursor = await conn.execute(_postgres_sql(sql), [*params, limit])
            views = [EventView(*row) for row in await cursor.fetchall()]
            await _attach_deliveries(conn, views)
        return views

    async def get_event(self, event_id: str) -> EventView | None:
        """One event with headers, body, job and the whole attempt log; None if unknown."""
        async with self.connection() as conn:
            cursor = await conn.execute(
                f"SELECT {_EVENT_COLUMNS}, e.headers, e.body, e.job, e.result_url, w.metadata, "
                "e.client_address "
                "FROM events e LEFT JOIN watches w ON w.job_id = e.job_id WHERE e.id = %s",
                (event_id,),
            )
            row = await cursor.fetchone()
            if row is None:
                return None
            view = EventView(*row[:9])
            headers, body, job, view.result_url, view.metadata, view.client_address = row[9:]
            view.headers = json.loads(headers)
            view.body = bytes(body)
            view.job = json.loads(job) if job is not None else None
            await _attach_deliveries(conn, [view])
            cursor = await conn.execute(
                "SELECT sink, attempt, started_at, duration_ms, outcome, status_code, error, "
                "output_tail FROM attempts WHERE event_id = %s ORDER BY id",
                (event_id,),
            )
            view.attempts = [Attempt(*r) for r in await cursor.fetchall()]
        return view

    async def state_counts(self) -> tuple[dict[str, int], dict[str, int]]:
        """How many events are in each event state, and deliveries in each delivery state."""
        async with self.connection() as conn:
            cursor = await conn.execute("SELECT state, COUNT(*) FROM events GROUP BY state")
            events = {row[0]: int(row[1]) for row in await cursor.fetchall()}
            cursor = await conn.execute("SELECT state, COUNT(*) FROM deliveries GROUP BY state")
            deliveries = {row[0]: int(row[1]) for row in await cursor.fetchall()}
        return events, deliveries

    async def pending_counts(self) -> dict[str, int]:
        """Pending deliveries per sink."""
        async with self.connection() as conn:
            cursor = await conn.execute(
                "SELECT sink, COUNT(*) FROM deliveries WHERE state = 'pending' GROUP BY sink"
            )
            return {row[0]: int(row[1]) for row in await cursor.fetchall()}

    async def oldest_pending_received_at(self) -> float | None:
        """When the oldest event with a pending delivery or fetch arrived; None if none."""
        async with self.connection() as conn:
            cursor = await conn.execute(
                "SELECT MIN(t) FROM (SELECT MIN(e.received_at) AS t FROM deliveries d "
                "JOIN events e ON e.id = d.event_id WHERE d.state = 'pending' "
                "UNION ALL SELECT MIN(received_at) FROM events WHERE fetch_state = 'pending') u"
            )
            row = await cursor.fetchone()
        return float(row[0]) if row and row[0] is not None else None

    async def next_due_at(self, sinks: Sequence[str], *, include_fetches: bool) -> float | None:
        """When the next claimable fetch or delivery (for `sinks`) is due; None if none waits."""
        now = self._clock()
        async with self.connection() as conn:
            cursor = await conn.execute(
                "SELECT LEAST((SELECT MIN(d.next_attempt_at) FROM deliveries d "
                "JOIN events e ON e.id = d.event_id WHERE d.state = 'pending' "
                "AND d.sink = ANY(%s) AND d.next_attempt_at < %s "
                "AND (d.lease_until IS NULL OR d.lease_until <= %s) "
                "AND e.fetch_state IN ('none', 'done')), "
                "(SELECT MIN(next_fetch_at) FROM events WHERE %s AND fetch_state = 'pending' "
                "AND (fetch_lease_until IS NULL OR fetch_lease_until <= %s)))",
                (list(sinks), AWAITING_FETCH, now, include_fetches, now),
            )
            row = await cursor.fetchone()
        return float(row[0]) if row and row[0] is not None else None


async def _attach_deliveries(conn: Any, views: list[EventView]) -> None:
    by_id = {view.id: view for view in views}
    if not by_id:
        return
    cursor = await conn.execute(
        "SELECT event_id, sink, state, attempts, next_attempt_at, last_error, replay "
        "FROM deliveries WHERE event_id = ANY(%s) ORDER BY sink",
        (list(by_id),),
    )
    for event_id, sink, state, attempts, due_at, last_error, replay in await cursor.fetchall():
        by_id[event_id].deliveries[sink] = DeliveryView(
            state=state,
            attempts=attempts,
            next_attempt_at=None if due_at >= AWAITING_FETCH else due_at,
            last_error=last_error,
            is_replay=bool(replay),
        )
