"""What the store takes and gives, whichever backend holds it: records, views, errors.

The views and the errors live in `view_model` and `errors` (a command that only reads
loads those alone); they are named here too, where the rest of the store finds them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from pulse_relay.store.errors import StoreUnavailableError as StoreUnavailableError
from pulse_relay.store.errors import StoreVersionError as StoreVersionError
from pulse_relay.store.view_model import AWAITING_FETCH as AWAITING_FETCH
from pulse_relay.store.view_model import DELIVERY_STATES as DELIVERY_STATES
from pulse_relay.store.view_model import Attempt as Attempt
from pulse_relay.store.view_model import DeliveryView as DeliveryView
from pulse_relay.store.view_model import EventCursor as EventCursor
from pulse_relay.store.view_model import EventView as EventView
from pulse_relay.store.view_model import Watch as Watch
from pulse_relay.unencodable import REPLACEMENT_CHARACTER, without_lone_surrogates

IngestOutcome = Literal["accepted", "duplicate"]
DeliveryOutcome = Literal["delivered", "retry", "dead"]

# Events deleted per transaction by prune(), so the writer is never held for long.
PRUNE_BATCH = 500
# Pruned ids are remembered at least this long (a replay of one then answers "pruned").
PRUNED_IDS_MIN_SECONDS = 86_400.0


class UnwritableRecordError(ValueError):
    """A record holding text the store cannot write: refused alone, before it joins a batch."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class IngestRecord:
    """One verified event to store, with the deliveries it starts."""

    event_id: str
    received_at: float
    source: str
    headers: dict[str, str]
    body: bytes
    event_type: str | None
    job_id: str | None
    job_key: str | None
    error: str | None
    sinks: Sequence[str]
    needs_fetch: bool
    # Webhooks only: the client as the ingress saw it (None for polled events).
    client_address: str | None = None
    # "sha256:<hex>" of the body when the body is the only signed part (hmac-sha256-hex):
    # a second dedupe key beside `event_id`, so a captured body replayed under a new id
    # is a duplicate. None when the signature covers the id as well.
    body_digest: str | None = None


def text_problem(text: str) -> str | None:
    """Why `text` cannot be stored as text on every backend, or None: a lone surrogate
    (a `\\ud800` escape decodes to one; UTF-8 cannot encode it) or a NUL (PostgreSQL's
    text refuses it, and a record must be storable on either backend)."""
    if "\x00" in text:
        return "holds a NUL character"
    try:
        text.encode()
    except UnicodeEncodeError:
        return "is not valid Unicode text (a lone surrogate)"
    return None


# One escape of JSON text: `\\` is consumed whole, so the `u0000` after it is not one.
_JSON_ESCAPE = re.compile(r"\\(?:u[0-9a-fA-F]{4}|.)")


def storable_json(document: Any) -> str:
    """`document` as JSON text every backend can hold (PostgreSQL's jsonb included): each
    lone surrogate, and each NUL (jsonb refuses `\\u0000`), replaced by U+FFFD."""
    text = without_lone_surrogates(json.dumps(document, ensure_ascii=False))
    if "\\u0000" not in text:
        return text
    return _JSON_ESCAPE.sub(
        lambda escape: REPLACEMENT_CHARACTER if escape[0] == "\\u0000" else escape[0], text
    )


def record_problem(record: IngestRecord) -> str | None:
    """Why the store cannot write `record` (named by field), or None. Asked before a record
    joins a group commit, so that it cannot fail the others in that transaction. The
    headers are not asked about: `headers_json` escapes whatever they hold."""
    # Nearly every record is fine: one check of all its texts at once, and the field is
    # looked for only when that finds one (this runs on the event loop for every webhook).
    joined = "\n".join(
        [
            record.event_id,
            record.source,
            record.event_type or "",
            record.job_id or "",
            record.job_key or "",
            record.error or "",
            record.client_address or "",
            *record.sinks,
        ]
    )
    if text_problem(joined) is None:
        return None
    texts = {
        "event_id": record.event_id,
        "source": record.source,
        "event_type": record.event_type,
        "job_id": record.job_id,
        "job_key": record.job_key,
        "error": record.error,
        "client_address": record.client_address,
    }
    for name, text in [*texts.items(), *(("sink", sink) for sink in record.sinks)]:
        problem = None if text is None else text_problem(text)
        if problem is not None:
            return f"{name} {problem}"
    return None


def headers_json(headers: dict[str, str]) -> str:
    """The stored headers as JSON text: by orjson (on the writer, for every event), by json
    for a value orjson refuses (a lone surrogate from a header that was not UTF-8)."""
    try:
        return orjson.dumps(headers).decode()
    except TypeError:  # orjson.JSONEncodeError
        return json.dumps(headers)


@dataclass(frozen=True)
class FetchTask:
    """An event whose canonical job must be fetched before its sinks can run."""

    event_id: str
    job_id: str
    event_type: str
    attempts: int
    token: str | None = None
    """The claim's lease token: pass it back to renew, retry, fail or finish this fetch,
    which then changes nothing once another relay has claimed the fetch since (None on
    SQLite, whose one relay owns the queue). See `pulse_relay.store.contract`."""


@dataclass(frozen=True)
class DeliveryTask:
    """One claimed (event, sink) delivery with what is needed to build its envelope."""

    event_id: str
    sink: str
    attempts: int
    is_replay: bool
    event_type: str
    job_id: str | None
    received_at: float
    source: str
    body: bytes
    job: dict[str, Any] | None
    result_url: str | None
    metadata: dict[str, Any] | None = None
    token: str | None = None
    """The claim's lease token: pass it back to renew or finish this delivery, which then
    changes nothing once another relay has claimed the delivery since (None on SQLite,
    whose one relay owns the queue). See `pulse_relay.store.contract`."""
    edited_envelope: dict[str, Any] | None = None
    """The envelope an edited replay asked for, sent instead of the one built from the
    event; None for any other delivery."""


# (kind, event_id, detail) after a change is committed: "event" (stored), "delivery"
# (an attempt's outcome: sink, state, attempt) and "fetch" (a job fetch attempt).
ChangeListener = Callable[[str, str, dict[str, Any] | None], None]


@dataclass(frozen=True)
class StoredDelivery:
    """One sink's delivery of an imported event, in the state it is carried over in."""

    sink: str
    state: str
    attempts: int
    # AWAITING_FETCH while the event's job is still to be fetched.
    next_attempt_at: float
    last_error: str | None
    is_replay: bool


@dataclass(frozen=True)
class StoredEvent:
    """A whole event as an import writes it: its row, deliveries, attempts and its job's
    watch metadata (`insert_event` keeps every state as given)."""

    event_id: str
    received_at: float
    source: str
    event_type: str | None
    job_id: str | None
    job_key: str | None
    state: str
    error: str | None
    headers: dict[str, str]
    body: bytes
    fetch_state: str
    fetch_attempts: int
    # When a pending job fetch is due; None for any other fetch state.
    next_fetch_at: float | None
    fetch_error: str | None
    job: Any
    result_url: str | None
    client_address: str | None
    body_digest: str | None
    deliveries: tuple[StoredDelivery, ...]
    attempts: tuple[Attempt, ...]
    # None: the job had no watch; a watch is added (not polled) when it has none here.
    metadata: dict[str, Any] | None
