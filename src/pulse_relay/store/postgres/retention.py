"""PostgreSQL retention: one relay at a time (an advisory lock), in small batches."""

from __future__ import annotations

from pulse_relay.store.model import PRUNE_BATCH, PRUNED_IDS_MIN_SECONDS
from pulse_relay.store.postgres.plumbing import PostgresPlumbing
from pulse_relay.store.postgres.schema import RETENTION_LOCK


class RetentionMixin(PostgresPlumbing):
    """Prune old finished events."""

    async def prune(self, *, received_before: float, batch_size: int = PRUNE_BATCH) -> int:
        """Delete finished events received before `received_before`; returns how many.

        Finished as on SQLite; each pruned id is remembered until `forget_ids`.
        A batch whose retention lock another relay holds ends the run: that
        relay is pruning already.
        """
        now = self._clock()
        total = 0
        while True:
            deleted = await self._prune_batch(received_before, batch_size, now)
            total += max(deleted, 0)
            if deleted < batch_size:
                return total

    async def forget_ids(self, *, pruned_before: float, batch_size: int = PRUNE_BATCH) -> int:
        """Forget the ids of events pruned before `pruned_before` (never within a day)."""
        forget_before = min(pruned_before, self._clock() - PRUNED_IDS_MIN_SECONDS)
        total = 0
        while True:
            async with self.connection() as conn:
                cursor = await conn.execute(
                    "DELETE FROM pruned_events WHERE id IN (SELECT id FROM pruned_events "
                    "WHERE pruned_at < %s LIMIT %s FOR UPDATE SKIP LOCKED)",
                    (forget_before, batch_size),
                )
                forgotten = cursor.rowcount
            total += forgotten
            if forgotten < batch_size:
                return total

    async def _prune_batch(self, received_before: float, batch_size: int, now: float) -> int:
        async with self.connection() as conn, conn.transaction():
            cursor = await conn.execute("SELECT pg_try_advisory_xact_lock(%s)", (RETENTION_LOCK,))
            row = await cursor.fetchone()
            if not row or not row[0]:
                return -1
            cursor = await conn.execute(
                "SELECT e.id FROM events e WHERE e.received_at < %s "
                "AND e.fetch_state NOT IN ('pending', 'dead') "
                "AND NOT EXISTS (SELECT 1 FROM deliveries d "
                "WHERE d.event_id = e.id AND d.state != 'delivered') "
                "LIMIT %s FOR UPDATE SKIP LOCKED",
                (received_before, batch_size),
            )
            ids = [row[0] for row in await cursor.fetchall()]
            await conn.execute(
                "INSERT INTO pruned_events (id, pruned_at, body_digest) "
                "SELECT id, %s, body_digest FROM events WHERE id = ANY(%s) "
                "ON CONFLICT (id) DO UPDATE SET pruned_at = excluded.pruned_at, "
                "body_digest = excluded.body_digest",
                (now, ids),
            )
            for table, column in (("attempts", "event_id"), ("deliveries", "event_id")):
                await conn.execute(f"DELETE FROM {table} WHERE {column} = ANY(%s)".encode(), (ids,))
            await conn.execute("DELETE FROM events WHERE id = ANY(%s)", (ids,))
            return len(ids)

    async def is_pruned(self, event_id: str) -> bool:
        """Whether `event_id` was stored once and pruned since (remembered for dedupe_days)."""
        async with self.connection() as conn:
            cursor = await conn.execute("SELECT 1 FROM pruned_events WHERE id = %s", (event_id,))
            return await cursor.fetchone() is not None
