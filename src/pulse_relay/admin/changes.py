"""The change hub: every change to events and deliveries gets the next sequence number.

The hub keeps the last `capacity` changes in a ring so that a client of the change
stream (stream.py) reconnecting with `Last-Event-ID` first receives what it missed. An
"event" change records only the event's id: its list item is read from the store when
it is first sent (so an ingest costs no extra read).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pulse_relay.serialize import attempt_document
from pulse_relay.store import Attempt

RING_CAPACITY = 2_000


@dataclass
class Change:
    """One change: `data` is None until a stream reads it when it is made on demand (an
    "event" change's list item, read from the store; a "delivery" change's document,
    built by `build`)."""

    seq: int
    kind: str
    event_id: str | None
    data: dict[str, Any] | None
    build: Callable[[], dict[str, Any]] | None = None


class ChangeHub:
    """Numbers changes, keeps the recent ones, and wakes the streams waiting for more."""

    def __init__(
        self, *, capacity: int = RING_CAPACITY, clock: Callable[[], float] = time.time
    ) -> None:
        self._ring: deque[Change] = deque(maxlen=capacity)
        # Microseconds since the epoch at start: ids keep increasing across restarts, so a
        # client's id from an earlier run is never mistaken for one of this run's changes.
        self._last_seq = int(clock() * 1_000_000)
        # Made when a stream first waits: with no stream open, a change costs no Event.
        self._changed: asyncio.Event | None = None
        self._closed = False

    @property
    def last_seq(self) -> int:
        """The sequence number of the newest change (or the start value when none)."""
        return self._last_seq

    @property
    def is_closed(self) -> bool:
        """True once the relay is shutting down: streams end."""
        return self._closed

    def publish(
        self,
        kind: str,
        data: dict[str, Any] | None,
        *,
        event_id: str | None = None,
        build: Callable[[], dict[str, Any]] | None = None,
    ) -> int:
        """Record one change (its data, or how to build it when a stream reads it); returns
        its sequence number."""
        self._last_seq += 1
        self._ring.append(Change(self._last_seq, kind, event_id, data, build))
        changed, self._changed = self._changed, None
        if changed is not None:
            changed.set()
        return self._last_seq

    def publish_event(self, event_id: str) -> int:
        """An event was stored or changed; its list item is read when sent."""
        return self.publish("event", None, event_id=event_id)

    def on_store_change(self, kind: str, event_id: str, detail: dict[str, Any] | None) -> None:
        """The store's change listener: an attempt's outcome, then the event's new summary."""
        if detail is not None:
            attempt = detail["attempt"]
            assert isinstance(attempt, Attempt)

            def document() -> dict[str, Any]:
                return {
                    "event_id": event_id,
                    # None for the job fetch, as in the attempt log.
                    "sink": detail.get("sink"),
                    "state": detail["state"],
                    "attempt": attempt_document(attempt),
                }

            # Built when a stream sends it: every attempt is published, streams are rare.
            self.publish("delivery", None, event_id=event_id, build=document)
        self.publish_event(event_id)

    def since(self, seq: int) -> list[Change] | None:
        """Changes newer than `seq`; None when the ring no longer holds all of them."""
        if seq == self._last_seq:
            return []
        oldest = self._ring[0].seq if self._ring else self._last_seq + 1
        if seq > self._last_seq or seq < oldest - 1:
            return None
        return [change for change in self._ring if change.seq > seq]

    async def wait(self, seq: int, *, timeout_seconds: float) -> None:
        """Return when a change newer than `seq` exists, the hub closes, or the time is up."""
        if self._last_seq > seq or self._closed:
            return
        changed = self._changed
        if changed is None:
            changed = self._changed = asyncio.Event()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_seconds):
                await changed.wait()

    def close(self) -> None:
        """End every stream (shutdown)."""
        self._closed = True
        if self._changed is not None:
            self._changed.set()
