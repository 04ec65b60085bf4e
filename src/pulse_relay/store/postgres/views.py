"""PostgreSQL read views: the same documents as SQLite's, from any host."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from psycopg import AsyncConnection

from pulse_relay.store import rows
from pulse_relay.store.listing import POSTGRES, EventListing
from pulse_relay.store.model import EventView
from pulse_relay.store.postgres.watches import WatchesMixin

_DETAILS = f"{rows.EVENT_DETAIL_SELECT} WHERE e.id = ANY(%s)"
_ATTEMPTS = f"{rows.ATTEMPTS_OF_EVENTS_SELECT} WHERE event_id = ANY(%s) ORDER BY id"


class ViewsMixin(WatchesMixin, EventListing):
    """What the CLI and the admin API read."""

    dialect = POSTGRES

    async def _listed_events(self, sql: str, params: list[Any]) -> list[EventView]:
        async with self.connection() as conn:
            cursor = await conn.execute(sql.encode(), params)
            views = [rows.event_view(row) for row in await cursor.fetchall()]
            await _attach_deliveries(conn, views)
        return views

    async def get_event(self, event_id: str) -> EventView | None:
        """One event with headers, body, job and the whole attempt log; None if unknown."""
        async with self.connection() as conn:
            cursor = await conn.execute(POSTGRES.sql(rows.EVENT_DETAIL_QUERY).encode(), (event_id,))
            row = await cursor.fetchone()
            if row is None:
                return None
            view = rows.event_detail(row)
            await _attach_deliveries(conn, [view])
            cursor = await conn.execute(
                POSTGRES.sql(rows.EDITED_ENVELOPES_QUERY).encode(), (event_id,)
            )
            rows.attach_edited_envelopes(view, await cursor.fetchall())
            cursor = await conn.execute(POSTGRES.sql(rows.ATTEMPTS_QUERY).encode(), (event_id,))
            view.attempts = [rows.attempt(row) for row in await cursor.fetchall()]
        return view

    async def get_events(self, event_ids: Sequence[str]) -> list[EventView]:
        """Several events in full, in the order of `event_ids`; unknown ids left out."""
        ids = list(dict.fromkeys(event_ids))
        async with self.connection() as conn:
            cursor = await conn.execute(_DETAILS.encode(), (ids,))
            views = [rows.event_detail(row) for row in await cursor.fetchall()]
            await _attach_deliveries(conn, views)
            cursor = await conn.execute(_ATTEMPTS.encode(), (ids,))
            rows.attach_attempts(views, await cursor.fetchall())
        by_id = {view.id: view for view in views}
        return [by_id[event_id] for event_id in event_ids if event_id in by_id]

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

    async def due_counts(self, sinks: Sequence[str]) -> dict[str, int]:
        """Deliveries of each of `sinks` that could be claimed now (due, not leased)."""
        now = self._clock()
        counts = dict.fromkeys(sinks, 0)
        if not counts:
            return counts
        async with self.connection() as conn:
            cursor = await conn.execute(
                "SELECT d.sink, COUNT(*) FROM deliveries d JOIN events e ON e.id = d.event_id "
                "WHERE d.state = 'pending' AND d.sink = ANY(%s) AND d.next_attempt_at <= %s "
                "AND (d.lease_until IS NULL OR d.lease_until <= %s) "
                "AND e.fetch_state IN ('none', 'done') GROUP BY d.sink",
                (list(counts), now, now),
            )
            counts.update({row[0]: int(row[1]) for row in await cursor.fetchall()})
        return counts

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


async def _attach_deliveries(conn: AsyncConnection[Any], views: Sequence[EventView]) -> None:
    if not views:
        return
    cursor = await conn.execute(
        f"SELECT {rows.DELIVERY_VIEW_COLUMNS} FROM deliveries "
        "WHERE event_id = ANY(%s) ORDER BY sink".encode(),
        ([view.id for view in views],),
    )
    rows.attach_deliveries(views, await cursor.fetchall())
