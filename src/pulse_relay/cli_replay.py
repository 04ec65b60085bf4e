"""`pulse-relay replay`: what the command does once its arguments are parsed.

The admin API's own functions decide, so the command line and `POST
/api/events/{id}/replay` refuse the same things for the same reasons.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pulse_relay.cli_context import fail, with_service

if TYPE_CHECKING:
    from pulse_relay.config import Settings
    from pulse_relay.store import StoreBackend


def read_envelope(source: str) -> dict[str, Any]:
    """The edited envelope in the file `source` (`-`: stdin), checked as the API checks
    it; exits 1 naming `--envelope` when it cannot be read or is not one."""
    from pulse_relay.admin import service
    from pulse_relay.admin.errors import BadRequest

    shown = "stdin" if source == "-" else source
    try:
        raw = sys.stdin.buffer.read() if source == "-" else Path(source).read_bytes()
    except OSError as error:
        fail(f"--envelope: cannot read {shown}: {error.strerror or error}")
    try:
        document = service.parse_json(raw)
    except ValueError as error:
        fail(f"--envelope: {shown} is not valid JSON: {error}")
    try:
        return service.edited_envelope(document)
    except BadRequest as error:
        fail(f"--{error.detail}")


def replay(
    settings: Settings,
    event_ids: tuple[str, ...],
    *,
    dead_only: bool,
    sink: str | None,
    envelope: dict[str, Any] | None,
) -> int:
    """Queue the replays asked for; how many deliveries were queued. Every id is checked
    before any is queued: one typo replays nothing."""
    from pulse_relay.admin import service

    async def action(store: StoreBackend) -> int:
        if dead_only:
            sink_names = {s.name for s in settings.sinks}
            answer = await service.replay_matching(store, sink_names, {"sink": sink})
            return int(answer["queued"])
        body: dict[str, Any] = {} if sink is None else {"sinks": [sink]}
        if envelope is not None:
            body["envelope"] = envelope
        unique_ids = list(dict.fromkeys(event_ids))
        for event_id in unique_ids:
            await service.replay_target(store, event_id, body)
        queued = 0
        for event_id in unique_ids:
            answer = await service.replay_one(store, event_id, body)
            queued += int(answer["queued"])
        return queued

    return with_service(settings, action)
