"""PostgreSQL work queue: claims with FOR UPDATE SKIP LOCKED, leases guarded by a token.

A claim stamps each row with a token of its own; renewing, finishing and
releasing match on it, so a relay whose lease ran out (and whose work another
relay took over) changes nothing when it finally answers.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from psycopg import AsyncConnection

from pulse_relay.store import rows
from pulse_relay.store.decide import delivery_state, fetch_failure
from pulse_relay.store.listing import POSTGRES
from pulse_relay.store.model import (
    AWAITING_FETCH,
    Attempt,
    DeliveryOutcome,
    DeliveryTask,
    FetchTask,
)
from pulse_relay.store.postgres.plumbing import PostgresPlumbing

_CLAIM_FETCHES = (
    "WITH due AS (SELECT id FROM events WHERE fetch_state = 'pending' AND next_fetch_at <= %s "
    "AND (fetch_lease_until IS NULL OR fetch_lease_until <= %s) "
    "ORDER BY next_fetch_at LIMIT %s FOR UPDATE SKIP LOCKED) "
    "UPDATE events e SET fetch_lease_until = %s, fetch_token = %s FROM due WHERE e.id = due.id "
    "RETURNING e.id, e.job_id, e.type, e.fetch_attempts"
)
_CLAIM_DELIVERIES = (
    "WITH due AS (SELECT d.event_id, d.sink FROM deliveries d JOIN events e ON e.id = d.event_id "
    "WHERE d.sink = %s AND d.state = 'pending' AND d.next_attempt_at <= %s "
    "AND (d.lease_until IS NULL OR d.lease_until <= %s) AND e.fetch_state IN ('none', 'done') "
    "AND (%s::text IS NULL OR d.event_id = %s) "
    "ORDER BY d.next_attempt_at LIMIT %s FOR UPDATE OF d SKIP LOCKED) "
    "UPDATE deliveries d SET lease_until = %s, lease_token = %s FROM due "
    "WHERE d.event_id = due.event_id AND d.sink = due.sink "
    "RETURNING d.event_id, d.sink, d.attempts, d.replay, d.edited_envelope"
)
_TASK_EVENTS = (
    "SELECT e.id, e.type, e.job_id, e.received_at, e.source, e.body, e.job, e.result_url, "
    "CAST(w.metadata AS TEXT) FROM events e LEFT JOIN watches w ON w.job_id = e.job_id "
    "WHERE e.id = ANY(%s)"
)
_ATTEMPT = POSTGRES.sql(rows.INSERT_ATTEMPT).encode()


class QueueMixin(PostgresPlumbing):
    """Claim, renew, finish, retry and replay work shared by every relay."""

    async def claim(
        self,
        *,
        fetch_limit: int,
        free_slots: dict[str, int],
        total_limit: int,
        lease_seconds: float,
    ) -> tuple[list[FetchTask], list[DeliveryTask]]:
        """Lease due job fetches (up to `fetch_limit`) and due deliveries, in one transaction."""
        if fetch_limit <= 0 and (total_limit <= 0 or not any(v > 0 for v in free_slots.values())):
            return [], []
        now, token = self._clock(), self.next_token()
        async with self.connection() as conn, conn.transaction():
            fetches: list[FetchTask] = []
            if fetch_limit > 0:
                cursor = await conn.execute(
                    _CLAIM_FETCHES, (now, now, fetch_limit, now + lease_seconds, token)
                )
                fetches = [
                    FetchTask(event_id, job_id, event_type, attempts, token)
                    for event_id, job_id, event_type, attempts in await cursor.fetchall()
                ]
            deliveries = await _claim_deliveries(
                conn, now, free_slots, total_limit, now + lease_seconds, token
            )
        return fetches, deliveries

    async def renew_leases(
        self,
        fetches: Sequence[FetchTask],
        deliveries: Sequence[DeliveryTask],
        *,
        lease_seconds: float,
    ) -> None:
        """Extend the leases of work still running here (only where the token still matches)."""
        until = self._clock() + lease_seconds
        async with self.connection() as conn, conn.transaction():
            if fetches:
                await conn.execute(
                    "UPDATE events SET fetch_lease_until = %s FROM unnest(%s::text[], %s::text[]) "
                    "AS t(i, k) WHERE id = t.i AND fetch_token = t.k",
                    (until, [f.event_id for f in fetches], [f.token for f in fetches]),
                )
            if deliveries:
                await conn.execute(
                    "UPDATE deliveries SET lease_until = %s FROM unnest(%s::text[], %s::text[], "
                    "%s::text[]) AS t(e, s, k) "
                    "WHERE event_id = t.e AND sink = t.s AND lease_token = t.k",
                    (
                        until,
                        [d.event_id for d in deliveries],
                        [d.sink for d in deliveries],
                        [d.token for d in deliveries],
                    ),
                )

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
        are leased and returned at once. Nothing changes if the fetch was taken over."""
        now, claim_token = self._clock(), self.next_token()
        async with self.connection() as conn, conn.transaction():
            cursor = await conn.execute(
                "UPDATE events SET fetch_state = 'done', job = %s, result_url = %s, "
                "fetched_at = %s, fetch_lease_until = NULL, fetch_token = NULL, "
                "fetch_error = NULL, fetch_attempts = fetch_attempts + 1 "
                "WHERE id = %s AND (%s::text IS NULL OR fetch_token = %s)",
                (json.dumps(job), result_url, now, event_id, token, token),
            )
            if cursor.rowcount == 0:
                return []
            await conn.execute(
                "UPDATE deliveries SET next_attempt_at = %s "
                "WHERE event_id = %s AND state = 'pending'",
                (now, event_id),
            )
            await _insert_attempt(conn, event_id, attempt)
            await self.notify_work(conn)
            tasks = await _claim_deliveries(
                conn, now, free_slots or {}, total_limit, now + lease_seconds, claim_token, event_id
            )
        self._changed("fetch", event_id, {"state": "done", "attempt": attempt})
        return tasks

    async def retry_fetch(
        self, event_id: str, *, next_fetch_at: float, attempt: Attempt, token: str | None = None
    ) -> None:
        """Record a failed fetch and schedule the next one (if the fetch is still ours)."""
        async with self.connection() as conn, conn.transaction():
            cursor = await conn.execute(
                "UPDATE events SET next_fetch_at = %s, fetch_lease_until = NULL, "
                "fetch_token = NULL, fetch_error = %s, fetch_attempts = fetch_attempts + 1 "
                "WHERE id = %s AND (%s::text IS NULL OR fetch_token = %s)",
                (next_fetch_at, attempt.error, event_id, token, token),
            )
            if cursor.rowcount == 0:
                return
            await _insert_attempt(conn, event_id, attempt)
        self._changed("fetch", event_id, {"state": "pending", "attempt": attempt})

    async def fail_fetch(
        self, event_id: str, *, attempt: Attempt, token: str | None = None
    ) -> None:
        """Give up on the job fetch: the event's pending deliveries go dead with the reason."""
        now = self._clock()
        async with self.connection() as conn, conn.transaction():
            cursor = await conn.execute(
                "UPDATE events SET fetch_state = 'dead', fetch_lease_until = NULL, "
                "fetch_token = NULL, fetch_error = %s, fetch_attempts = fetch_attempts + 1 "
                "WHERE id = %s AND (%s::text IS NULL OR fetch_token = %s)",
                (attempt.error, event_id, token, token),
            )
            if cursor.rowcount == 0:
                return
            await conn.execute(
                "UPDATE deliveries SET state = 'dead', last_error = %s, lease_until = NULL, "
                "lease_token = NULL, updated_at = %s WHERE event_id = %s AND state = 'pending'",
                (fetch_failure(attempt), now, event_id),
            )
            await _insert_attempt(conn, event_id, attempt)
        self._changed("fetch", event_id, {"state": "dead", "attempt": attempt})

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
        """Record one attempt and move the delivery on, unless another relay took it over."""
        state, error = delivery_state(outcome, attempt)
        async with self.connection() as conn, conn.transaction():
            cursor = await conn.execute(
                "UPDATE deliveries SET state = %s, attempts = attempts + 1, lease_until = NULL, "
                "lease_token = NULL, last_error = %s, "
                "next_attempt_at = COALESCE(%s, next_attempt_at), updated_at = %s "
                "WHERE event_id = %s AND sink = %s AND (%s::text IS NULL OR lease_token = %s)",
                (state, error, next_attempt_at, self._clock(), event_id, sink, token, token),
            )
            if cursor.rowcount == 0:
                return
            await _insert_attempt(conn, event_id, attempt)
        self._changed("delivery", event_id, {"sink": sink, "state": state, "attempt": attempt})

    async def release_leases(self) -> None:
        """Make the work this relay leased due again at once (graceful shutdown)."""
        mine = f"{self.relay_id}:%"
        async with self.connection() as conn, conn.transaction():
            await conn.execute(
                "UPDATE deliveries SET lease_until = NULL, lease_token = NULL "
                "WHERE lease_token LIKE %s",
                (mine,),
            )
            await conn.execute(
                "UPDATE events SET fetch_lease_until = NULL, fetch_token = NULL "
                "WHERE fetch_token LIKE %s",
                (mine,),
            )
            await self.notify_work(conn)

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
        ids = list(dict.fromkeys(event_ids)) or None
        edited = rows.envelope_text(edited_envelope)
        async with self.connection() as conn, conn.transaction():
            cursor = await conn.execute(
                "UPDATE deliveries SET state = 'pending', attempts = 0, replay = TRUE, "
                "edited_envelope = %s, lease_until = NULL, lease_token = NULL, "
                "next_attempt_at = %s, updated_at = %s "
                "WHERE (NOT %s OR state = 'dead') AND (%s::text IS NULL OR sink = %s) "
                "AND (%s::text[] IS NULL OR event_id = ANY(%s))",
                (edited, now, now, dead_only, sink, sink, ids, ids),
            )
            count = cursor.rowcount
            await conn.execute(
                "UPDATE events SET fetch_state = 'pending', next_fetch_at = %s, "
                "fetch_attempts = 0 WHERE fetch_state = 'dead' AND id IN "
                "(SELECT event_id FROM deliveries WHERE state = 'pending' AND replay)",
                (now,),
            )
            await conn.execute(
                "UPDATE deliveries SET next_attempt_at = %s WHERE state = 'pending' "
                "AND event_id IN (SELECT id FROM events WHERE fetch_state = 'pending')",
                (AWAITING_FETCH,),
            )
            await self.notify_work(conn)
        return count

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


async def _claim_deliveries(
    conn: AsyncConnection[Any],
    now: float,
    free_slots: dict[str, int],
    total_limit: int,
    lease_until: float,
    token: str,
    event_id: str | None = None,
) -> list[DeliveryTask]:
    """Lease due deliveries (of one event, if given), within the slots and the total."""
    claimed: list[tuple[Any, ...]] = []
    for sink, slots in free_slots.items():
        limit = min(slots, total_limit - len(claimed))
        if limit <= 0:
            continue
        cursor = await conn.execute(
            _CLAIM_DELIVERIES,
            (sink, now, now, event_id, event_id, limit, lease_until, token),
        )
        claimed.extend(await cursor.fetchall())
    if not claimed:
        return []
    cursor = await conn.execute(_TASK_EVENTS, (list({row[0] for row in claimed}),))
    events = {row[0]: row for row in await cursor.fetchall()}
    # The mapper reads the event's columns between the delivery's and its edited envelope.
    return [rows.delivery_task((*row[:4], *events[row[0]][1:], row[4]), token) for row in claimed]


async def _insert_attempt(conn: AsyncConnection[Any], event_id: str, attempt: Attempt) -> None:
    await conn.execute(_ATTEMPT, rows.attempt_values(event_id, attempt))
