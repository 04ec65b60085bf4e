"""Reading an incoming payload (type, job id, validity) and the envelope sinks receive."""

from __future__ import annotations

import json
from typing import Any
from unittest import mock

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from pulse_relay import __version__, events
from pulse_relay.events import (
    ParsedEvent,
    build_envelope,
    format_timestamp,
    is_terminal,
    is_valid_job_id,
    parse_event,
    says_terminal,
    sendable_envelope,
)


def payload(document: Any) -> bytes:
    return json.dumps(document).encode()


# -- statuses and job ids ----------------------------------------------------------


@pytest.mark.parametrize("status", ["completed", "failed", "canceled", "cancelled", "expired"])
def test_terminal_statuses(status: str) -> None:
    assert is_terminal(status)


@pytest.mark.parametrize("status", ["pending", "processing", "queued", "", "COMPLETED"])
def test_non_terminal_statuses(status: str) -> None:
    assert not is_terminal(status)


@pytest.mark.parametrize(
    ("event_type", "expected"),
    [
        ("job.completed", True),
        ("job.failed", True),
        ("job.cancelled", True),
        ("job.canceled", True),
        ("job.expired", True),
        ("job.created", False),
        ("job.processing", False),
        ("completed", False),
        ("credits.completed", False),
    ],
)
def test_says_terminal_needs_a_job_type_with_a_terminal_status(
    event_type: str, expected: bool
) -> None:
    assert says_terminal(event_type) is expected


@pytest.mark.parametrize(
    "job_id", ["a", "123e4567-e89b-12d3-a456-426614174000", "Job_1-x", "A" * 128]
)
def test_valid_job_ids(job_id: str) -> None:
    assert is_valid_job_id(job_id)


@pytest.mark.parametrize(
    "job_id",
    ["", "-abc", "_abc", "a/b", "../etc", "a.b", "a b", "A" * 129, "abc\n", "é", "a%2F"],
)
def test_invalid_job_ids(job_id: str) -> None:
    assert not is_valid_job_id(job_id)


# -- parse_event: type ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("document", "expected"),
    [
        ({"type": "job.completed", "event": "job.failed"}, "job.completed"),
        ({"event": "job.failed"}, "job.failed"),
        ({"type": "", "event": "job.failed"}, "job.failed"),
        ({"type": 7, "event": "job.failed"}, "job.failed"),
        ({"type": "credits.low_balance"}, "credits.low_balance"),
    ],
)
def test_type_is_read_from_type_else_event(document: dict[str, Any], expected: str) -> None:
    assert parse_event(payload(document)).type == expected


@pytest.mark.parametrize(
    "document", [{}, {"type": ""}, {"type": None, "event": ""}, {"event": ["job.completed"]}]
)
def test_payload_without_a_type_is_not_deliverable(document: dict[str, Any]) -> None:
    parsed = parse_event(payload(document))
    assert parsed == ParsedEvent(None, None, "payload has no event type ('type' or 'event')")
    assert not parsed.is_deliverable


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (b"not json", "body is not valid JSON"),
        (b"\xff\xfe", "body is not valid JSON"),
        (b"", "body is not valid JSON"),
        (b"[" * 100_000 + b"]" * 100_000, "body is not valid JSON"),
        (b"[1, 2]", "body is not a JSON object"),
        (b'"job.completed"', "body is not a JSON object"),
        (b"null", "body is not a JSON object"),
    ],
)
def test_unreadable_bodies_say_why(body: bytes, error: str) -> None:
    assert parse_event(body) == ParsedEvent(None, None, error)


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (b'{"type": "job.\\ud800", "job_id": "job-1"}', "is not valid Unicode text"),
        (b'{"type": "job.completed\\udfff", "job_id": "job-1"}', "is not valid Unicode text"),
        (b'{"type": "job.\\u0000", "job_id": "job-1"}', "holds a NUL character"),
    ],
)
def test_a_type_no_store_can_hold_makes_the_event_invalid(body: bytes, error: str) -> None:
    parsed = parse_event(body)
    assert (parsed.type, parsed.job_id, parsed.is_deliverable) == (None, None, False)
    assert parsed.error is not None and parsed.error.startswith(f"event type {error}")
    # The reason is answered and logged: it must be text itself.
    assert parsed.error.encode()


