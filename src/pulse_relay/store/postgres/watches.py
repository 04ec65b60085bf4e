"""PostgreSQL watches: each due watch is polled by one relay at a time (SKIP LOCKED)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pulse_relay.store import rows
from pulse_relay.store.listing import POSTGRES
from pulse_relay.store.model import Watch, storable_json
from pulse_relay.store.postgres.plumbing import PostgresPlumbing


class WatchesMixin(PostgresPlumbing):
    """Add, remove, list, claim and update watches."""

    async def add_watches(
        self,
        job_ids: Sequence[str],
        *,
        metadata: dict[str, Any] | None = None,
        origin: str = "watch",
        interval_seconds: float,
    ) -> None:
        """Watch jobs (again) from now on; `metadata` is merged into what a job already has."""
        now = self._clock()
        async with self.connection() as conn, conn.transaction():
            await conn.execute(
                "INSERT INTO watches (job_id, metadata, origin, state, added_at, next_poll_at, "
                "interval_seconds, updated_at) "
                "SELECT j, %s::jsonb, %s, 'active', %s, %s, %s, %s FROM unnest(%s::text[]) AS j "
                "ON CONFLICT (job_id) DO UPDATE SET "
                "metadata = watches.metadata || excluded.metadata, state = 'active', "
                "next_poll_at = excluded.next_poll_at, "
                "interval_seconds = excluded.interval_seconds, last_error = NULL, "
                "updated_at = excluded.updated_at",
                (
                    storable_json(metadata or {}),
                    origin,
                    now,
                    now,
                    interval_seconds,
                    now,
                    list(job_ids),
                ),
            )

    async def remove_watches(self, job_ids: Sequence[str]) -> int:
        """Stop watching jobs; returns how many were watched."""
        async with self.connection() as conn:
            cursor = await conn.execute(
                "DELETE FROM watches WHERE job_id = ANY(%s)", (list(dict.fromkeys(job_ids)),)
            )
            return cursor.rowcount

    async def list_watches(self) -> list[Watch]:
        """Every watch, active first, newest first."""
        async with self.connection() as conn:
            cursor = await conn.execute(rows.LIST_WATCHES_QUERY.encode())
            return [rows.watch(row) for row in await cursor.fetchall()]

    async def get_watch(self, job_id: str) -> Watch | None:
        """One watch; None when the job is not watched."""
        async with self.connection() as conn:
            cursor = await conn.execute(POSTGRES.sql(rows.GET_WATCH_QUERY).encode(), (job_id,))
            row = await cursor.fetchone()
        return None if row is None else rows.watch(row)

    async def claim_watches(self, *, limit: int, lease_seconds: float) -> list[Watch]:
        """Lease up to `limit` due watches; a watch another relay polls is skipped."""
        now = self._clock()
        until = now + lease_seconds
        async with self.connection() as conn, conn.transaction():
            cursor = await conn.execute(
                "WITH due AS (SELECT job_id FROM watches WHERE state = 'active' "
                "AND next_poll_at <= %s ORDER BY next_poll_at LIMIT %s FOR UPDATE SKIP LOCKED) "
                "UPDATE watches w SET next_poll_at = %s, lease_until = %s FROM due "
                "WHERE w.job_id = due.job_id RETURNING w.job_id",
                (now, limit, until, until),
            )
            ids = [row[0] for row in await cursor.fetchall()]
            cursor = await conn.execute(
                f"SELECT {rows.WATCH_COLUMNS} FROM watches WHERE job_id = ANY(%s) "
                "ORDER BY added_at".encode(),
                (ids,),
            )
            watches = [rows.watch(row) for row in await cursor.fetchall()]
        # The poll was due at the moment of the claim, as SQLite reports it.
        return watches

    async def update_watch(
        self,
        job_id: str,
        *,
        state: str,
        next_poll_at: float,
        interval_seconds: float,
        last_status: str | None,
        last_error: str | None,
    ) -> None:
        """Record one poll of a watched job."""
        async with self.connection() as conn:
            await conn.execute(
                "UPDATE watches SET state = %s, next_poll_at = %s, interval_seconds = %s, "
                "polls = polls + 1, last_status = COALESCE(%s, last_status), last_error = %s, "
                "lease_until = NULL, updated_at = %s WHERE job_id = %s",
                (
                    state,
                    next_poll_at,
                    interval_seconds,
                    last_status,
                    last_error,
                    self._clock(),
                    job_id,
                ),
            )

    async def recover_stalled_jobs(
        self, *, older_than: float, since: float, interval_seconds: float, limit: int = 1000
    ) -> list[str]:
        """Watch jobs seen created/processing before `older_than` with no terminal event since."""
        now = self._clock()
        async with self.connection() as conn:
            cursor = await conn.execute(
                "INSERT INTO watches (job_id, origin, state, added_at, next_poll_at, "
                "interval_seconds, updated_at) "
                "SELECT DISTINCT e.job_id, 'recovery', 'active', %s, %s, %s, %s FROM events e "
                "WHERE e.type IN ('job.created', 'job.processing') "
                "AND e.received_at <= %s AND e.received_at >= %s AND e.job_id IS NOT NULL "
                "AND NOT EXISTS (SELECT 1 FROM events t WHERE t.job_id = e.job_id "
                "AND t.type NOT IN ('job.created', 'job.processing')) "
                "AND NOT EXISTS (SELECT 1 FROM watches w WHERE w.job_id = e.job_id) "
                "LIMIT %s ON CONFLICT (job_id) DO NOTHING RETURNING job_id",
                (now, now, interval_seconds, now, older_than, since, limit),
            )
            return [row[0] for row in await cursor.fetchall()]
