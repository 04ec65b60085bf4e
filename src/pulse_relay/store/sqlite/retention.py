"""SQLite retention: finished events deleted in small batches, their ids remembered."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from contextlib import closing

from pulse_relay.store.model import PRUNE_BATCH, PRUNED_IDS_MIN_SECONDS
from pulse_relay.store.sqlite.plumbing import SQLitePlumbing
from pulse_relay.store.sqlite.sql import chunks, placeholders


class RetentionMixin(SQLitePlumbing):
    """Prune old finished events."""

    async def prune(self, *, received_before: float, batch_size: int = PRUNE_BATCH) -> int:
        """Delete finished events received before `received_before`; returns how many.

        Finished means: every delivery delivered (or none at all, as for invalid
        and repeat events) and no job fetch still pending. Events with a pending
        or dead delivery are kept until replayed. Deletes run in small batches so
        ingest never waits long behind them. Each pruned id is remembered until
        `forget_ids`: a replayed request is still a duplicate, and `is_pruned`
        tells a pruned id from an unknown one.
        """
        now = self._clock()

        def op(db: sqlite3.Connection) -> int:
            with closing(
                db.execute(
                    "SELECT e.id FROM events e WHERE e.received_at < ? "
                    "AND e.fetch_state NOT IN ('pending', 'dead') "
                    "AND NOT EXISTS (SELECT 1 FROM deliveries d "
                    "WHERE d.event_id = e.id AND d.state != 'delivered') LIMIT ?",
                    (received_before, batch_size),
                )
            ) as cursor:
                ids = [row[0] for row in cursor]
            for chunk in chunks(ids):
                among = f"id IN ({placeholders(len(chunk))})"
                db.execute(
                    "INSERT OR REPLACE INTO pruned_events (id, pruned_at, body_digest) "
                    f"SELECT id, ?, body_digest FROM events WHERE {among}",
                    [now, *chunk],
                )
                db.execute(f"DELETE FROM events WHERE {among}", chunk)
            return len(ids)

        return await self._in_batches(op, batch_size)

    async def forget_ids(self, *, pruned_before: float, batch_size: int = PRUNE_BATCH) -> int:
        """Forget the ids of events pruned before `pruned_before` (never within a day)."""
        forget_before = min(pruned_before, self._clock() - PRUNED_IDS_MIN_SECONDS)

        def op(db: sqlite3.Connection) -> int:
            cursor = db.execute(
                "DELETE FROM pruned_events WHERE id IN (SELECT id FROM pruned_events "
                "WHERE pruned_at < ? LIMIT ?)",
                (forget_before, batch_size),
            )
            return cursor.rowcount

        return await self._in_batches(op, batch_size)

    async def _in_batches(self, op: Callable[[sqlite3.Connection], int], batch_size: int) -> int:
        """Run `op` (which handles at most `batch_size` rows) until it handles fewer."""
        total = 0
        while True:
            handled: int = await self.write(op)
            total += handled
            if handled < batch_size:
                return total

    async def is_pruned(self, event_id: str) -> bool:
        """Whether `event_id` was stored once and pruned since (remembered for dedupe_days)."""
        async with self.read("SELECT 1 FROM pruned_events WHERE id = ?", (event_id,)) as cursor:
            return await cursor.fetchone() is not None
