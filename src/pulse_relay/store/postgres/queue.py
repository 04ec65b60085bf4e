"""PostgreSQL work queue: claims with FOR UPDATE SKIP LOCKED, leases guarded by a token.

A claim stamps each row with a token of its own; renewing, finishing and
releasing match on it, so a relay whose lease ran out (and whose work another
relay took over) changes nothing when it finally answers.
"""

from __future__ import annotations

import json
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
from pulse_relay.store.postgres import statements as sql
from pulse_relay.store.postgres.finishes import DeliveryFinish
from pulse_relay.store.postgres.plumbing import (
    WORK_CHANNEL,
    PostgresPlumbing,
    pipelined_transaction,
)


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
        """Lease due job fetches (up to `fetch_limit`) and due deliveries: two statements
        sent together, one round trip."""
        open_sinks = {sink: slots for sink, slots in free_slots.items() if slots > 0}
        if total_limit <= 0:
            open_sinks = {}
        if fetch_limit <= 0 and not open_sinks:
            return [], []
        now, token = self._clock(), self.next_token()
        async with self.connection() as conn:
            async with conn.pipeline():
                fetched = None
                if fetch_limit > 0:
                    fetched = await conn.execute(
                        sql.CLAIM_FETCHES, (now, now, fetch_limit, now + lease_seconds, token)
                    )
                claimed = None
                if open_sinks:
                    claimed = await conn.execute(
                        sql.CLAIM_DELIVERIES,
                        {
                            "sinks": list(open_sinks),
                            "slots": list(open_sinks.values()),
                            "now": now,
                            "total": total_limit,
                            "until": now + lease_seconds,
                            "token": token,
                        },
                    )
            fetches = [
                FetchTask(event_id, job_id, event_type, attempts, token)
                for event_id, job_id, event_type, attempts in (
                    await fetched.fetchall() if fetched else []
                )
            ]
            deliveries = [
                rows.delivery_task(row[: sql.TASK_WIDTH], token)
                for row in (await claimed.fetchall() if claimed else [])
            ]
        return fetches, deliveries

    async def renew_leases(
        self,
        fetches: Sequence[FetchTask],
        deliveries: Sequence[DeliveryTask],
        *,
        lease_seconds: float,
    ) -> None:
        """Extend the leases of work still running here (only where the token still matches):
        every lease of the relay in one statement."""
        async with self.connection() as conn:
            await conn.execute(
                sql.RENEW_LEASES,
                {
                    "until": self._clock() + lease_seconds,
                    "fetch_ids": [f.event_id for f in fetches],
                    "fetch_tokens": [f.token for f in fetches],
                    "event_ids": [d.event_id for d in deliveries],
                    "sinks": [d.sink for d in deliveries],
                    "tokens": [d.token for d in deliveries],
                },
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
        sinks = [sink for sink, slots in (free_slots or {}).items() if slots > 0]
        async with self.connection() as conn:
            cursor = await conn.execute(
                sql.FINISH_FETCH,
                {
                    "job": json.dumps(job),
                    "url": result_url,
                    "now": now,
                    "id": event_id,
                    "token": token,
                    "sinks": sinks,
                    "total": max(total_limit, 0),
                    "until": now + lease_seconds,
                    "claim": claim_token,
                    "channel": WORK_CHANNEL,
                    "relay": self.relay_id,
                    **sql.attempt_params(attempt),
                },
            )
            found = await cursor.fetchall()
        if not found:
            return []
        if found[0][sql.TASK_WIDTH]:  # a delivery was left for whichever relay has a slot
            self._wake()
        self._changed("fetch", event_id, {"state": "done", "attempt": attempt})
        tasks = [
            rows.delivery_task(row[: sql.TASK_WIDTH], claim_token)
            for row in found
            if row[0] is not None  # the fetch's own row, when no delivery was leased
        ]
        return sorted(tasks, key=lambda task: sinks.index(task.sink))

    async def retry_fetch(
        self, event_id: str, *, next_fetch_at: float, attempt: Attempt, token: str | None = None
    ) -> None:
        """Record a failed fetch and schedule the next one (if the fetch is still ours)."""
        async with self.connection() as conn:
            cursor = await conn.execute(
                sql.RETRY_FETCH,
                {"next": next_fetch_at, "id": event_id, "token": token}
                | sql.attempt_params(attempt),
            )
        if cursor.rowcount:
            self._changed("fetch", event_id, {"state": "pending", "attempt": attempt})

    async def fail_fetch(
        self, event_id: str, *, attempt: Attempt, token: str | None = None
    ) -> None:
        """Give up on the job fetch: the event's pending deliveries go dead with the reason."""
        async with self.connection() as conn:
            cursor = await conn.execute(
                sql.FAIL_FETCH,
                {
                    "id": event_id,
                    "token": token,
                    "reason": fetch_failure(attempt),
                    "now": self._clock(),
                    **sql.attempt_params(attempt),
                },
            )
        if cursor.rowcount:
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
        """Record one attempt and move the delivery on, unless another relay took it over:
        with the other finishes waiting meanwhile, in one statement (see finishes.py)."""
        state, error = delivery_state(outcome, attempt)
        finish = DeliveryFinish(event_id, sink, token, state, error, next_attempt_at, attempt)
        if await self._finishes.finish(finish):
            self._changed("delivery", event_id, {"sink": sink, "state": state, "attempt": attempt})

    async def release_leases(self) -> None:
        """Make the work this relay leased due again at once (graceful shutdown)."""
        async with self.connection() as conn:
            await conn.execute(
                sql.RELEASE_LEASES,
                {"mine": f"{self.relay_id}:%", "channel": WORK_CHANNEL, "relay": self.relay_id},
            )
        self._wake()

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
        async with self.connection() as conn:
            # Three statements, each reading what the one before changed: one
            # transaction, sent together.
            async with pipelined_transaction(conn):
                cursor = await conn.execute(
                    "UPDATE deliveries SET state = 'pending', attempts = 0, replay = TRUE, "
                    "edited_envelope = %s, lease_until = NULL, lease_token = NULL, "
                    "next_attempt_at = %s, updated_at = %s "
                    "WHERE (NOT %s OR state = 'dead') AND (%s::text IS NULL OR sink = %s) "
                    "AND (%s::text[] IS NULL OR event_id = ANY(%s))",
                    (edited, now, now, dead_only, sink, sink, ids, ids),
                )
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
            count = cursor.rowcount
        self._wake()
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
