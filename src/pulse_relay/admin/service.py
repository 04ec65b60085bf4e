"""What the admin API and the UI do, as async functions returning JSON-ready documents.

Handlers parse the request, call one function here and render its answer. Bad input
and impossible requests raise a ServiceError subclass (errors.py) carrying its HTTP status; the
API's error middleware is the one place that turns them into answers.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
from collections.abc import Collection, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import aiohttp

from pulse_relay.admin.errors import BadRequest, Conflict, NotFound, Unavailable
from pulse_relay.events import build_envelope, envelope_source, is_valid_job_id, sendable_envelope
from pulse_relay.ratelimit import rate_limited_sinks
from pulse_relay.serialize import event_document, watch_document
from pulse_relay.store import DELIVERY_STATES, EventCursor, EventView, StoreBackend
from pulse_relay.store.filters import (
    EVENT_STATES,
    MAX_FILTER_CHARS,
    EventFilters,
    FilterError,
    text_filter,
)
from pulse_relay.store.filters import parse_event_filters as parse_filter_values
from pulse_relay.testevent import build_test_event, post_test_event
from pulse_relay.unencodable import replace_lone_surrogates

if TYPE_CHECKING:
    from pulse_relay.admin.context import AdminContext


def _refuse_constant(name: str) -> None:
    # Python reads NaN and Infinity, which are not JSON: SQLite's JSON functions reject them.
    raise ValueError(f"{name} is not JSON")


def parse_json(raw: bytes) -> Any:
    """A request body or a file as JSON, strictly (no NaN or Infinity); ValueError if not."""
    try:
        return json.loads(raw, parse_constant=_refuse_constant)
    except RecursionError:
        raise ValueError("nested too deeply") from None


# -- event listings ------------------------------------------------------------


def encode_cursor(cursor: EventCursor) -> str:
    """The opaque `next` / `before` token for a position in a listing."""
    raw = json.dumps([cursor.received_at, cursor.event_id], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(token: str) -> EventCursor:
    """The position a `before` token stands for; BadRequest("before") if it is not one."""
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        received_at, event_id = json.loads(raw)
    except (binascii.Error, ValueError, TypeError):
        raise BadRequest("before", "not a cursor returned as `next` by this API") from None
    if not isinstance(received_at, int | float) or not isinstance(event_id, str):
        raise BadRequest("before", "not a cursor returned as `next` by this API")
    return EventCursor(float(received_at), event_id)


def parse_event_filters(query: Mapping[str, str]) -> EventFilters:
    """Validate the query of an event listing; BadRequest names the first bad parameter."""
    try:
        before = text_filter(query, "before")
        filters = parse_filter_values(query)
    except FilterError as error:
        raise BadRequest(error.name, error.problem) from None
    if before is None:
        return filters
    return dataclasses.replace(filters, before=decode_cursor(before))


async def list_events(ctx: AdminContext, filters: EventFilters) -> dict[str, Any]:
    """A page of events, newest first: {"events": [list items], "next": cursor or None}."""
    # One more than asked tells whether another page exists.
    views = await ctx.store.list_events(**filters.query(), limit=filters.limit + 1)
    page = views[: filters.limit]
    next_cursor = None
    if len(views) > filters.limit:
        next_cursor = encode_cursor(EventCursor(page[-1].received_at, page[-1].id))
    return {"events": [event_document(view) for view in page], "next": next_cursor}


async def event_item(ctx: AdminContext, event_id: str) -> dict[str, Any] | None:
    """The list item document of one event; None when it is not (or no longer) stored."""
    views = await ctx.store.list_events(event_id=event_id, limit=1)
    return event_document(views[0]) if views else None


async def require_event(store: StoreBackend, event_id: str) -> EventView:
    """One event in full; NotFound says whether it was pruned or never stored.

    The admin API (`get_event`) and the command line (`show`) both call this, so a
    pruned event is "pruned" on both sides.
    """
    view = await store.get_event(event_id)
    if view is None:
        if await store.is_pruned(event_id):
            raise NotFound(f"event {event_id!r} was pruned (store.retention_days)")
        raise NotFound(f"no event with id {event_id!r}")
    return view


def built_envelope(view: EventView, *, is_replay: bool) -> dict[str, Any] | None:
    """The envelope the relay builds from a full event view (for a replay, or not); None
    for an event no sink takes."""
    if view.type is None or view.body is None:
        return None
    return build_envelope(
        event_id=view.id,
        event_type=view.type,
        job_id=view.job_id,
        received_at=view.received_at,
        source=envelope_source(view.source, is_replay=is_replay),
        body=view.body,
        job=view.job,
        result_url=view.result_url,
        metadata=view.metadata,
    )


def envelopes(view: EventView) -> dict[str, Any]:
    """The envelope each sink of a full event view received (or will receive), by sink:
    the last edited replay's where there was one."""
    if view.type is None or view.body is None:
        return {}
    return {
        sink: delivery.edited_envelope or built_envelope(view, is_replay=delivery.is_replay)
        for sink, delivery in view.deliveries.items()
    }


