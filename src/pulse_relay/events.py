"""Reading an incoming payload (type, job id, validity) and building the envelope sinks receive."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from pulse_relay import __version__
from pulse_relay.store import IngestRecord, text_problem
from pulse_relay.unencodable import without_lone_surrogates

TERMINAL_STATUSES = frozenset({"completed", "failed", "canceled", "cancelled", "expired"})
_JOB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,127}")
# Longer types are refused at ingest: a type travels into file names, the
# command's environment (a 200 KB one makes exec fail with E2BIG) and log lines.
MAX_EVENT_TYPE_CHARS = 128


def is_valid_job_id(job_id: str) -> bool:
    """True when the id is safe to put into a URL path and a file name."""
    return _JOB_ID.fullmatch(job_id) is not None


def says_terminal(event_type: str) -> bool:
    """True for event types that announce a finished job (completed, failed, cancelled...)."""
    return event_type.startswith("job.") and is_terminal(event_type.removeprefix("job."))


def is_terminal(status: str) -> bool:
    """True for a job status after which the job no longer changes."""
    return status in TERMINAL_STATUSES


@dataclass(frozen=True)
class ParsedEvent:
    """What the relay needs from a payload; `error` says why it cannot be delivered."""

    type: str | None
    job_id: str | None
    error: str | None = None

    @property
    def is_deliverable(self) -> bool:
        return self.error is None

    @property
    def job_key(self) -> str | None:
        """`{job_id}:{status}` for job events, so one status of one job is delivered once."""
        if self.job_id is None or self.type is None or not self.type.startswith("job."):
            return None
        status = self.type.removeprefix("job.")
        return f"{self.job_id}:{'canceled' if status == 'cancelled' else status}"


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


_JSON_KINDS = {
    "bool": "boolean",
    "int": "number",
    "float": "number",
    "list": "array",
    "dict": "object",
}


def _loads(body: bytes) -> Any:
    """json.loads of a body, by orjson when it can (on the request path: about half the time).

    orjson takes strict RFC 8259 UTF-8 only; what it refuses is read by json, which
    also takes what json always took (NaN, UTF-16, a BOM). An integer beyond 64 bits is
    read by orjson as a float: nothing here reads a number from the payload."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return json.loads(body)


def parse_event(body: bytes) -> ParsedEvent:
    """Read type and job id from a raw body; never raises."""
    try:
        payload = _loads(body)
    except (UnicodeDecodeError, ValueError, RecursionError):
        return ParsedEvent(None, None, "body is not valid JSON")
    if not isinstance(payload, dict):
        return ParsedEvent(None, None, "body is not a JSON object")
    event_type = _text(payload.get("type")) or _text(payload.get("event"))
    if event_type is None:
        return ParsedEvent(None, None, "payload has no event type ('type' or 'event')")
    if len(event_type) > MAX_EVENT_TYPE_CHARS:
        return ParsedEvent(
            None,
            None,
            f"event type is {len(event_type)} characters long (at most {MAX_EVENT_TYPE_CHARS})",
        )
    # A `\ud800` escape is valid JSON, but what it decodes to is no text a store,
    # a file name or a log line can hold: the payload is kept (as bytes), never delivered.
    problem = text_problem(event_type)
    if problem is not None:
        return ParsedEvent(None, None, f"event type {problem}")
    data = payload.get("data")
    data = data if isinstance(data, dict) else {}
    raw_job_id = data.get("job_id", payload.get("job_id", data.get("id")))
    if raw_job_id is None:
        return ParsedEvent(event_type, None)
    if not isinstance(raw_job_id, str):
        # Only a string's text is shown: orjson reads an integer beyond 64 bits as a float,
        # so a number's text would depend on which parser read the body.
        kind = type(raw_job_id).__name__
        return ParsedEvent(event_type, None, f"job id is a JSON {_JSON_KINDS[kind]}, not a string")
    if not is_valid_job_id(raw_job_id):
        shown = json.dumps(raw_job_id)[:80]
        return ParsedEvent(event_type, None, f"job id {shown} is not a valid job id")
    return ParsedEvent(event_type, raw_job_id)


def ingest_record(
    *,
    event_id: str,
    received_at: float,
    source: str,
    headers: dict[str, str],
    body: bytes,
    route: Callable[[str], Sequence[str]],
    fetch_on: frozenset[str],
    client_address: str | None = None,
    body_digest: str | None = None,
) -> IngestRecord:
    """What the store keeps for a received body (a webhook's or a poll's): parsed and routed.

    `body_digest` is the verifier's second dedupe key, for a body signed alone."""
    parsed = parse_event(body)
    sinks: Sequence[str] = ()
    if parsed.is_deliverable and parsed.type is not None:
        sinks = route(parsed.type)
    return IngestRecord(
        event_id=event_id,
        received_at=received_at,
        source=source,
        headers=headers,
        body=body,
        event_type=parsed.type,
        job_id=parsed.job_id,
        job_key=parsed.job_key,
        error=parsed.error,
        sinks=sinks,
        needs_fetch=parsed.type in fetch_on and parsed.job_id is not None,
        client_address=client_address,
        body_digest=body_digest,
    )


def format_timestamp(unix_seconds: float) -> str:
    """RFC 3339 UTC with microseconds, as the envelope's `received_at`."""
    moment = datetime.fromtimestamp(unix_seconds, tz=UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def envelope_source(source: str, *, is_replay: bool) -> str:
    """The envelope's `source`: "replay" for a replayed delivery, else where the event came from."""
    return "replay" if is_replay else source


def build_envelope(
    *,
    event_id: str,
    event_type: str,
    job_id: str | None,
    received_at: float,
    source: str,
    body: bytes,
    job: dict[str, Any] | None,
    result_url: str | None,
    metadata: dict[str, Any] | None,
) -> dict[str, Any]:
    """The document every sink receives for one event (docs/envelope.md)."""
    try:
        original: Any = json.loads(body)
    except ValueError:
        original = None
    return {
        "id": event_id,
        "type": event_type,
        "job_id": job_id,
        "received_at": format_timestamp(received_at),
        "source": source,
        "event": original,
        "job": job,
        "relay": {"version": __version__, "result_url": result_url, "metadata": metadata or {}},
    }


def sendable_envelope(envelope: dict[str, Any]) -> tuple[dict[str, Any], bytes]:
    """The envelope as sinks receive it, and its exact bytes (compact UTF-8 JSON).

    Lone surrogates, from `\\ud800` escapes in a payload or a job, are replaced by
    U+FFFD in both; an envelope without any is returned as it is."""
    text = json.dumps(envelope, ensure_ascii=False, separators=(",", ":"))
    try:
        return envelope, text.encode()
    except UnicodeEncodeError:
        text = without_lone_surrogates(text)
        replaced: dict[str, Any] = json.loads(text)
        return replaced, text.encode()
