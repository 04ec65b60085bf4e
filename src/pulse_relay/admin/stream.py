"""The change hub (every change gets the next sequence number) and `GET /api/stream` (SSE).

The hub keeps the last `capacity` changes in a ring so that a client reconnecting
with `Last-Event-ID` first receives what it missed. An "event" change records only
the event's id: its list item is read from the store when it is first sent (so an
ingest costs no extra read) and then kept with the change for other subscribers.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from pulse_relay.admin import service
from pulse_relay.admin.context import CONTEXT_KEY, AdminContext
from pulse_relay.logs import get_logger
from pulse_relay.serialize import attempt_document
from pulse_relay.store import Attempt, StoreUnavailableError

log = get_logger("pulse_relay.admin")

RING_CAPACITY = 2_000
HEARTBEAT_SECONDS = 15.0
RETRY_MILLISECONDS = 2_000


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


def _message(kind: str, data: dict[str, Any], seq: int | None) -> bytes:
    lines = [] if seq is None else [f"id: {seq}"]
    lines += [f"event: {kind}", f"data: {json.dumps(data, separators=(',', ':'))}", "", ""]
    return "\n".join(lines).encode()


async def _resolved(ctx: AdminContext, change: Change) -> dict[str, Any] | None:
    if change.data is None and change.build is not None:
        change.data, change.build = change.build(), None
    elif change.data is None and change.kind == "event" and change.event_id is not None:
        change.data = await service.event_item(ctx, change.event_id)
    return change.data


def _start_seq(hub: ChangeHub, last_event_id: str | None) -> tuple[int, bool]:
    """Where a stream starts, and whether the client must reload (resync)."""
    if last_event_id is None:
        return hub.last_seq, False
    try:
        seq = int(last_event_id)
    except ValueError:
        return hub.last_seq, True
    return (seq, False) if hub.since(seq) is not None else (hub.last_seq, True)


async def stream_handler(request: web.Request) -> web.StreamResponse:
    """`GET /api/stream`: Server-Sent Events of every change from now (or Last-Event-ID) on."""
    ctx = request.app[CONTEXT_KEY]
    last_event_id = request.headers.get("Last-Event-ID") or request.query.get("last_event_id")
    seq, must_resync = _start_seq(ctx.hub, last_event_id)
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",
        }
    )
    await response.prepare(request)
    try:
        await response.write(f"retry: {RETRY_MILLISECONDS}\n\n".encode())
        if must_resync:
            await response.write(_message("resync", {"last_seq": seq}, seq))
        await _send_changes(ctx, response, seq)
    except ConnectionResetError:
        pass  # the client went away
    except (StoreUnavailableError, sqlite3.Error) as error:
        # Headers are sent: end the stream; the client reconnects with Last-Event-ID.
        log.warning("change stream ended: store unavailable", reason=str(error))
    return response


async def _send_changes(ctx: AdminContext, response: web.StreamResponse, seq: int) -> None:
    hub = ctx.hub
    while not hub.is_closed:
        changes = hub.since(seq)
        if changes is None:
            # The client fell more than a ring behind while connected.
            seq = hub.last_seq
            await response.write(_message("resync", {"last_seq": seq}, seq))
            continue
        for change in changes:
            data = await _resolved(ctx, change)
            if data is not None:
                await response.write(_message(change.kind, data, change.seq))
            seq = change.seq
        if not changes:
            await hub.wait(seq, timeout_seconds=HEARTBEAT_SECONDS)
            if hub.since(seq) == []:
                await response.write(b": keep-alive\n\n")