def _event_answer(view: EventView) -> dict[str, Any]:
    # Lone surrogates (stored job, payload or headers may hold them) are shown as U+FFFD,
    # as the sinks receive them: neither a page nor a strict JSON reader takes them.
    document: dict[str, Any] = replace_lone_surrogates(
        {**event_document(view), "envelopes": envelopes(view)}
    )
    return document


async def get_event(ctx: AdminContext, event_id: str) -> dict[str, Any]:
    """One event as `show --json` prints it, plus `envelopes`: what each sink received
    (lone surrogates shown as U+FFFD)."""
    return _event_answer(await require_event(ctx.store, event_id))


async def event_page(ctx: AdminContext, event_id: str) -> tuple[dict[str, Any], Any]:
    """`get_event`'s document, and the original envelope (as first delivered, before any
    replay): what the inspector shows an edited attempt's envelope against."""
    view = await require_event(ctx.store, event_id)
    original = replace_lone_surrogates(built_envelope(view, is_replay=False))
    return _event_answer(view), original


# -- replay --------------------------------------------------------------------
# The admin API and the command line (`replay`, `watch`, `unwatch`) both call these,
# so a pruned event is "pruned" on both sides; each caller wakes what it runs.


def _sink_list(body: Mapping[str, Any]) -> list[str] | None:
    sinks = body.get("sinks")
    if sinks is None:
        return None
    if not isinstance(sinks, list) or not sinks or not all(isinstance(s, str) for s in sinks):
        raise BadRequest("sinks", "a non-empty list of sink names (or leave it out: every sink)")
    return list(dict.fromkeys(sinks))


async def replay_target(
    store: StoreBackend, event_id: str, body: Mapping[str, Any]
) -> tuple[EventView, list[str] | None]:
    """The event `replay_one` would deliver again and the sinks asked for; refuses as it would.

    NotFound for an event never stored, Conflict once it is pruned or when it has no
    delivery, BadRequest("sinks") for a sink it never had.
    """
    sinks = _sink_list(body)
    view = await store.get_event(event_id)
    if view is None:
        if await store.is_pruned(event_id):
            raise Conflict(
                f"event {event_id!r} was pruned (store.retention_days): nothing to replay"
            )
        raise NotFound(f"no event with id {event_id!r}")
    unknown = [sink for sink in sinks or () if sink not in view.deliveries]
    if unknown:
        known = ", ".join(sorted(view.deliveries)) or "none"
        raise BadRequest("sinks", f"no delivery of this event to {unknown[0]!r} (it has: {known})")
    if not view.deliveries:
        raise Conflict(f"event {event_id!r} ({view.state}) has no delivery to replay")
    return view, sinks


# The most an edited envelope may weigh, as the sinks receive it (compact UTF-8 JSON).
MAX_EDITED_ENVELOPE_BYTES = 1024 * 1024


def edited_envelope(value: object) -> dict[str, Any]:
    """A replay's edited `envelope` as the sinks will receive it (lone surrogates replaced
    by U+FFFD); BadRequest("envelope") unless a JSON object of at most 1 MiB encoded."""
    if not isinstance(value, dict):
        raise BadRequest("envelope", "a JSON object (the whole envelope the sinks receive)")
    try:
        envelope, encoded = sendable_envelope(value)
    except (TypeError, ValueError, RecursionError):
        raise BadRequest("envelope", "not a JSON document") from None
    if len(encoded) > MAX_EDITED_ENVELOPE_BYTES:
        raise BadRequest(
            "envelope", f"{len(encoded)} bytes encoded, over {MAX_EDITED_ENVELOPE_BYTES} (1 MiB)"
        )
    return envelope


async def replay_one(store: StoreBackend, event_id: str, body: Mapping[str, Any]) -> dict[str, Any]:
    """Deliver one event again, to `body["sinks"]` or every sink it had, sending
    `body["envelope"]` instead of the event's when given; 409 once it is pruned."""
    edited = None if "envelope" not in body else edited_envelope(body["envelope"])
    view, sinks = await replay_target(store, event_id, body)
    targets: list[str | None] = list(sinks) if sinks else [None]
    queued = 0
    for sink in targets:
        queued += await store.replay([event_id], sink=sink, edited_envelope=edited)
    return {"id": event_id, "queued": queued, "sinks": sinks or sorted(view.deliveries)}


async def replay_matching(
    store: StoreBackend, sink_names: Collection[str], body: Mapping[str, Any]
) -> dict[str, Any]:
    """Deliver again every dead delivery (of `body["sink"]`, one of `sink_names`); the count."""
    state = body.get("state", "dead")
    if state != "dead":
        raise BadRequest("state", 'only "dead" deliveries are replayed in bulk')
    sink = body.get("sink")
    if sink is not None and (not isinstance(sink, str) or sink not in sink_names):
        shown = ", ".join(sorted(sink_names)) or "none"
        raise BadRequest("sink", f"no sink by that name in the configuration (known: {shown})")
    queued = await store.replay(sink=sink, dead_only=True)
    return {"queued": queued, "state": state, "sink": sink}


