"""What the store's reads give: events as listed and shown, their deliveries and attempts,
watches, and a listing's cursor.

Apart from the records the write side takes (`model`): building each dataclass costs
start-up time, and a command that only reads (`pulse-relay events`) needs these alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# The schedule of a delivery whose event still waits for its job: far beyond any
# real time, so the claim's index range (`next_attempt_at <= now`) never walks
# over a backlog of deliveries that cannot run yet. Storing the job sets it to now.
AWAITING_FETCH = 9.0e15


@dataclass(frozen=True)
class Attempt:
    """One row of the attempt log."""

    sink: str | None
    attempt: int
    started_at: float
    duration_ms: float
    outcome: str
    status_code: int | None = None
    error: str | None = None
    output_tail: str | None = None
    # The envelope this attempt sent when it belonged to an edited replay, else None.
    edited_envelope: dict[str, Any] | None = None


@dataclass(frozen=True)
class DeliveryView:
    """One sink's delivery of an event, as `events` and `show` present it."""

    state: str
    attempts: int
    # None while the delivery waits for the job fetch.
    next_attempt_at: float | None
    last_error: str | None
    is_replay: bool
    # The envelope of the last edited replay, which the delivery sends (or sent) instead
    # of the one built from the event; only `get_event` reads it, listings leave None.
    edited_envelope: dict[str, Any] | None = None

    def __getitem__(self, name: str) -> object:
        """The field `name`, for callers written against the mapping this view replaced."""
        if name == "replay":
            return self.is_replay
        if name not in self.__dataclass_fields__:
            raise KeyError(name)
        return getattr(self, name)


@dataclass
class EventView:
    """An event as `events` and `show` present it."""

    id: str
    received_at: float
    source: str
    type: str | None
    job_id: str | None
    state: str
    error: str | None
    fetch_state: str
    fetch_error: str | None
    deliveries: dict[str, DeliveryView] = field(default_factory=dict)
    headers: dict[str, str] | None = None
    client_address: str | None = None
    body: bytes | None = None
    job: Any = None
    result_url: str | None = None
    attempts: list[Attempt] = field(default_factory=list)
    # The job's watch metadata: what its envelopes carry in `relay.metadata`.
    metadata: dict[str, Any] | None = None
    # The body's digest where it is a second dedupe key (a body signed alone); else None.
    body_digest: str | None = None


@dataclass(frozen=True)
class EventCursor:
    """Where a listing stopped: the last event shown (listings are newest first)."""

    received_at: float
    event_id: str


DELIVERY_STATES = ("pending", "delivered", "dead")


@dataclass(frozen=True)
class Watch:
    """A job the poller follows until it is terminal."""

    job_id: str
    metadata: dict[str, Any]
    origin: str
    state: str
    added_at: float
    next_poll_at: float
    interval_seconds: float
    polls: int
    last_status: str | None
    last_error: str | None
