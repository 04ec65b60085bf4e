"""SQLite watches: the jobs the poller follows, leased to one poll at a time."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from contextlib import closing
from typing import Any

from pulse_relay.store import rows
from pulse_relay.store.model import Watch, storable_json
from pulse_relay.store.sqlite.plumbing import SQLitePlumbing
from pulse_relay.store.sqlite.sql import chunks, placeholders


class WatchesMixin(SQLitePlumbing):
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
        extra = storable_json(metadata or {})

        def op(db: sqlite3.Connection) -> None:
            db.executemany(
                "INSERT INTO watches (job_id, metadata, origin, state, added_at, next_poll_at, "
                "interval_seconds, updated_at) VALUES (?, ?, ?, 'active', ?, ?, ?, ?) "
                "ON CONFLICT (job_id) DO UPDATE SET "
                "metadata = json_patch(watches.metadata, excluded.metadata), "
                "state = 'active', next_poll_at = excluded.next_poll_at, "
                "interval_seconds = excluded.interval_seconds, last_error = NULL, "
                "updated_at = excluded.updated_at",
                [(job_id, extra, origin, now, now, interval_seconds, now) for job_id in job_ids],
            )

        await self.write(op)

    async def remove_watches(self, job_ids: Sequence[str]) -> int:
        """Stop watching jobs; returns how many were watched."""

        unique_ids = list(dict.fromkeys(job_ids))

        def op(db: sqlite3.Connection) -> int:
            return sum(
                db.execute(
                    f"DELETE FROM watches WHERE job_id IN ({placeholders(len(chunk))})", chunk
                ).rowcount
                for chunk in chunks(unique_ids)
            )

        result: int = await self.write(op)
        return result

    async def list_watches(self) -> list[Watch]:
        """Every watch, active first, newest first."""
        async with self.read(rows.LIST_WATCHES_QUERY) as cursor:
            return [rows.watch(row) async for row in cursor]

    async def get_watch(self, job_id: str) -> Watch | None:
        """One watch; None when the job is not watched."""
        async with self.read(rows.GET_WATCH_QUERY, (job_id,)) as cursor:
            row = await cursor.fetchone()
        return None if row is None else rows.watch(row)

    async def claim_watches(self, *, limit: int, lease_seconds: float) -> list[Watch]:
        """Lease up to `limit` watches whose poll is due (by moving their next poll on)."""
        now = self._clock()

        def op(db: sqlite3.Connection) -> list[Watch]:
            found = db.execute(
                f"SELECT {rows.WATCH_COLUMNS} FROM watches "
                "WHERE state = 'active' AND next_poll_at <= ? ORDER BY next_poll_at LIMIT ?",
                (now, limit),
            ).fetchall()
            watches = [rows.watch(row) for row in found]
            db.executemany(
                "UPDATE watches SET next_poll_at = ?, lease_until = ? WHERE job_id = ?",
                [(now + lease_seconds, now + lease_seconds, w.job_id) for w in watches],
            )
            return watches

        result: list[Watch] = await self.write(op)
        return result

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
        now = self._clock()

        def op(db: sqlite3.Connection) -> None:
            db.execute(
                "UPDATE watches SET state = ?, next_poll_at = ?, interval_seconds = ?, "
                "polls = polls + 1, last_status = COALESCE(?, last_status), last_error = ?, "
                "lease_until = NULL, "
                "updated_at = ? WHERE job_id = ?",
                (state, next_poll_at, interval_seconds, last_status, last_error, now, job_id),
            )

        await self.write(op)

    async def recover_stalled_jobs(
        self, *, older_than: float, since: float, interval_seconds: float, limit: int = 1000
    ) -> list[str]:
        """Watch jobs seen created/processing before `older_than` with no terminal event since."""
        now = self._clock()

        def op(db: sqlite3.Connection) -> list[str]:
            with closing(
                db.execute(
                    "SELECT DISTINCT e.job_id FROM events e "
                    "WHERE e.type IN ('job.created', 'job.processing') "
                    "AND e.received_at <= ? AND e.received_at >= ? AND e.job_id IS NOT NULL "
                    "AND NOT EXISTS (SELECT 1 FROM events t WHERE t.job_id = e.job_id "
                    "AND t.type NOT IN ('job.created', 'job.processing')) "
                    "AND NOT EXISTS (SELECT 1 FROM watches w WHERE w.job_id = e.job_id) "
                    "LIMIT ?",
                    (older_than, since, limit),
                )
            ) as cursor:
                job_ids = [row[0] for row in cursor]
            db.executemany(
                "INSERT INTO watches (job_id, origin, state, added_at, next_poll_at, "
                "interval_seconds, updated_at) VALUES (?, 'recovery', 'active', ?, ?, ?, ?)",
                [(job_id, now, now, interval_seconds, now) for job_id in job_ids],
            )
            return job_ids

        result: list[str] = await self.write(op)
        return result
