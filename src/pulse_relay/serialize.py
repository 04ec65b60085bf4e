"""The JSON documents of events and watches: one shape for the CLI's --json and the admin API."""

from __future__ import annotations

import json
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

from pulse_relay.store import Attempt, DeliveryView, EventView, Watch


def iso(unix_seconds: float | None) -> str | None:
    """RFC 3339 UTC with milliseconds, or None."""
    if unix_seconds is None:
        return None
    return datetime.fromtimestamp(unix_seconds, tz=UTC).isoformat(timespec="milliseconds")


def attempt_document(attempt: Attempt) -> dict[str, Any]:
    """One attempt of the log (a sink of None is the job fetch); `edited` with the
    envelope it sent (`edited_envelope`) when it belonged to an edited replay."""
    return {
        **asdict(attempt),
        "started_at": iso(attempt.started_at),
        "edited": attempt.edited_envelope is not None,
    }


def event_document(view: EventView) -> dict[str, Any]:
    """An event as `events --json` prints it (a list view) or `show --json` (a full view)."""
    document: dict[str, Any] = {
        "id": view.id,
        "received_at": iso(view.received_at),
        "source": view.source,
        "type": view.type,
        "job_id": view.job_id,
        "state": view.state,
        "error": view.error,
        "fetch": {"state": view.fetch_state, "error": view.fetch_error},
        "deliveries": {sink: delivery_document(d) for sink, d in view.deliveries.items()},
    }
    if view.body is not None:
        document["client_address"] = view.client_address
        document["headers"] = view.headers
        try:
            document["payload"] = json.loads(view.body)
        except ValueError:
            document["payload_text"] = view.body.decode("utf-8", errors="replace")
        document["job"] = view.job
        document["result_url"] = view.result_url
        document["metadata"] = view.metadata
        document["attempts"] = [attempt_document(attempt) for attempt in view.attempts]
        if view.body_digest is not None:
            # A second dedupe key (docs/cli.md, `import`): carried so a copy keeps it.
            document["body_digest"] = view.body_digest
    return document


def delivery_document(delivery: DeliveryView) -> dict[str, Any]:
    """One sink's delivery state of an event."""
    return {
        "state": delivery.state,
        "attempts": delivery.attempts,
        "next_attempt_at": iso(delivery.next_attempt_at),
        "last_error": delivery.last_error,
        "replay": delivery.is_replay,
    }


def summary_state(view: EventView) -> str:
    """One word for an event's progress: its own state, else the worst of its deliveries."""
    return summarize(view.state, view.fetch_state, [d.state for d in view.deliveries.values()])


def document_summary_state(document: dict[str, Any]) -> str:
    """`summary_state` of an event document (a list item or a full one)."""
    deliveries = document["deliveries"].values()
    return summarize(
        document["state"], document["fetch"]["state"], [d["state"] for d in deliveries]
    )


def summarize(state: str, fetch_state: str, delivery_states: list[str]) -> str:
    """The rule behind `summary_state`: invalid/repeat, fetching, dead, pending, delivered."""
    if state != "accepted":
        return state
    states = set(delivery_states)
    if fetch_state == "pending" and "pending" in states:
        return "fetching"
    for worst in ("dead", "pending"):
        if worst in states:
            return worst
    return "delivered" if states else "no sinks"


def watch_document(watch: Watch) -> dict[str, Any]:
    """A watched job as `watch --list --json` prints it."""
    return {
        **asdict(watch),
        "added_at": iso(watch.added_at),
        "next_poll_at": iso(watch.next_poll_at),
    }