@pytest.mark.parametrize(
    "body",
    [
        # What orjson refuses and json has always read: the same event either way.
        b'{"type": "job.completed", "job_id": "job-1", "score": NaN}',
        b'{"type": "job.completed", "job_id": "job-1", "n": 123456789012345678901234567890}',
        b'\xef\xbb\xbf{"type": "job.completed", "job_id": "job-1"}',
        '{"type": "job.completed", "job_id": "job-1"}'.encode("utf-16"),
        b'{"type": "job.completed", "job_id": "job-1", "text": "\\ud800"}',
    ],
)
def test_bodies_json_reads_are_read_alike(body: bytes) -> None:
    assert parse_event(body) == ParsedEvent("job.completed", "job-1")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda children: st.lists(children) | st.dictionaries(st.text(), children),
    max_leaves=20,
)


job_ids = st.sampled_from(["job-1", "job_2", "", "a.b"]) | json_values


@settings(max_examples=300, deadline=None)
# orjson reads an integer beyond 64 bits as a float, json as an int: found by this test.
@example(document={"type": "job.completed", "job_id": -9223372036854775809}, extra=None)
@given(
    document=st.fixed_dictionaries(
        {},
        optional={
            "type": st.sampled_from(["job.completed", ""]) | json_values,
            "event": json_values,
            "job_id": job_ids,
            "data": st.fixed_dictionaries({}, optional={"job_id": job_ids, "id": job_ids})
            | json_values,
        },
    ),
    extra=json_values,
)
def test_parse_event_reads_what_json_reads(document: dict[str, Any], extra: Any) -> None:
    body = json.dumps(document | {"extra": extra}).encode()

    with mock.patch.object(events, "_loads", json.loads):
        by_json = parse_event(body)

    assert parse_event(body) == by_json


@given(body=st.binary(max_size=64))
def test_parse_event_never_raises(body: bytes) -> None:
    parse_event(body)


# -- parse_event: job id ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("document", "expected"),
    [
        ({"data": {"job_id": "from-data", "id": "data-id"}, "job_id": "top"}, "from-data"),
        ({"data": {"id": "data-id"}, "job_id": "top"}, "top"),
        ({"data": {"id": "data-id"}}, "data-id"),
        ({"data": "not an object", "job_id": "top"}, "top"),
        ({"data": ["job-1"], "job_id": "top"}, "top"),
    ],
)
def test_job_id_is_data_job_id_else_job_id_else_data_id(
    document: dict[str, Any], expected: str
) -> None:
    parsed = parse_event(payload({"type": "job.completed", **document}))
    assert parsed == ParsedEvent("job.completed", expected)
    assert parsed.is_deliverable


def test_an_event_without_a_job_id_is_deliverable() -> None:
    parsed = parse_event(payload({"type": "credits.low_balance", "data": {"balance": 3}}))
    assert parsed == ParsedEvent("credits.low_balance", None)
    assert parsed.is_deliverable
    assert parsed.job_key is None


@pytest.mark.parametrize(
    ("job_id", "shown"),
    [
        ("../../etc/passwd", '"../../etc/passwd"'),
        ("", '""'),
        ("a b", '"a b"'),
    ],
)
def test_invalid_job_id_is_named_in_the_error(job_id: Any, shown: str) -> None:
    parsed = parse_event(payload({"type": "job.completed", "data": {"job_id": job_id}}))
    assert parsed == ParsedEvent("job.completed", None, f"job id {shown} is not a valid job id")
    assert not parsed.is_deliverable


@pytest.mark.parametrize(
    ("job_id", "kind"),
    [
        (42, "number"),
        (-9223372036854775809, "number"),
        (1.5, "number"),
        (["job-1"], "array"),
        ({"id": "job-1"}, "object"),
        (True, "boolean"),
    ],
)
def test_a_job_id_that_is_not_a_string_is_named_by_its_kind(job_id: Any, kind: str) -> None:
    parsed = parse_event(payload({"type": "job.completed", "data": {"job_id": job_id}}))
    assert parsed.error == f"job id is a JSON {kind}, not a string"
    assert not parsed.is_deliverable