# -- watches -------------------------------------------------------------------


def _job_id(value: object) -> str:
    if not isinstance(value, str) or not is_valid_job_id(value):
        raise BadRequest("job_id", "not a valid job id (letters, digits, _ and -; at most 128)")
    return value


async def list_watches(store: StoreBackend) -> dict[str, Any]:
    """Every watched job, active first: {"watches": [...]}, as `watch --list --json` prints;
    lone surrogates in metadata (a header or a JSON escape can carry one) shown as U+FFFD."""
    watches = [watch_document(w) for w in await store.list_watches()]
    return {"watches": replace_lone_surrogates(watches)}


async def add_watches(
    store: StoreBackend,
    job_ids: Sequence[object],
    metadata: object,
    *,
    interval_seconds: float,
    origin: str,
) -> list[dict[str, Any]]:
    """Watch jobs (again), polled every `interval_seconds` at first; metadata is merged
    into what each has and reaches every sink. BadRequest names a bad job id or metadata."""
    valid_ids = [_job_id(job_id) for job_id in job_ids]
    if not isinstance(metadata, dict):
        raise BadRequest("metadata", "a JSON object")
    await store.add_watches(
        valid_ids, metadata=metadata, origin=origin, interval_seconds=interval_seconds
    )
    documents = []
    for job_id in valid_ids:
        watch = await store.get_watch(job_id)
        if watch is None:  # removed by another client in between
            raise Conflict(f"job {job_id!r} was unwatched while it was being added")
        documents.append(watch_document(watch))
    return documents


async def add_watch(
    store: StoreBackend, body: Mapping[str, Any], *, interval_seconds: float
) -> dict[str, Any]:
    """Watch the job `body["job_id"]` (again) with `body["metadata"]`, as the API does."""
    (document,) = await add_watches(
        store,
        [body.get("job_id")],
        body.get("metadata", {}),
        interval_seconds=interval_seconds,
        origin="api",
    )
    return document


async def remove_watches(store: StoreBackend, job_ids: Sequence[str]) -> int:
    """Stop watching jobs; how many were watched. BadRequest names a malformed job id."""
    return await store.remove_watches([_job_id(job_id) for job_id in job_ids])


async def remove_watch(store: StoreBackend, job_id: str) -> None:
    """Stop watching a job; NotFound when it was not watched."""
    if await remove_watches(store, [job_id]) == 0:
        raise NotFound(f"job {job_id!r} is not watched")


# -- test events ---------------------------------------------------------------


def _event_type(value: object) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_FILTER_CHARS:
        raise BadRequest("type", f"a non-empty event type of at most {MAX_FILTER_CHARS} characters")
    return value


async def send_test(ctx: AdminContext, body: Mapping[str, Any]) -> dict[str, Any]:
    """Sign a test event with the configured secret and POST it to the relay's own ingress."""
    event_type = _event_type(body.get("type", "job.completed"))
    job_id = None if body.get("job_id") is None else _job_id(body.get("job_id"))
    try:
        event = build_test_event(ctx.settings, event_type=event_type, job_id=job_id)
    except ValueError as error:
        raise Conflict(str(error)) from None
    url = ctx.ingress_url()
    try:
        status, text = await post_test_event(url, event, is_own_listener=True)
    except (aiohttp.ClientError, OSError, TimeoutError) as error:
        raise Unavailable(f"cannot reach the ingress at {url}: {error}") from None
    try:
        answer: Any = json.loads(text)
    except ValueError:
        answer = text
    if status == 503:
        raise Unavailable(f"the ingress answered 503: {text}")
    if not 200 <= status < 300:
        raise Conflict(f"the ingress refused the test event: {status} {text}")
    return {"id": event.webhook_id, "status": status, "answer": answer}


# -- statistics ----------------------------------------------------------------


async def stats(ctx: AdminContext) -> dict[str, Any]:
    """Counts by state, the backlog per sink and its age, the version and the store backend."""
    events, deliveries = await ctx.store.state_counts()
    pending = await ctx.store.pending_counts()
    oldest = await ctx.store.oldest_pending_received_at()
    rates = rate_limited_sinks(ctx.settings.sinks)
    held_back = await ctx.store.due_counts(list(rates))
    return {
        "events": {state: events.get(state, 0) for state in EVENT_STATES},
        "deliveries": {state: deliveries.get(state, 0) for state in DELIVERY_STATES},
        "pending": {
            name: pending.get(name, 0)
            for name in sorted({sink.name for sink in ctx.settings.sinks} | set(pending))
        },
        "oldest_pending_seconds": None if oldest is None else max(0.0, ctx.clock() - oldest),
        # Rate-limited sinks: their limit and the due deliveries it holds back.
        "rate_limited": {
            name: {"rate_per_second": rate, "held_back": held_back.get(name, 0)}
            for name, rate in sorted(rates.items())
        },
        "version": ctx.version,
        "store_backend": ctx.store_backend,
    }
