"""Export and import (docs/cli.md): events as NDJSON, one `show --json` document a line,
and such lines written back into any store, whole, with their states.

Export reads page by page (the listing's keyset cursor, one full view at a time), so
what it holds is a page, whatever the store's size. Import writes one event per
transaction: a line refused leaves nothing of its event behind, and the others go on.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pulse_relay.events import ParsedEvent
from pulse_relay.serialize import event_document
from pulse_relay.store import (
    AWAITING_FETCH,
    DELIVERY_STATES,
    Attempt,
    EventCursor,
    StoredDelivery,
    StoredEvent,
    TransferStore,
    ViewStore,
    text_problem,
)
from pulse_relay.store.filters import (
    EVENT_STATES,
    SOURCES,
    FilterError,
    parse_event_filters,
)

# Events listed per page while exporting: what an export holds at a time.
EXPORT_PAGE = 100
# Events an import writes at once: what it holds at a time.
IMPORT_BATCH = 50
FETCH_STATES = ("none", "pending", "done", "dead")
MAX_INTEGER = 2**31 - 1
# Unix seconds: digits, an optional fraction.
_UNIX_SECONDS = re.compile(r"[0-9]{1,11}(\.[0-9]+)?")


# -- export --------------------------------------------------------------------


@dataclass(frozen=True)
class ExportFilters:
    """Which events an export writes: every one, unless narrowed."""

    type: str | None = None
    state: str | None = None
    # received_at bounds, in Unix seconds, both inclusive.
    since: float | None = None
    until: float | None = None


def parse_time(name: str, raw: str | None) -> float | None:
    """A --since/--until value (ISO 8601, or Unix seconds) as Unix seconds; FilterError
    naming `name` otherwise. An ISO time without an offset is UTC."""
    if raw is None or raw == "":
        return None
    if _UNIX_SECONDS.fullmatch(raw):
        return float(raw)
    try:
        moment = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise FilterError(name, "an ISO 8601 time or Unix seconds") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def parse_export_filters(values: Mapping[str, str | None]) -> ExportFilters:
    """An export's filters, given as text by name (a query string, the command line's
    options); FilterError names the first bad one."""
    listing = parse_event_filters({"type": values.get("type"), "state": values.get("state")})
    since = parse_time("since", values.get("since"))
    until = parse_time("until", values.get("until"))
    if since is not None and until is not None and since > until:
        raise FilterError("until", "not before since")
    return ExportFilters(type=listing.type, state=listing.state, since=since, until=until)


async def export_documents(
    store: ViewStore, filters: ExportFilters, *, page_size: int = EXPORT_PAGE
) -> AsyncIterator[dict[str, Any]]:
    """The `show --json` document of every event the filters let through, newest first."""
    # A cursor at `until` with the smallest id lists every event received at or before it.
    before = None if filters.until is None else EventCursor(filters.until, "")
    while True:
        page = await store.list_events(
            event_type=filters.type, state=filters.state, limit=page_size, before=before
        )
        wanted = [
            item for item in page if filters.since is None or item.received_at >= filters.since
        ]
        # An event pruned since it was listed is left out.
        for view in await store.get_events([item.id for item in wanted]):
            yield event_document(view)
        if len(wanted) < page_size:
            return
        before = EventCursor(page[-1].received_at, page[-1].id)


def export_line(document: dict[str, Any]) -> str:
    """One NDJSON line (with its newline) of an exported document."""
    return json.dumps(document, separators=(",", ":")) + "\n"


# -- import --------------------------------------------------------------------


class DocumentError(ValueError):
    """An import line that is not an event document; the message says why."""


def _field(document: Mapping[str, Any], name: str, kind: type | tuple[type, ...]) -> Any:
    if name not in document:
        raise DocumentError(f"{name}: missing")
    value = document[name]
    if not isinstance(value, kind) or (isinstance(value, bool) and bool not in _kinds(kind)):
        raise DocumentError(f"{name}: {_kind_name(kind)} expected")
    if isinstance(value, str):
        problem = text_problem(value)
        if problem is not None:
            raise DocumentError(f"{name} {problem}")
    return value


def _kinds(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


def _kind_name(kind: type | tuple[type, ...]) -> str:
    names = {str: "a string", int: "an integer", float: "a number", bool: "true or false"}
    names |= {dict: "an object", list: "an array", type(None): "null"}
    return " or ".join(names.get(k, k.__name__) for k in _kinds(kind))


def _text(document: Mapping[str, Any], name: str) -> str | None:
    value: str | None = _field(document, name, (str, type(None)))
    return value


def _choice(document: Mapping[str, Any], name: str, allowed: tuple[str, ...]) -> str:
    value: str = _field(document, name, str)
    if value not in allowed:
        raise DocumentError(f"{name}: one of {', '.join(allowed)}")
    return value


def _time(document: Mapping[str, Any], name: str, *, nullable: bool = False) -> float | None:
    value = _field(document, name, (str, type(None)) if nullable else str)
    if value is None:
        return None
    try:
        seconds = datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        raise DocumentError(f"{name}: an RFC 3339 time expected") from None
    return seconds


def _count(document: Mapping[str, Any], name: str, *, nullable: bool = False) -> int | None:
    value: int | None = _field(document, name, (int, type(None)) if nullable else int)
    # Both backends' INTEGER holds it.
    if value is not None and not 0 <= value <= MAX_INTEGER:
        raise DocumentError(f"{name}: from 0 to {MAX_INTEGER}")
    return value


def _body(document: Mapping[str, Any]) -> bytes:
    """The stored body: the payload as JSON (the same JSON, not the same bytes), or the
    text of a body that was not JSON."""
    if "payload" in document:
        try:
            return json.dumps(document["payload"], ensure_ascii=False).encode()
        except UnicodeEncodeError:  # a lone surrogate: escaped, as JSON allows
            return json.dumps(document["payload"]).encode()
    text = _field(document, "payload_text", str)
    return str(text).encode()


def _headers(document: Mapping[str, Any]) -> dict[str, str]:
    headers: dict[str, Any] = _field(document, "headers", dict)
    if not all(isinstance(value, str) for value in headers.values()):
        raise DocumentError("headers: an object of strings expected")
    return headers


def _attempt(item: Any, index: int) -> Attempt:
    if not isinstance(item, dict):
        raise DocumentError(f"attempts[{index}]: an object expected")
    try:
        duration_ms = float(_field(item, "duration_ms", (int, float)))
        if not math.isfinite(duration_ms):
            raise DocumentError("duration_ms: a finite number expected")
        return Attempt(
            sink=_text(item, "sink"),
            attempt=_count(item, "attempt") or 0,
            started_at=float(_time(item, "started_at") or 0.0),
            duration_ms=duration_ms,
            outcome=_field(item, "outcome", str),
            status_code=_count(item, "status_code", nullable=True),
            error=_text(item, "error"),
            output_tail=_text(item, "output_tail"),
            # Absent from documents exported before edited replays existed.
            edited_envelope=(
                _field(item, "edited_envelope", (dict, type(None)))
                if "edited_envelope" in item
                else None
            ),
        )
    except DocumentError as error:
        raise DocumentError(f"attempts[{index}].{error}") from None


def _delivery(sink: str, item: Any, awaiting_fetch: bool) -> StoredDelivery:
    if not isinstance(item, dict):
        raise DocumentError(f"deliveries.{sink}: an object expected")
    problem = text_problem(sink)
    if problem is not None:
        raise DocumentError(f"deliveries: a sink name {problem}")
    try:
        state = _choice(item, "state", DELIVERY_STATES)
        due_at = _time(item, "next_attempt_at", nullable=True)
        if due_at is None:
            # Waiting for its job: due once the job is stored (as ingest leaves it).
            due_at = AWAITING_FETCH if awaiting_fetch else 0.0
        return StoredDelivery(
            sink=sink,
            state=state,
            attempts=_count(item, "attempts") or 0,
            next_attempt_at=due_at,
            last_error=_text(item, "last_error"),
            is_replay=_field(item, "replay", bool),
        )
    except DocumentError as error:
        raise DocumentError(f"deliveries.{sink}.{error}") from None


def stored_event(document: Any, *, now: float) -> StoredEvent:
    """The event an exported document stands for; DocumentError says what is wrong.

    A pending job fetch is due at `now`; a pending delivery keeps its due time (in the
    past, it is due at once)."""
    if not isinstance(document, dict):
        raise DocumentError("not a JSON object")
    event_id = _field(document, "id", str)
    if not event_id:
        raise DocumentError("id: empty")
    fetch = _field(document, "fetch", dict)
    try:
        fetch_state = _choice(fetch, "state", FETCH_STATES)
        fetch_error = _text(fetch, "error")
    except DocumentError as error:
        raise DocumentError(f"fetch.{error}") from None
    attempts = tuple(
        _attempt(item, index) for index, item in enumerate(_field(document, "attempts", list))
    )
    deliveries = _field(document, "deliveries", dict)
    metadata = _field(document, "metadata", (dict, type(None)))
    event_type, job_id = _text(document, "type"), _text(document, "job_id")
    return StoredEvent(
        event_id=event_id,
        received_at=float(_time(document, "received_at") or 0.0),
        source=_choice(document, "source", SOURCES),
        event_type=event_type,
        job_id=job_id,
        job_key=ParsedEvent(event_type, job_id).job_key,
        state=_choice(document, "state", EVENT_STATES),
        error=_text(document, "error"),
        headers=_headers(document),
        body=_body(document),
        fetch_state=fetch_state,
        fetch_attempts=sum(1 for attempt in attempts if attempt.sink is None),
        next_fetch_at=now if fetch_state == "pending" else None,
        fetch_error=fetch_error,
        job=document.get("job"),
        result_url=_text(document, "result_url"),
        client_address=_text(document, "client_address") if "client_address" in document else None,
        body_digest=_text(document, "body_digest") if "body_digest" in document else None,
        deliveries=tuple(
            _delivery(sink, item, fetch_state == "pending") for sink, item in deliveries.items()
        ),
        attempts=attempts,
        metadata=metadata,
    )


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def parse_line(line: str | bytes, *, now: float) -> StoredEvent:
    """One import line as an event; DocumentError says why it is not one."""
    try:
        document = json.loads(line, parse_constant=_refuse_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as error:
        raise DocumentError(f"not valid JSON ({error})") from None
    return stored_event(document, now=now)


@dataclass
class ImportCounts:
    """What an import did: events written, skipped as already present, lines refused."""

    imported: int = 0
    skipped: int = 0
    refused: int = 0


@dataclass(frozen=True)
class Refusal:
    """A line that is not an event document: its number (from 1) and why."""

    line_number: int
    reason: str


async def import_lines(
    store: TransferStore,
    lines: Iterable[str | bytes],
    *,
    now: float,
    strict: bool = False,
) -> AsyncIterator[Refusal | ImportCounts]:
    """Write each line's event into `store`; yields each refused line as it is met, then
    the counts. Blank lines are passed over. `strict` stops at the first refusal.

    Up to IMPORT_BATCH events are written at once, each in a transaction of its own: on
    SQLite they share the writer's commits (one disk sync for the lot), on PostgreSQL
    they run side by side."""
    counts = ImportCounts()
    batch: list[StoredEvent] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            batch.append(parse_line(line, now=now))
        except DocumentError as error:
            counts.refused += 1
            yield Refusal(number, str(error))
            if strict:
                break
            continue
        if len(batch) >= IMPORT_BATCH:
            await _write(store, batch, counts)
    await _write(store, batch, counts)
    yield counts


async def _write(store: TransferStore, batch: list[StoredEvent], counts: ImportCounts) -> None:
    """Write `batch` (emptied) and count what was written and what was already there."""
    stored = await asyncio.gather(*(store.insert_event(event) for event in batch))
    counts.imported += sum(stored)
    counts.skipped += len(stored) - sum(stored)
    batch.clear()
