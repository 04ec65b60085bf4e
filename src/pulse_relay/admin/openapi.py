"""The OpenAPI 3.1 document of the admin listener, served at `/api/openapi.json`.

Declarative: the schemas describe the documents of `serialize.py` and `service.py`;
a test runs schemathesis against the served document (every answer must match).
"""

from __future__ import annotations

from typing import Any

from pulse_relay.store import DELIVERY_STATES
from pulse_relay.store.filters import (
    DEFAULT_LIMIT,
    EVENT_STATES,
    MAX_FILTER_CHARS,
    MAX_LIMIT,
    SOURCES,
)

JOB_ID_PATTERN = "^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _nullable(kind: str, **extra: Any) -> dict[str, Any]:
    return {"type": [kind, "null"], **extra}


def _object(required: list[str], **properties: Any) -> dict[str, Any]:
    return {"type": "object", "required": required, "properties": properties}


TIME = _nullable("string", format="date-time")
COUNTS = {"type": "object", "additionalProperties": {"type": "integer"}}

SCHEMAS: dict[str, Any] = {
    "Error": {
        **_object(
            ["error", "detail"],
            error={"type": "string", "examples": ["bad_request", "not_found"]},
            detail={"type": "string", "description": "For a 400, starts with the parameter."},
        ),
        "description": "Every error answer, the auth layer's included.",
    },
    "Delivery": _object(
        ["state", "attempts", "next_attempt_at", "last_error", "replay"],
        state={"enum": list(DELIVERY_STATES)},
        attempts={"type": "integer", "minimum": 0},
        next_attempt_at={**TIME, "description": "null while the job is being fetched"},
        last_error=_nullable("string"),
        replay={"type": "boolean"},
    ),
    "EventItem": {
        **_object(
            ["id", "received_at", "source", "type", "job_id", "state", "error"],
            id={"type": "string"},
            received_at={"type": "string", "format": "date-time"},
            source={"enum": list(SOURCES)},
            type=_nullable("string"),
            job_id=_nullable("string"),
            state={"enum": list(EVENT_STATES)},
            error=_nullable("string"),
            fetch=_object(["state", "error"], state={"type": "string"}, error=_nullable("string")),
            deliveries={"type": "object", "additionalProperties": _ref("Delivery")},
        ),
        "description": "One line of `pulse-relay events --json`.",
    },
    "Attempt": _object(
        ["sink", "attempt", "started_at", "duration_ms", "outcome", "edited"],
        sink={**_nullable("string"), "description": "null: the job fetch"},
        attempt={"type": "integer"},
        started_at={"type": "string", "format": "date-time"},
        duration_ms={"type": "number"},
        outcome={"type": "string"},
        status_code=_nullable("integer"),
        error=_nullable("string"),
        output_tail=_nullable("string"),
        edited={"type": "boolean", "description": "An attempt of an edited replay"},
        edited_envelope={**_nullable("object"), "description": "The envelope it sent, if edited"},
    ),
    "Event": {
        "description": "`pulse-relay show --json`, plus the envelope each sink received.",
        "allOf": [
            _ref("EventItem"),
            _object(
                ["client_address", "headers", "job", "result_url", "attempts", "envelopes"],
                client_address={
                    **_nullable("string"),
                    "description": "The sender's address, behind trusted proxies; null if unknown.",
                },
                headers={"type": "object", "additionalProperties": {"type": "string"}},
                payload={"description": "The body, when it is JSON."},
                payload_text={"type": "string", "description": "The body otherwise."},
                job={"description": "The fetched job, or null."},
                result_url=_nullable("string"),
                body_digest={
                    "type": "string",
                    "description": "sha256:<hex> of the body, where it is a second dedupe key "
                    "(a body signed alone); absent otherwise.",
                },
                attempts={"type": "array", "items": _ref("Attempt")},
                envelopes={"type": "object", "additionalProperties": {"type": "object"}},
            ),
        ],
    },
    "EventPage": _object(
        ["events", "next"],
        events={"type": "array", "items": _ref("EventItem")},
        next={**_nullable("string"), "description": "`before` for the next page"},
    ),
    "Watch": _object(
        ["job_id", "metadata", "origin", "state", "added_at", "polls"],
        job_id={"type": "string"},
        metadata={"type": "object"},
        origin={"type": "string"},
        state={"type": "string"},
        added_at={"type": "string", "format": "date-time"},
        next_poll_at=TIME,
        interval_seconds={"type": "number"},
        polls={"type": "integer"},
        last_status=_nullable("string"),
        last_error=_nullable("string"),
    ),
    "WatchList": _object(["watches"], watches={"type": "array", "items": _ref("Watch")}),
    "NewWatch": _object(
        ["job_id"],
        job_id={"type": "string", "pattern": JOB_ID_PATTERN},
        metadata={"type": "object", "description": "Reaches every sink in relay.metadata"},
    ),
    "ReplayOne": _object(
        [],
        sinks={"type": "array", "items": {"type": "string"}, "minItems": 1},
        envelope={
            "type": "object",
            "description": "Edit and replay: sent instead of the event's envelope, this once "
            "(at most 1 MiB encoded); the stored event never changes.",
        },
    ),
    "ReplayOneResult": _object(
        ["id", "queued", "sinks"],
        id={"type": "string"},
        queued={"type": "integer"},
        sinks={"type": "array", "items": {"type": "string"}},
    ),
    "ReplayMatching": _object(
        [], state={"const": "dead", "default": "dead"}, sink={"type": "string"}
    ),
    "ReplayMatchingResult": _object(
        ["queued", "state", "sink"],
        queued={"type": "integer"},
        state={"const": "dead"},
        sink=_nullable("string"),
    ),
    "SendTest": _object(
        [],
        type={"type": "string", "default": "job.completed", "maxLength": MAX_FILTER_CHARS},
        job_id={"type": "string", "pattern": JOB_ID_PATTERN},
    ),
    "SendTestResult": _object(
        ["id", "status", "answer"],
        id={"type": "string", "description": "The test event's webhook-id"},
        status={"type": "integer", "description": "What the ingress answered"},
        answer={"description": "The ingress's JSON answer"},
    ),
    "Stats": _object(
        [
            "events",
            "deliveries",
            "pending",
            "oldest_pending_seconds",
            "version",
            "store_backend",
            "rate_limited",
        ],
        events=COUNTS,
        deliveries=COUNTS,
        pending=COUNTS,
        oldest_pending_seconds=_nullable("number"),
        version={"type": "string"},
        store_backend={"type": "string"},
        rate_limited={
            "type": "object",
            "description": "Per rate-limited sink: its limit and the due deliveries it holds back",
            "additionalProperties": _object(
                ["rate_per_second", "held_back"],
                rate_per_second={"type": "number"},
                held_back={"type": "integer"},
            ),
        },
    ),
    "Health": _object(
        ["status"],
        status={"type": "string"},
        reasons={"type": "array", "items": {"type": "string"}},
    ),
}

