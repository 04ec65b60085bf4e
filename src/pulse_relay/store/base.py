"""What both backends' plumbing shares: the change listeners, `async with`, the check that
keeps a record out of a group commit it would fail, and answering a group commit."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, Self

from pulse_relay.store.model import (
    ChangeListener,
    IngestOutcome,
    IngestRecord,
    UnwritableRecordError,
    record_problem,
)


class BackendBase:
    """The part of a backend that speaks no SQL; the backend adds `open`, `close` and
    `_queue_record`."""

    def __init__(self) -> None:
        self._listeners: list[ChangeListener] = []

    def add_listener(self, listener: ChangeListener) -> None:
        """Call `listener` after each committed change of an event made by this relay
        (see ChangeListener)."""
        self._listeners.append(listener)

    def _changed(self, kind: str, event_id: str, detail: dict[str, Any] | None = None) -> None:
        for listener in self._listeners:
            listener(kind, event_id, detail)

    async def open(self) -> None:
        """Connect, migrate, and start whatever background work the backend needs."""
        raise NotImplementedError

    async def close(self) -> None:
        """Finish queued writes and close every connection."""
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def ingest(self, record: IngestRecord) -> IngestOutcome:
        """Store one event and its deliveries; returns after the commit that holds it.
        UnwritableRecordError for a record holding text the store cannot write."""
        problem = record_problem(record)
        if problem is not None:
            raise UnwritableRecordError(problem)
        outcome = await self._queue_record(record)
        if outcome == "accepted":
            self._changed("event", record.event_id)
        return outcome

    def _queue_record(self, record: IngestRecord) -> asyncio.Future[IngestOutcome]:
        """Queue `record` for the next group commit; its outcome once committed.
        StoreUnavailableError when the store is closed."""
        raise NotImplementedError


def answer(futures: Sequence[asyncio.Future[Any]], outcomes: Sequence[tuple[bool, Any]]) -> None:
    """Answer each write of one transaction with its (ok, result or exception); a caller
    gone meanwhile (its future done) is skipped."""
    for future, (ok, value) in zip(futures, outcomes, strict=True):
        if future.done():
            continue
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)