def test_a_long_invalid_job_id_is_cut_in_the_error() -> None:
    parsed = parse_event(payload({"type": "job.completed", "data": {"job_id": "/" * 500}}))
    assert parsed.error == f"job id {json.dumps('/' * 500)[:80]} is not a valid job id"


@pytest.mark.parametrize(
    ("event_type", "job_key"),
    [
        ("job.completed", "job-1:completed"),
        ("job.failed", "job-1:failed"),
        ("job.canceled", "job-1:canceled"),
        ("job.cancelled", "job-1:canceled"),
        ("job.processing", "job-1:processing"),
        ("credits.low_balance", None),
    ],
)
def test_job_key_names_one_status_of_one_job(event_type: str, job_key: str | None) -> None:
    assert ParsedEvent(event_type, "job-1").job_key == job_key


# -- the envelope ---------------------------------------------------------------------


def envelope(**overrides: Any) -> dict[str, Any]:
    arguments: dict[str, Any] = {
        "event_id": "msg_1",
        "event_type": "job.completed",
        "job_id": "job-1",
        "received_at": 1_795_429_800.123456,
        "source": "webhook",
        "body": payload({"type": "job.completed", "data": {"job_id": "job-1"}}),
        "job": {"id": "job-1", "status": "completed"},
        "result_url": None,
        "metadata": None,
        **overrides,
    }
    return build_envelope(**arguments)


def test_envelope_has_the_documented_shape() -> None:
    built = envelope()
    assert list(built) == [
        "id",
        "type",
        "job_id",
        "received_at",
        "source",
        "event",
        "job",
        "relay",
    ]
    assert built == {
        "id": "msg_1",
        "type": "job.completed",
        "job_id": "job-1",
        "received_at": "2026-11-23T10:30:00.123456Z",
        "source": "webhook",
        "event": {"type": "job.completed", "data": {"job_id": "job-1"}},
        "job": {"id": "job-1", "status": "completed"},
        "relay": {"version": __version__, "result_url": None, "metadata": {}},
    }


def test_envelope_carries_result_url_metadata_and_a_null_job() -> None:
    built = envelope(
        source="poll", job=None, result_url="https://x.invalid/r", metadata={"user": "u-1"}
    )
    assert built["source"] == "poll"
    assert built["job"] is None
    assert built["relay"] == {
        "version": __version__,
        "result_url": "https://x.invalid/r",
        "metadata": {"user": "u-1"},
    }


def test_envelope_event_is_null_when_the_body_is_not_json() -> None:
    assert envelope(body=b"not json", job_id=None)["event"] is None


def test_received_at_is_rfc3339_utc_with_microseconds() -> None:
    assert format_timestamp(0) == "1970-01-01T00:00:00.000000Z"
    assert format_timestamp(1_795_429_800.5) == "2026-11-23T10:30:00.500000Z"


def test_encoded_envelope_is_compact_utf8_json() -> None:
    built = envelope(metadata={"name": "Zoë"})
    sent, encoded = sendable_envelope(built)
    assert sent is built
    assert json.loads(encoded) == built
    assert b", " not in encoded and b": " not in encoded
    assert '"name":"Zoë"'.encode() in encoded


def test_lone_surrogates_are_sent_as_replacement_characters() -> None:
    built = envelope(
        body=b'{"type": "job.completed", "note": "\\udfff"}',
        job={"status": "completed", "result": {"caf\ud800": ["\ud800\udc00", "😀"]}},
    )
    sent, encoded = sendable_envelope(built)
    assert json.loads(encoded) == sent
    assert sent["event"]["note"] == "\ufffd"
    # Two lone halves are two replacements, never joined into one character.
    assert sent["job"]["result"] == {"caf\ufffd": ["\ufffd\ufffd", "😀"]}
    assert {key: sent[key] for key in ("id", "type", "relay")} == {
        key: built[key] for key in ("id", "type", "relay")
    }
