"""SQLite read views: listings, one event in full, counts, the next due time."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence

from pulse_relay.store.filters import event_filters
from pulse_relay.store.model import (
    AWAITING_FETCH,
    Attempt,
    DeliveryView,
    EventCursor,
    EventView,
)
from pulse_relay.store.sqlite.sql import chunks, placeholders
from pulse_relay.store.sqlite.watches import WatchesMixin


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
        """Newest events first, with each sink's delivery state.

        `state` is an event state (accepted, invalid, repeat) or a delivery state
        (pending, delivered, dead: some delivery, to `sink` if given, is in it);
        `text` is matched case-insensitively in the id, type, job id and body;
        `before` continues a listing after the last event of its previous page.
        """
        clauses, params = event_filters(
            event_id=event_id,
            event_type=event_type,
            state=state,
            sink=sink,
            job_id=job_id,
            source=source,
            text=text,
        )
        if before is not None:
            clauses.append("(e.received_at < ? OR (e.received_at = ? AND e.id > ?))")
            params += [before.received_at, before.received_at, before.event_id]
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        sql = (
            "SELECT e.id, e.received_at, e.source, e.type, e.job_id, e.state, e.error, "
            f"e.fetch_state, e.fetch_error FROM events e {where} "
            "ORDER BY e.received_at DESC, e.id LIMIT ?"
        )
        async with self.read(sql, [*params, limit]) as cursor:
            rows = await cursor.fetchall()
        views = [_event_view(row) for row in rows]
        await self._attach_deliveries(views)
        return views

    async def get_event(self, event_id: str) -> EventView | None:
        """One event with headers, body, job and the whole attempt log; None if unknown."""
        async with self.read("SELECT * FROM events WHERE id = ?", (event_id,)) as cursor:
            row = await cursor.fetchone()
        if row is None:
            return None
        view = _event_view(row)
        view.headers = json.loads(row["headers"])
        view.client_address = row["client_address"]
        view.body = bytes(row["body"])
        view.job = json.loads(row["job"]) if row["job"] is not None else None
        view.result_url = row["result_url"]
        watch = None if view.job_id is None else await self.get_watch(view.job_id)
        view.metadata = None if watch is None else watch.metadata
        await self._attach_deliveries([view])
        async with self.read(
            "SELECT sink, attempt, started_at, duration_ms, outcome, status_code, error, "
            "output_tail FROM attempts WHERE event_id = ? ORDER BY id",
            (event_id,),
        ) as cursor:
            view.attempts = [Attempt(*tuple(r)) async for r in cursor]
        return view

    async def _attach_deliveries(self, views: list[EventView]) -> None:
        by_id = {view.id: view for view in views}
        for chunk in chunks(list(by_id)):
            async with self.read(
                "SELECT event_id, sink, state, attempts, next_attempt_at, last_error, replay "
                f"FROM deliveries WHERE event_id IN ({placeholders(len(chunk))}) "
                "ORDER BY sink",
                chunk,
            ) as cursor:
                async for row in cursor:
                    by_id[row["event_id"]].deliveries[row["sink"]] = _delivery_view(row)

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

    async def next_due_at(self, sinks: Sequence[str], *, include_fetches: bool) -> float | None:
        """When the next claimable fetch or delivery (for `sinks`) is due; None if none waits."""
        now = self._clock()
        times: list[float] = []
        for chunk in chunks(list(sinks)):
            async with self.read(
                "SELECT MIN(d.next_attempt_at) FROM deliveries d "
                "JOIN events e ON e.id = d.event_id "
                f"WHERE d.state = 'pending' AND d.sink IN ({placeholders(len(chunk))}) "
                f"AND d.next_attempt_at < {AWAITING_FETCH!r} "
                "AND (d.lease_until IS NULL OR d.lease_until <= ?) "
                "AND e.fetch_state IN ('none', 'done')",
                [*chunk, now],
            ) as cursor:
                row = await cursor.fetchone()
            if row and row[0] is not None:
                times.append(float(row[0]))
        if include_fetches:
            async with self.read(
                "SELECT MIN(next_fetch_at) FROM events WHERE fetch_state = 'pending' "
                "AND (fetch_lease_until IS NULL OR fetch_lease_until <= ?)",
                (now,),
            ) as cursor:
                row = await cursor.fetchone()
            if row and row[0] is not None:
                times.append(float(row[0]))
        return min(times) if times else None


def _delivery_view(row: sqlite3.Row) -> DeliveryView:
    due_at = row["next_attempt_at"]
    return DeliveryView(
        state=row["state"],
        attempts=row["attempts"],
        next_attempt_at=None if due_at >= AWAITING_FETCH else due_at,
        last_error=row["last_error"],
        is_replay=bool(row["replay"]),
    )


def _event_view(row: sqlite3.Row) -> EventView:
    return EventView(
        id=row["id"],
        received_at=row["received_at"],
        source=row["source"],
        type=row["type"],
        job_id=row["job_id"],
        state=row["state"],
        error=row["error"],
        fetch_state=row["fetch_state"],
        fetch_error=row["fetch_error"],
    )
