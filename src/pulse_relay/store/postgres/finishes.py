"""Delivery finishes on PostgreSQL, sent together: one statement for all that wait.

A relay's sinks answer one after another, and each answer is recorded (the delivery
moved on, its attempt logged) in a statement that waits for the server to flush its
WAL. A finish is sent as soon as the event loop gets to it, with every other one
queued by then; those that arrive while a statement runs wait for it and go together
in the next. A relay finishing many deliveries pays one round trip, and one commit,
per statement rather than per delivery, and a lone finish waits for nothing.

Each finish is answered on its own: whether its delivery moved (False when another
relay took it over), or the error it failed with. A statement that fails for a reason
other than an unreachable server is retried one finish at a time, so that only the
finish that breaks it fails.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from psycopg import AsyncConnection

from pulse_relay.store.base import answer
from pulse_relay.store.errors import StoreUnavailableError
from pulse_relay.store.model import Attempt
from pulse_relay.store.postgres import statements as sql

# At most this many finishes in one statement.
MAX_FINISHES = 256

Connect = Callable[[], contextlib.AbstractAsyncContextManager[AsyncConnection[Any]]]


@dataclass(frozen=True)
class DeliveryFinish:
    """One delivery's outcome: its new state and error, when it is next due (None:
    unchanged), the attempt to log, and the lease token it was claimed with."""

    event_id: str
    sink: str
    token: str | None
    state: str
    error: str | None
    next_attempt_at: float | None
    attempt: Attempt

    @property
    def key(self) -> tuple[str, str]:
        return (self.event_id, self.sink)


@dataclass
class _Waiting:
    finish: DeliveryFinish
    future: asyncio.Future[bool]


class DeliveryFinishes:
    """Queues finishes and sends those waiting together, one statement at a time."""

    def __init__(self, connection: Connect, clock: Callable[[], float]) -> None:
        self._connection = connection
        self._clock = clock
        self._waiting: list[_Waiting] = []
        self._sender: asyncio.Task[None] | None = None

    async def finish(self, finish: DeliveryFinish) -> bool:
        """Record `finish`; True if its delivery moved (the lease was still this relay's)."""
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._waiting.append(_Waiting(finish, future))
        if self._sender is None or self._sender.done():
            self._sender = asyncio.create_task(self._send_waiting(), name="store-finishes")
        return await future

    async def close(self) -> None:
        """Wait until every finish queued so far is answered."""
        if self._sender is not None:
            await asyncio.shield(self._sender)

    async def _send_waiting(self) -> None:
        while self._waiting:
            batch = self._next_batch()
            answer([w.future for w in batch], await self._send([w.finish for w in batch]))

    def _next_batch(self) -> list[_Waiting]:
        """The oldest waiting finishes, one per delivery: a second finish of a delivery
        (a replay's, say) waits for the statement after, so it is applied after the first."""
        batch: list[_Waiting] = []
        later: list[_Waiting] = []
        keys: set[tuple[str, str]] = set()
        for waiting in self._waiting:
            if len(batch) < MAX_FINISHES and waiting.finish.key not in keys:
                keys.add(waiting.finish.key)
                batch.append(waiting)
            else:
                later.append(waiting)
        self._waiting = later
        return batch

    async def _send(self, finishes: list[DeliveryFinish]) -> list[tuple[bool, Any]]:
        try:
            moved = await self._execute(finishes)
        except Exception as error:
            if len(finishes) > 1 and not isinstance(error, StoreUnavailableError):
                return [o for finish in finishes for o in await self._send([finish])]
            return [(False, error)] * len(finishes)
        return [(True, finish.key in moved) for finish in finishes]

    async def _execute(self, finishes: list[DeliveryFinish]) -> set[tuple[str, str]]:
        async with self._connection() as conn:
            cursor = await conn.execute(sql.FINISH_DELIVERIES, _params(finishes, self._clock()))
            return {(event_id, sink) for event_id, sink in await cursor.fetchall()}


def _params(finishes: list[DeliveryFinish], now: float) -> dict[str, Any]:
    """FINISH_DELIVERIES' parameters: a list per column, an item per finish."""
    attempts = [sql.attempt_params(f.attempt) for f in finishes]
    params: dict[str, Any] = {
        "ids": [f.event_id for f in finishes],
        "sinks": [f.sink for f in finishes],
        "tokens": [f.token for f in finishes],
        "states": [f.state for f in finishes],
        "errors": [f.error for f in finishes],
        "nexts": [f.next_attempt_at for f in finishes],
        "now": now,
    }
    # One attempt's named parameters (`a_sink`, …), each made a list of all of them.
    for name in attempts[0]:
        params[name] = [attempt[name] for attempt in attempts]
    return params