ERROR_REASONS = {
    400: "A parameter or body field is invalid (named at the start of detail)",
    401: "The admin token is required",
    403: "A write without the token or X-Pulse-Relay: 1, or from another Origin",
    404: "Unknown",
    409: "Conflicts with the current state",
    413: "Body too large",
    503: "The store is unavailable; retry later",
}
WRITE_ERRORS = (400, 403, 413)


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*statuses: int) -> dict[str, Any]:
    # Any /api/ request may lack the token or find the store unavailable.
    every = sorted({*statuses, 401, 503})
    return {str(status): _json(_ref("Error"), ERROR_REASONS[status]) for status in every}


def _query(name: str, description: str, **schema: Any) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": description,
        "schema": {"type": "string", **schema},
    }


def _path(name: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}


def _body(schema_name: str) -> dict[str, Any]:
    return {"required": False, "content": {"application/json": {"schema": _ref(schema_name)}}}


def _operation(summary: str, answers: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"summary": summary, **extra, "responses": answers}


EVENT_FILTERS = [
    _query("type", "Event type, exactly", maxLength=MAX_FILTER_CHARS),
    _query(
        "state",
        "Event state, or a delivery state (some delivery in it)",
        enum=[*EVENT_STATES, *DELIVERY_STATES],
    ),
    _query("sink", "Only events with a delivery to this sink", maxLength=MAX_FILTER_CHARS),
    _query("job_id", "Job id, exactly", maxLength=MAX_FILTER_CHARS),
    _query("source", "Where the event came from", enum=list(SOURCES)),
    _query("q", "Text in the id, type, job id or body", maxLength=MAX_FILTER_CHARS),
    {
        "name": "limit",
        "in": "query",
        "required": False,
        "schema": {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": DEFAULT_LIMIT},
    },
    _query("before", "The `next` cursor of the previous page (opaque)"),
]
EXPORT_FILTERS = [
    *EVENT_FILTERS[:2],
    _query("since", "Received at or after: ISO 8601 (UTC if no offset) or Unix seconds"),
    _query("until", "Received at or before: ISO 8601 (UTC if no offset) or Unix seconds"),
]
LAST_EVENT_ID = {"name": "Last-Event-ID", "in": "header", "required": False, "schema": {}}
NO_TOKEN: list[dict[str, Any]] = []

PATHS: dict[str, Any] = {
    "/api/events": {
        "get": _operation(
            "Events, newest first",
            {"200": _json(_ref("EventPage"), "A page"), **_errors(400)},
            parameters=EVENT_FILTERS,
        )
    },
    "/api/events/{event_id}": {
        "get": _operation(
            "One event: headers, payload, job, envelopes, every attempt",
            {"200": _json(_ref("Event"), "The event"), **_errors(404)},
            parameters=[_path("event_id")],
        )
    },
    "/api/export": {
        "get": _operation(
            "Every event as NDJSON: one `pulse-relay show --json` document a line",
            {
                "200": {
                    "description": "The events, newest first, streamed; each line an `Event` "
                    "without `envelopes` (plus `body_digest` where it is a dedupe key)",
                    "content": {"application/x-ndjson": {}},
                },
                **_errors(400),
            },
            description="What `pulse-relay export` writes and `pulse-relay import` reads. "
            "A store failure after the first line cuts the connection before the body ends.",
            parameters=EXPORT_FILTERS,
        )
    },
    "/api/events/{event_id}/replay": {
        "post": _operation(
            "Deliver one event again (to some of its sinks)",
            {"202": _json(_ref("ReplayOneResult"), "Queued"), **_errors(*WRITE_ERRORS, 404, 409)},
            parameters=[_path("event_id")],
            requestBody=_body("ReplayOne"),
        )
    },
    "/api/replay": {
        "post": _operation(
            "Deliver again every dead delivery (of one sink)",
            {"202": _json(_ref("ReplayMatchingResult"), "Queued"), **_errors(*WRITE_ERRORS)},
            requestBody=_body("ReplayMatching"),
        )
    },
    "/api/watches": {
        "get": _operation(
            "Watched jobs (the polling fallback)",
            {"200": _json(_ref("WatchList"), "Every watch"), **_errors()},
        ),
        "post": _operation(
            "Watch a job; its metadata travels in the envelopes",
            {"201": _json(_ref("Watch"), "Watched"), **_errors(*WRITE_ERRORS, 409)},
            requestBody=_body("NewWatch"),
        ),
    },
    "/api/watches/{job_id}": {
        "delete": _operation(
            "Stop watching a job",
            {"204": {"description": "Removed"}, **_errors(*WRITE_ERRORS, 404)},
            parameters=[_path("job_id")],
        )
    },
    "/api/send-test": {
        "post": _operation(
            "Sign a test event and POST it through the real ingress",
            {"202": _json(_ref("SendTestResult"), "Accepted"), **_errors(*WRITE_ERRORS, 409)},
            requestBody=_body("SendTest"),
        )
    },
    "/api/stats": {
        "get": _operation(
            "Counts by state, backlog per sink, oldest pending age, version",
            {"200": _json(_ref("Stats"), "Statistics"), **_errors()},
        )
    },
    "/api/stream": {
        "get": _operation(
            "Server-Sent Events: `event` (a list item) and `delivery` (an attempt's outcome)",
            {
                "200": {"description": "The stream", "content": {"text/event-stream": {}}},
                **_errors(),
            },
            description="Each message's id is an increasing sequence; a reconnect with "
            "Last-Event-ID first receives what changed since (or `event: resync`).",
            parameters=[LAST_EVENT_ID],
        )
    },
    "/api/openapi.json": {
        "get": _operation(
            "This document",
            {"200": {"description": "OpenAPI 3.1", "content": {"application/json": {}}}},
        )
    },
    "/healthz": {
        "get": _operation(
            "Liveness (no token)", {"200": _json(_ref("Health"), "Alive")}, security=NO_TOKEN
        )
    },
    "/readyz": {
        "get": _operation(
            "Readiness, probed at most once a second (no token)",
            {
                "200": _json(_ref("Health"), "Ready"),
                "503": _json(_ref("Health"), "Not ready, with reasons"),
            },
            security=NO_TOKEN,
        )
    },
    "/metrics": {
        "get": _operation(
            "Prometheus metrics (no token)",
            {"200": {"description": "Text exposition", "content": {"text/plain": {}}}},
            security=NO_TOKEN,
        )
    },
}


def openapi_document(version: str) -> dict[str, Any]:
    """The whole document for this version of the relay."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "pulse-relay admin API",
            "version": version,
            "description": "The admin listener of pulse-relay. With admin.token set, send "
            "`Authorization: Bearer <token>`. A POST or DELETE needs the token or the header "
            "`X-Pulse-Relay: 1`, and an Origin, when sent, must be this listener's own.",
        },
        "paths": PATHS,
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        # Open when no token is configured: either alternative is valid.
        "security": [{}, {"bearer": []}],
    }
