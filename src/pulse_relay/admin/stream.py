"""`GET /api/stream`: Server-Sent Events of the change hub's changes (changes.py).

A client reconnecting with `Last-Event-ID` first receives what it missed, as long as
the hub's ring still holds it; otherwise it is told to reload (`resync`). An "event"
change's list item is read from the store when it is first sent, then kept with the
change for other subscribers.
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from aiohttp import web

from pulse_relay.admin import service
from pulse_relay.admin.changes import Change, ChangeHub
from pulse_relay.admin.context import CONTEXT_KEY, AdminContext
from pulse_relay.logs import get_logger
from pulse_relay.store import StoreUnavailableError

log = get_logger("pulse_relay.admin")

HEARTBEAT_SECONDS = 15.0
RETRY_MILLISECONDS = 2_000


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
