"""The SQLite work queue: job fetches and deliveries claimed under a lease, finished, replayed."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from typing import Any

from pulse_relay.store import rows
from pulse_relay.store.decide import delivery_state, fetch_failure
from pulse_relay.store.model import (
    AWAITING_FETCH,
    Attempt,
    DeliveryOutcome,
    DeliveryTask,
    FetchTask,
)
from pulse_relay.store.sqlite.plumbing import SQLitePlumbing
from pulse_relay.store.sqlite.sql import chunks, placeholders


class QueueMixin(SQLitePlumbing):
    """Claim, finish, retry and replay work."""

    async def claim(
        self,
        *,
        fetch_limit: int,
        free_slots: dict[str, int],
        total_limit: int,
        lease_seconds: float,
    ) -> tuple[list[FetchTask], list[DeliveryTask]]:
        """Lease due job fetches (up to `fetch_limit`) and due deliveries, in one transaction.

        Deliveries: at most `free_slots[sink]` per sink and `total_limit` in all.
        """
        now = self._clock()

        def op(db: sqlite3.Connection) -> tuple[list[FetchTask], list[DeliveryTask]]:
            fetches = _claim_fetches(db, now=now, limit=fetch_limit, lease_seconds=lease_seconds)
            deliveries = _claim_deliveries(
                db,
                now=now,
                free_slots=free_slots,
                total_limit=total_limit,
                lease_seconds=lease_seconds,
            )
            return fetches, deliveries

        if fetch_limit <= 0 and (total_limit <= 0 or not any(v > 0 for v in free_slots.values())):
            return [], []
        result: tuple[list[FetchTask], list[DeliveryTask]] = await self.write(op)
        return result

    async def finish_fetch(
        self,
        event_id: str,
        *,
        job: dict[str, Any],
        result_url: str | None,
        attempt: Attempt,
        free_slots: dict[str, int] | None = None,
        total_limit: int = 0,
        lease_seconds: float = 0.0,
        token: str | None = None,
    ) -> list[DeliveryTask]:
        """Persist the fetched job; its deliveries become due, and those with a free slot
        (`free_slots`, `total_limit`) are leased and returned at once."""
        now = self._clock()

        def op(db: sqlite3.Connection) -> list[DeliveryTask]:
            db.execute(
                "UPDATE events SET fetch_state = 'done', job = ?, result_url = ?, fetched_at = ?, "
                "fetch_lease_until = NULL, fetch_error = NULL, "
                "fetch_attempts = fetch_attempts + 1 WHERE id = ?",
                (json.dumps(job), result_url, now, event_id),
            )
            db.execute(
                "UPDATE deliveries SET next_attempt_at = ? "
                "WHERE event_id = ? AND state = 'pending'",
                (now, event_id),
            )
            _insert_attempt(db, event_id, attempt)
            return _claim_deliveries(
                db,
                now=now,
                free_slots=free_slots or {},
                total_limit=total_limit,
                lease_seconds=lease_seconds,
                event_id=event_id,
            )

        result: list[DeliveryTask] = await self.write(op)
        self._changed("fetch", event_id, {"state": "done", "attempt": attempt})
        return result

    async def retry_fetch(
        self, event_id: str, *, next_fetch_at: float, attempt: Attempt, token: str | None = None
    ) -> None:
        """Record a failed fetch and schedule the next one."""

        def op(db: sqlite3.Connection) -> None:
            db.execute(
                "UPDATE events SET next_fetch_at = ?, fetch_lease_until = NULL, fetch_error = ?, "
                "fetch_attempts = fetch_attempts + 1 WHERE id = ?",
                (next_fetch_at, attempt.error, event_id),
            )
            _insert_attempt(db, event_id, attempt)

        await self.write(op)
        self._changed("fetch", event_id, {"state": "pending", "attempt": attempt})

    async def fail_fetch(
        self, event_id: str, *, attempt: Attempt, token: str | None = None
    ) -> None:
        """Give up on the job fetch: the event's pending deliveries go dead with the reason."""
        now = self._clock()
        reason = fetch_failure(attempt)

        def op(db: sqlite3.Connection) -> None:
            db.execute(
                "UPDATE events SET fetch_state = 'dead', fetch_lease_until = NULL, "
                "fetch_error = ?, fetch_attempts = fetch_attempts + 1 WHERE id = ?",
                (attempt.error, event_id),
            )
            db.execute(
                "UPDATE deliveries SET state = 'dead', last_error = ?, lease_until = NULL, "
                "updated_at = ? WHERE event_id = ? AND state = 'pending'",
                (reason, now, event_id),
            )
            _insert_attempt(db, event_id, attempt)

        await self.write(op)
        self._changed("fetch", event_id, {"state": "dead", "attempt": attempt})

    # -- delivery queue ------------------------------------------------

    async def finish_delivery(
        self,
        event_id: str,
        sink: str,
        *,
        outcome: DeliveryOutcome,
        attempt: Attempt,
        next_attempt_at: float | None = None,
        token: str | None = None,
    ) -> None:
        """Record one attempt and move the delivery to delivered, pending (retry) or dead."""
        now = self._clock()
        state, error = delivery_state(outcome, attempt)

        def op(db: sqlite3.Connection) -> None:
            db.execute(
                "UPDATE deliveries SET state = ?, attempts = attempts + 1, lease_until = NULL, "
                "last_error = ?, next_attempt_at = COALESCE(?, next_attempt_at), updated_at = ? "
                "WHERE event_id = ? AND sink = ?",
                (state, error, next_attempt_at, now, event_id, sink),
            )
            _insert_attempt(db, event_id, attempt)

        await self.write(op)
        self._changed("delivery", event_id, {"sink": sink, "state": state, "attempt": attempt})

    async def release_leases(self) -> None:
        """Make every leased item due again at once (graceful shutdown)."""

        def op(db: sqlite3.Connection) -> None:
            db.execute("UPDATE deliveries SET lease_until = NULL WHERE lease_until IS NOT NULL")
            db.execute(
                "UPDATE events SET fetch_lease_until = NULL WHERE fetch_lease_until IS NOT NULL"
            )

        await self.write(op)

    async def renew_leases(
        self,
        fetches: Sequence[FetchTask],
        deliveries: Sequence[DeliveryTask],
        *,
        lease_seconds: float,
    ) -> None:
        """Extend the leases of work still running (this relay is the queue's only owner)."""
        until = self._clock() + lease_seconds

        def op(db: sqlite3.Connection) -> None:
            db.executemany(
                "UPDATE events SET fetch_lease_until = ? WHERE id = ? AND fetch_state = 'pending'",
                [(until, task.event_id) for task in fetches],
            )
            db.executemany(
                "UPDATE deliveries SET lease_until = ? WHERE event_id = ? AND sink = ? "
                "AND lease_until IS NOT NULL",
                [(until, task.event_id, task.sink) for task in deliveries],
            )

        await self.write(op)

    async def take_back_leases(self) -> None:
        """Make work leased by a killed predecessor due again at once: a single SQLite
        relay owns its queue, so every lease found at start is a dead process's."""
        now = self._clock()

        def op(db: sqlite3.Connection) -> None:
            db.execute("UPDATE deliveries SET lease_until = NULL WHERE lease_until IS NOT NULL")
            db.execute(
                "UPDATE events SET fetch_lease_until = NULL WHERE fetch_lease_until IS NOT NULL"
            )
            db.execute(
                "UPDATE watches SET next_poll_at = ?, lease_until = NULL "
                "WHERE lease_until IS NOT NULL",
                (now,),
            )

        await self.write(op)

    async def replay(
        self,
        event_ids: Sequence[str] = (),
        *,
        sink: str | None = None,
        dead_only: bool = False,
        edited_envelope: dict[str, Any] | None = None,
    ) -> int:
        """Make deliveries due again as replays, sending `edited_envelope` if given;
        returns how many were queued."""
        now = self._clock()
        clauses = ["1 = 1"]
        params: list[Any] = [rows.envelope_text(edited_envelope), now, now]
        if dead_only:
            clauses.append("state = 'dead'")
        if sink is not None:
            clauses.append("sink = ?")
            params.append(sink)
        update = (
            "UPDATE deliveries SET state = 'pending', attempts = 0, replay = 1, "
            "edited_envelope = ?, lease_until = NULL, next_attempt_at = ?, updated_at = ? "
            f"WHERE {' AND '.join(clauses)}"
        )
        # Repeated ids must not count twice when they land in different chunks.
        unique_ids = list(dict.fromkeys(event_ids))

        def op(db: sqlite3.Connection) -> int:
            if unique_ids:
                count = sum(
                    db.execute(
                        update + f" AND event_id IN ({placeholders(len(chunk))})",
                        [*params, *chunk],
                    ).rowcount
                    for chunk in chunks(unique_ids)
                )
            else:
                count = db.execute(update, params).rowcount
            # A replay of an event whose fetch had died tries the fetch again.
            db.execute(
                "UPDATE events SET fetch_state = 'pending', next_fetch_at = ?, fetch_attempts = 0 "
                "WHERE fetch_state = 'dead' AND id IN "
                "(SELECT event_id FROM deliveries WHERE state = 'pending' AND replay = 1)",
                (now,),
            )
            # Deliveries of an event whose job is (again) being fetched wait for it.
            db.execute(
                "UPDATE deliveries SET next_attempt_at = ? WHERE state = 'pending' "
                "AND event_id IN (SELECT id FROM events WHERE fetch_state = 'pending')",
                (AWAITING_FETCH,),
            )
            return count

        result: int = await self.write(op)
        return result

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


