"""What the pass-through reads from a request (proxy/capture.py) and how it keeps watches."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
import structlog
from multidict import CIMultiDict

from pulse_relay.metrics import Metrics
from pulse_relay.proxy.answer import decode_json, job_ids_in
from pulse_relay.proxy.autowatch import WatchRecorder
from pulse_relay.proxy.capture import (
    CAPTURED_BODY_MAX_BYTES,
    FIELD_MAX_BYTES,
    META_HEADERS_MAX_BYTES,
    MetadataHeaderError,
    RequestCapture,
    metadata_from_headers,
)
from pulse_relay.proxy.headers import forward_headers
from pulse_relay.store import SQLiteStore, StoreUnavailableError
from tests.helpers import wait_for

BOUNDARY = "b0undary"


def multipart(*parts: tuple[dict[str, str], bytes]) -> bytes:
    """A multipart/form-data body from (headers, content) pairs."""
    body = b""
    for headers, content in parts:
        body += f"--{BOUNDARY}\r\n".encode()
        for name, value in headers.items():
            body += f"{name}: {value}\r\n".encode()
        body += b"\r\n" + content + b"\r\n"
    return body + f"--{BOUNDARY}--\r\n".encode()


def field_part(
    name: str, value: bytes, content_type: str | None = None
) -> tuple[dict[str, str], bytes]:
    headers = {"Content-Disposition": f'form-data; name="{name}"'}
    if content_type is not None:
        headers["Content-Type"] = content_type
    return headers, value


def file_part(name: str, filename: str, content: bytes) -> tuple[dict[str, str], bytes]:
    disposition = f'form-data; name="{name}"; filename="{filename}"'
    return {"Content-Disposition": disposition, "Content-Type": "application/pdf"}, content


def capture(
    content_type: str | None, body: bytes, *, chunk_bytes: int = 7, **kwargs: Any
) -> RequestCapture:
    """Feed `body` in small chunks, as the forwarded stream would."""
    captured = RequestCapture(content_type, **kwargs)
    for start in range(0, len(body), chunk_bytes):
        captured.feed(body[start : start + chunk_bytes])
    captured.finish()
    return captured


# -- request bodies --------------------------------------------------------------------


def test_multipart_fields_are_kept_and_files_only_hashed_across_chunk_boundaries() -> None:
    document = bytes(range(256)) * 40 + b"\r\n--not-the-boundary\r\n"
    body = multipart(
        field_part("fileUrl", b"https://example.com/a.pdf"),
        field_part("pages", b"1-2"),
        field_part("extensions", b'{"chunking": {"chunkSize": 500}}', "application/json"),
        field_part("broken", b"{not json", "application/json"),
        field_part("tag", b"one"),
        field_part("tag", b"two"),
        file_part("file", "r\u00e9sum\u00e9.pdf", document),
    )

    captured = capture(f"multipart/form-data; boundary={BOUNDARY}", body)

    assert captured.problem is None
    assert captured.fields == {
        "fileUrl": "https://example.com/a.pdf",
        "pages": "1-2",
        "extensions": {"chunking": {"chunkSize": 500}},
        "broken": "{not json",
        "tag": ["one", "two"],
    }
    assert captured.document()["files"] == [
        {
            "field": "file",
            "filename": "r\u00e9sum\u00e9.pdf",
            "size_bytes": len(document),
            "sha256": hashlib.sha256(document).hexdigest(),
        }
    ]


def test_a_field_too_long_to_carry_is_its_size_and_hash() -> None:
    long_value = b"s" * (FIELD_MAX_BYTES + 1)
    body = multipart(field_part("schema", long_value), field_part("third", b"x"))
    json_body = json.dumps({"schema": "s" * FIELD_MAX_BYTES, "pages": "1"}).encode()

    from_multipart = capture(f"multipart/form-data; boundary={BOUNDARY}", body, chunk_bytes=4096)
    from_json = capture("application/json", json_body, chunk_bytes=4096)

    assert from_multipart.fields["schema"] == {
        "size_bytes": len(long_value),
        "sha256": hashlib.sha256(long_value).hexdigest(),
    }
    assert from_multipart.fields["third"] == "x"
    encoded = json.dumps("s" * FIELD_MAX_BYTES).encode()
    assert from_json.fields == {
        "schema": {"size_bytes": len(encoded), "sha256": hashlib.sha256(encoded).hexdigest()},
        "pages": "1",
    }


@pytest.mark.parametrize(
    ("content_type", "body", "fields"),
    [
        ("application/json", b'{"file_url": "u", "async": true}', {"file_url": "u", "async": True}),
        ("application/json; charset=utf-8", b"", {}),
        (
            "application/x-www-form-urlencoded",
            b"fileUrl=u%20v&a=1&a=2",
            {"fileUrl": "u v", "a": ["1", "2"]},
        ),
        ("application/octet-stream", b"\x00\x01", {}),
        (None, b"anything", {}),
    ],
)
def test_json_and_urlencoded_fields(
    content_type: str | None, body: bytes, fields: dict[str, Any]
) -> None:
    captured = capture(content_type, body)
    assert captured.fields == fields
    assert captured.problem is None
    assert captured.files == []


@pytest.mark.parametrize(
    ("content_type", "body", "problem"),
    [
        ("application/json", b"[1, 2]", "the JSON body is not an object"),
        ("application/json", b"{oops", "the body is not valid JSON"),
        ("application/json", b" " * (CAPTURED_BODY_MAX_BYTES + 1), "fields not read"),
        (
            f"multipart/form-data; boundary={BOUNDARY}",
            b"garbage before any boundary",
            "unreadable multipart",
        ),
    ],
)
def test_unreadable_bodies_are_noted_not_refused(
    content_type: str, body: bytes, problem: str
) -> None:
    captured = capture(content_type, body, chunk_bytes=65536)
    assert captured.problem is not None
    assert problem in captured.problem
    assert captured.document()["capture_problem"] == captured.problem


def test_a_compressed_request_body_is_not_parsed() -> None:
    captured = capture("application/json", b"\x1f\x8b...", content_encoding="gzip")
    assert captured.fields == {}
    assert captured.problem == "the body is gzip-encoded; its fields were not read"


# -- metadata headers -------------------------------------------------------------------


def test_metadata_headers_become_keys() -> None:
    headers = CIMultiDict(
        [
            ("x-api-key", "k"),
            ("X-Pulse-Relay-Meta-User-Id", "42"),
            ("x-pulse-relay-meta-TAG", "a"),
            ("X-Pulse-Relay-Meta-Tag", "b"),
        ]
    )
    assert metadata_from_headers(headers) == {"user_id": "42", "tag": "a, b"}


@pytest.mark.parametrize(
    ("headers", "named", "reason"),
    [
        ([("X-Pulse-Relay-Meta-", "v")], "X-Pulse-Relay-Meta-", "names no key"),
        ([("X-Pulse-Relay-Meta-Bad", "\udcff")], "X-Pulse-Relay-Meta-Bad", "not UTF-8"),
        (
            [("X-Pulse-Relay-Meta-A", "a" * 5000), ("X-Pulse-Relay-Meta-B", "b" * 5000)],
            "X-Pulse-Relay-Meta-B",
            f"more than {META_HEADERS_MAX_BYTES} bytes",
        ),
    ],
)
def test_refused_metadata_headers_are_named(
    headers: list[tuple[str, str]], named: str, reason: str
) -> None:
    with pytest.raises(MetadataHeaderError) as refused:
        metadata_from_headers(CIMultiDict(headers))
    assert refused.value.header == named
    assert reason in refused.value.reason


def test_forwarded_headers_keep_repeats_and_drop_hop_by_hop_ones() -> None:
    headers = CIMultiDict(
        [
            ("Host", "relay:8788"),
            ("Transfer-Encoding", "chunked"),
            ("TE", "trailers"),
            ("Expect", "100-continue"),
            ("Proxy-Authorization", "Basic x"),
            ("X-Forwarded-For", "10.0.0.1"),
            ("X-Forwarded-For", "10.0.0.2"),
            ("X-Pulse-Relay-Meta-User", "u"),
            ("Accept-Encoding", "br"),
        ]
    )
    forwarded = forward_headers(headers)
    assert list(forwarded.items()) == [
        ("X-Forwarded-For", "10.0.0.1"),
        ("X-Forwarded-For", "10.0.0.2"),
        ("Accept-Encoding", "identity"),
    ]


# -- reading answers --------------------------------------------------------------------


def test_job_ids_are_read_from_plain_and_compressed_answers() -> None:
    import gzip
    import zlib

    document = {"job_id": "job-1", "batch_job_id": "batch-1"}
    raw = json.dumps(document).encode()
    raw_deflate = zlib.compressobj(wbits=-15)
    deflated = raw_deflate.compress(raw) + raw_deflate.flush()

    assert decode_json(raw, None) == document
    assert decode_json(gzip.compress(raw), "gzip") == document
    assert decode_json(zlib.compress(raw), "deflate") == document
    assert decode_json(deflated, "deflate") == document
    assert decode_json(raw, "br") is None
    assert decode_json(b"\x00garbage", "gzip") is None
    assert job_ids_in(document) == ["job-1", "batch-1"]
    assert job_ids_in({"job_id": "same", "batch_job_id": "same"}) == ["same"]
    assert job_ids_in({"tables_id": "tables-1", "status": "pending"}) == ["tables-1"]
    assert job_ids_in({"job_id": "same", "tables_id": "same"}) == ["same"]
    assert job_ids_in({"job_id": 12}) == []
    assert job_ids_in(["job_id"]) == []


# -- the watch recorder -----------------------------------------------------------------


class _FlakyStore:
    """add_watches refuses while `is_down`; records what it took."""

    def __init__(self) -> None:
        self.is_down = True
        self.added: list[tuple[tuple[str, ...], dict[str, Any], str]] = []

    async def add_watches(
        self, job_ids: Any, *, metadata: dict[str, Any], origin: str, interval_seconds: float
    ) -> None:
        if self.is_down:
            raise StoreUnavailableError("database is locked")
        self.added.append((tuple(job_ids), metadata, origin))


async def test_recorder_retries_in_order_and_bounds_its_queue() -> None:
    store = _FlakyStore()
    woken: list[int] = []
    recorder = WatchRecorder(
        store,  # type: ignore[arg-type]
        metrics=Metrics(),
        interval_seconds=lambda: 1.0,
        on_recorded=lambda: woken.append(1),
        retry_initial_seconds=0.01,
        retry_max_seconds=0.05,
        max_pending=2,
    )
    recorder.start()
    try:
        with structlog.testing.capture_logs() as logs:
            for job_id in ("a", "b", "c"):
                assert not await recorder.record([job_id], {"n": job_id})
        assert recorder.pending == 2
        assert any(
            e["event"].startswith("too many unrecorded") and e["job_ids"] == ["a"] for e in logs
        )
        store.is_down = False
        await wait_for(lambda: recorder.pending == 0)
        assert await recorder.record(["d"], {})
    finally:
        await recorder.stop()
    assert [added[0] for added in store.added] == [("b",), ("c",), ("d",)]
    assert {added[2] for added in store.added} == {"proxy"}
    assert len(woken) == 3


async def test_recorder_names_what_it_never_recorded_when_stopped(tmp_path: Path) -> None:
    store = _FlakyStore()
    recorder = WatchRecorder(
        store,  # type: ignore[arg-type]
        metrics=Metrics(),
        interval_seconds=lambda: 1.0,
        on_recorded=lambda: None,
        retry_initial_seconds=60.0,
    )
    recorder.start()
    await recorder.record(["lost-1"], {})
    with structlog.testing.capture_logs() as logs:
        await recorder.stop()
    assert [e["job_ids"] for e in logs if e["log_level"] == "error"] == [["lost-1"]]


async def test_recorder_with_a_real_store_merges_metadata(tmp_path: Path) -> None:
    async with SQLiteStore(tmp_path / "relay.db") as store:
        recorder = WatchRecorder(
            store, metrics=Metrics(), interval_seconds=lambda: 2.0, on_recorded=lambda: None
        )
        assert await recorder.record(["job-1"], {"user_id": "u"})
        (watch,) = await store.list_watches()
    assert (watch.job_id, watch.metadata, watch.origin) == ("job-1", {"user_id": "u"}, "proxy")
    assert watch.interval_seconds == 2.0
