"""SQLite read views: listings, one event in full, counts."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pulse_relay.store import rows
from pulse_relay.store.listing import SQLITE, EventListing
from pulse_relay.store.sqlite.sql import chunks, deliveries_query, placeholders
from pulse_relay.store.sqlite.watches import WatchesMixin
from pulse_relay.store.view_model import EventView


class ViewsMixin(WatchesMixin, EventListing):
    """What the CLI and the admin API read."""

    dialect = SQLITE

    async def _listed_events(self, sql: str, params: list[Any]) -> list[EventView]:
        async with self.read(sql, params) as cursor:
            found = await cursor.fetchall()
        views = [rows.event_view(row) for row in found]
        await self._attach_deliveries(views)
        return views

    async def get_event(self, event_id: str) -> EventView | None:
        """One event with headers, body, job and the whole attempt log; None if unknown."""
        async with self.read(rows.EVENT_DETAIL_QUERY, (event_id,)) as cursor:
            row = await cursor.fetchone()
        if row is None:
            return None
        view = rows.event_detail(row)
        await self._attach_deliveries([view])
        async with self.read(rows.EDITED_ENVELOPES_QUERY, (event_id,)) as cursor:
            rows.attach_edited_envelopes(view, await cursor.fetchall())
        async with self.read(rows.ATTEMPTS_QUERY, (event_id,)) as cursor:
            view.attempts = [rows.attempt(row) async for row in cursor]
        return view

    async def get_events(self, event_ids: Sequence[str]) -> list[EventView]:
        """Several events in full, in the order of `event_ids`; unknown ids left out."""
        views: list[EventView] = []
        for chunk in chunks(list(dict.fromkeys(event_ids))):
            among = f"IN ({placeholders(len(chunk))})"
            async with self.read(f"{rows.EVENT_DETAIL_SELECT} WHERE e.id {among}", chunk) as cursor:
                found = [rows.event_detail(row) for row in await cursor.fetchall()]
            async with self.read(
                f"{rows.ATTEMPTS_OF_EVENTS_SELECT} WHERE event_id {among} ORDER BY id", chunk
            ) as cursor:
                rows.attach_attempts(found, await cursor.fetchall())
            await self._attach_deliveries(found)
            views += found
        by_id = {view.id: view for view in views}
        return [by_id[event_id] for event_id in event_ids if event_id in by_id]

    async def _attach_deliveries(self, views: Sequence[EventView]) -> None:
        for chunk in chunks([view.id for view in views]):
            async with self.read(deliveries_query(len(chunk)), chunk) as cursor:
                rows.attach_deliveries(views, await cursor.fetchall())

    async def state_counts(self) -> tuple[dict[str, int], dict[str, int]]:
        """How many events are in each event state, and deliveries in each delivery state."""
        async with self.read("SELECT state, COUNT(*) FROM events GROUP BY state") as cursor:
            events = {row[0]: int(row[1]) async for row in cursor}
        async with self.read("SELECT state, COUNT(*) FROM deliveries GROUP BY state") as cursor:
            deliveries = {row[0]: int(row[1]) async for row in cursor}
        return events, deliveries

    async def pending_counts(self) -> dict[str, int]:
        """Pending deliveries per sink."""
        async with self.read(
            "SELECT sink, COUNT(*) FROM deliveries WHERE state = 'pending' GROUP BY sink"
        ) as cursor:
            return {row[0]: int(row[1]) async for row in cursor}

    async def due_counts(self, sinks: Sequence[str]) -> dict[str, int]:
        """Deliveries of each of `sinks` that could be claimed now (due, not leased)."""
        now = self._clock()
        counts = dict.fromkeys(sinks, 0)
        for chunk in chunks(list(counts)):
            async with self.read(
                "SELECT d.sink, COUNT(*) FROM deliveries d JOIN events e ON e.id = d.event_id "
                f"WHERE d.state = 'pending' AND d.sink IN ({placeholders(len(chunk))}) "
                "AND d.next_attempt_at <= ? AND (d.lease_until IS NULL OR d.lease_until <= ?) "
                "AND e.fetch_state IN ('none', 'done') GROUP BY d.sink",
                [*chunk, now, now],
            ) as cursor:
                counts.update({row[0]: int(row[1]) async for row in cursor})
        return counts

    async def oldest_pending_received_at(self) -> float | None:
        """When the oldest event with a pending delivery or fetch arrived; None if none."""
        async with self.read(
            "SELECT MIN(t) FROM ("
            "SELECT MIN(e.received_at) AS t FROM deliveries d JOIN events e ON e.id = d.event_id "
            "WHERE d.state = 'pending' "
            "UNION ALL SELECT MIN(received_at) FROM events WHERE fetch_state = 'pending')"
        ) as cursor:
            row = await cursor.fetchone()
        return float(row[0]) if row and row[0] is not None else None