def _claim_fetches(
    db: sqlite3.Connection, *, now: float, limit: int, lease_seconds: float
) -> list[FetchTask]:
    if limit <= 0:
        return []
    found = db.execute(
        "SELECT id, job_id, type, fetch_attempts FROM events "
        "WHERE fetch_state = 'pending' AND next_fetch_at <= ? "
        "AND (fetch_lease_until IS NULL OR fetch_lease_until <= ?) "
        "ORDER BY next_fetch_at LIMIT ?",
        (now, now, limit),
    ).fetchall()
    tasks = [FetchTask(r["id"], r["job_id"], r["type"], r["fetch_attempts"]) for r in found]
    db.executemany(
        "UPDATE events SET fetch_lease_until = ? WHERE id = ?",
        [(now + lease_seconds, task.event_id) for task in tasks],
    )
    return tasks


_DELIVERY_COLUMNS = (
    "SELECT d.event_id, d.sink, d.attempts, d.replay, e.type, e.job_id, e.received_at, "
    "e.source, e.body, e.job, e.result_url, w.metadata, d.edited_envelope "
    "FROM deliveries d JOIN events e ON e.id = d.event_id "
    "LEFT JOIN watches w ON w.job_id = e.job_id "
)


def _claim_deliveries(
    db: sqlite3.Connection,
    *,
    now: float,
    free_slots: dict[str, int],
    total_limit: int,
    lease_seconds: float,
    event_id: str | None = None,
) -> list[DeliveryTask]:
    """Lease due deliveries (of one event, if given), within the slots and the total."""
    tasks: list[DeliveryTask] = []
    for sink, slots in free_slots.items():
        limit = min(slots, total_limit - len(tasks))
        if limit <= 0:
            continue
        where = (
            "WHERE d.sink = ? AND d.state = 'pending' AND d.next_attempt_at <= ? "
            "AND (d.lease_until IS NULL OR d.lease_until <= ?) "
            "AND e.fetch_state IN ('none', 'done') "
        )
        params: list[Any] = [sink, now, now]
        if event_id is not None:
            where += "AND d.event_id = ? "
            params.append(event_id)
        found = db.execute(
            _DELIVERY_COLUMNS + where + "ORDER BY d.next_attempt_at LIMIT ?", [*params, limit]
        ).fetchall()
        tasks.extend(rows.delivery_task(row, None) for row in found)
    db.executemany(
        "UPDATE deliveries SET lease_until = ? WHERE event_id = ? AND sink = ?",
        [(now + lease_seconds, t.event_id, t.sink) for t in tasks],
    )
    return tasks


def _insert_attempt(db: sqlite3.Connection, event_id: str, attempt: Attempt) -> None:
    db.execute(rows.INSERT_ATTEMPT, rows.attempt_values(event_id, attempt))
