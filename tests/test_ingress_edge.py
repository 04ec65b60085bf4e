"""The edge rules of docs/ingress.md at the ingress, with the real bytes over a real socket.

Each test here reproduces one finding of the hostile-input review (issue 13) with
a raw client, so framing, `Expect: 100-continue`, repeated headers, encodings and
disconnects reach the relay exactly as written.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.http_exceptions import BadHttpMessage, LineTooLong
from structlog.testing import capture_logs

from pulse_relay.app import Relay
from pulse_relay.ingress.protocol import MALFORMED, malformed_reason
from tests.helpers import OTHER_SECRET, StartRelay, make_body, run_cli, signed, wait_for
from tests.rawhttp import Answer, close, exchange, read_answer, request_bytes


async def metric(relay: Relay, outcome: str) -> float:
    value = relay.metrics.registry.get_sample_value(
        "pulse_relay_webhooks_total", {"outcome": outcome}
    )
    return value or 0.0


async def stored_ids(relay: Relay) -> list[str]:
    return [view.id for view in await relay.store.list_events(limit=1000)]


@pytest.fixture
def no_tracebacks(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Fail the test if anything (aiohttp, asyncio) logged an error or a traceback."""
    caplog.set_level(logging.DEBUG)
    yield
    loud = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert loud == [], [r.getMessage() for r in loud]


@pytest.fixture
async def relay(start_relay: StartRelay) -> Relay:
    return await start_relay(server={"max_body_bytes": 64 * 1024, "read_timeout_seconds": 60})


# --- Content-Encoding ------------------------------------------------------------------------


CORRUPT_BODIES = {
    "gzip": b"\x1f\x8b\x08\x00 this is not a gzip stream",
    "deflate": b"x\x9c not deflate either",
}


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
async def test_corrupt_compressed_body_is_415_without_decoding(
    relay: Relay, encoding: str, no_tracebacks: None
) -> None:
    body = CORRUPT_BODIES[encoding]
    headers = signed(body) | {"Content-Encoding": encoding}

    answer = await exchange(relay.port, request_bytes(body, headers))

    assert answer.status == 415
    assert answer.headers["content-type"].startswith("application/json")
    assert answer.document["status"] == "unsupported_encoding"
    assert await stored_ids(relay) == []
    assert await metric(relay, "unsupported_encoding") == 1


@pytest.mark.parametrize(
    "encoding", ["gzip", "deflate", "br", "zstd", "compress", "identity, gzip"]
)
async def test_any_content_encoding_but_identity_is_415(
    relay: Relay, encoding: str, no_tracebacks: None
) -> None:
    # Even a validly compressed and signed body: Svix never compresses, and the
    # signature covers the bytes sent, so nothing would be gained by decoding.
    body = make_body()
    compressed = gzip.compress(body) if encoding == "gzip" else zlib.compress(body)
    headers = signed(compressed) | {"Content-Encoding": encoding}

    answer = await exchange(relay.port, request_bytes(compressed, headers))

    assert (answer.status, answer.document["status"]) == (415, "unsupported_encoding")
    assert await stored_ids(relay) == []


async def test_identity_encoding_is_accepted(relay: Relay) -> None:
    body = make_body()
    headers = signed(body, webhook_id="msg_identity") | {"Content-Encoding": "identity"}

    answer = await exchange(relay.port, request_bytes(body, headers))

    assert (answer.status, answer.document) == (202, {"status": "accepted", "id": "msg_identity"})


# --- signatures --------------------------------------------------------------------------------


async def test_malformed_entry_beside_a_matching_one_is_accepted(relay: Relay) -> None:
    body = make_body()
    headers = signed(body, webhook_id="msg_multi")
    headers["webhook-signature"] = "v1,AAAA " + headers["webhook-signature"]

    answer = await exchange(relay.port, request_bytes(body, headers))

    assert answer.status == 202
    assert await stored_ids(relay) == ["msg_multi"]


async def test_two_webhook_id_headers_are_refused(relay: Relay) -> None:
    body = make_body()
    headers = list(signed(body, webhook_id="msg_first").items())
    headers.append(("webhook-id", "msg_second"))

    answer = await exchange(relay.port, request_bytes(body, headers))

    assert answer.status == 401
    assert answer.document["reason"] == "repeated webhook-id header"
    assert await stored_ids(relay) == []


@pytest.mark.parametrize("name", ["webhook-signature", "svix-id", "webhook-timestamp"])
async def test_any_repeated_signature_header_is_refused_even_with_equal_values(
    relay: Relay, name: str
) -> None:
    body = make_body()
    good = signed(body)
    value = good.get(name, "msg_x")
    headers = [*good.items(), (name, value)]
    if name not in good:
        headers.append((name, value))

    answer = await exchange(relay.port, request_bytes(body, headers))

    assert (answer.status, answer.document["reason"]) == (401, f"repeated {name} header")


async def test_repeated_hex_signature_header_is_refused(start_relay: StartRelay) -> None:
    relay = await start_relay(verify={"scheme": "hmac-sha256-hex", "secrets": ["hex-secret"]})
    body = make_body()
    headers = [("X-DocExtract-Signature", "0" * 64), ("x-docextract-signature", "1" * 64)]

    answer = await exchange(relay.port, request_bytes(body, headers))

    assert (answer.status, answer.document["reason"]) == (
        401,
        "repeated x-docextract-signature header",
    )


# --- Expect: 100-continue ----------------------------------------------------------------------


async def send_expecting(relay: Relay, headers: dict[str, str]) -> tuple[Answer, bool]:
    """Send headers with `Expect: 100-continue`; return the first answer and whether it is 100."""
    reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
    try:
        head = request_bytes(b"", headers | {"Expect": "100-continue"})
        writer.write(head)
        await writer.drain()
        first = await asyncio.wait_for(read_answer(reader), 30)
        return first, first.status == 100
    finally:
        await close(writer)


async def test_expect_continue_over_the_size_limit_is_413_without_continue(
    relay: Relay, no_tracebacks: None
) -> None:
    body = b"x" * (64 * 1024 + 1)
    headers = signed(body) | {"Content-Length": str(len(body))}

    answer, continued = await send_expecting(relay, headers)

    assert not continued
    assert (answer.status, answer.document["status"]) == (413, "too_large")
    assert answer.headers["connection"].lower() == "close"
    assert await metric(relay, "too_large") == 1


@pytest.mark.parametrize(
    "spoil",
    [
        lambda h: {k: v for k, v in h.items() if k != "webhook-signature"},
        lambda h: h | {"webhook-timestamp": "1"},
        lambda h: h | {"webhook-signature": "v1,garbage"},
    ],
    ids=["no signature", "stale timestamp", "no usable signature"],
)
async def test_expect_continue_with_failing_signature_headers_is_401_without_continue(
    relay: Relay, spoil: Any
) -> None:
    body = make_body()
    headers = spoil(signed(body)) | {"Content-Length": str(len(body))}

    answer, continued = await send_expecting(relay, headers)

    assert not continued
    assert (answer.status, answer.document["status"]) == (401, "unauthorized")


async def test_expect_continue_with_good_headers_continues_and_is_accepted(relay: Relay) -> None:
    body = make_body()
    headers = signed(body, webhook_id="msg_continue") | {
        "Expect": "100-continue",
        "Content-Length": str(len(body)),
    }
    reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
    try:
        writer.write(request_bytes(b"", headers))
        interim = await asyncio.wait_for(read_answer(reader), 30)
        writer.write(body)
        final = await asyncio.wait_for(read_answer(reader), 30)
    finally:
        await close(writer)

    assert interim.status == 100
    assert (final.status, final.document["status"]) == (202, "accepted")


async def test_an_unknown_expectation_is_417(relay: Relay) -> None:
    body = make_body()
    headers = signed(body) | {"Expect": "something-else"}

    answer = await exchange(relay.port, request_bytes(body, headers))

    assert (answer.status, answer.document["status"]) == (417, "expectation_failed")


# --- framing and disconnects -------------------------------------------------------------------


async def test_malformed_chunk_mid_body_is_400_at_once(relay: Relay, no_tracebacks: None) -> None:
    # The read timeout is 60 s: a 400 (not a 408) proves the relay did not wait for it.
    body = make_body()
    headers = signed(body) | {"Expect": "100-continue"}
    reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
    try:
        writer.write(request_bytes(b"", headers, chunked=True).removesuffix(b"0\r\n\r\n"))
        # 100 Continue: the relay has parsed the headers and now reads the body.
        assert (await asyncio.wait_for(read_answer(reader), 30)).status == 100
        writer.write(b"5\r\nhello\r\nZZ\r\nnot a chunk\r\n")
        answer = await asyncio.wait_for(read_answer(reader), 30)
    finally:
        await close(writer)

    assert answer.status == 400
    assert answer.document == {
        "status": "bad_request",
        "reason": "malformed request body framing",
        "id": answer.document["id"],
    }
    assert await metric(relay, "bad_request") == 1
    assert await stored_ids(relay) == []


@pytest.mark.parametrize(
    "raw",
    [
        b"POST /webhooks/pulse HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nZZ\r\n",
        b"POST /webhooks/pulse HTTP/1.1\r\nHost: x\r\nBad Header: y\r\nContent-Length: 0\r\n\r\n",
        b"POST /webhooks/pulse HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 a TLS hello to a plain port\r\n\r\n",
    ],
    ids=["bad chunk size", "space in header name", "two lengths", "tls to plain port"],
)
async def test_malformed_http_is_a_json_400_without_traceback(
    relay: Relay, raw: bytes, no_tracebacks: None
) -> None:
    with capture_logs() as logs:
        answer = await exchange(relay.port, raw)

    assert answer.status == 400
    assert answer.document == {"status": "bad_request", "reason": "malformed HTTP request"}
    assert await metric(relay, "bad_request") == 1
    assert [line["event"] for line in logs] == ["malformed request"]


async def test_an_oversized_header_is_a_json_400_naming_it_without_its_value(
    relay: Relay, no_tracebacks: None
) -> None:
    value = "secret-" + "v" * 9000
    answer = await exchange(relay.port, request_bytes(b"{}", {"X-Pulse-Relay-Meta-Note": value}))

    assert answer.status == 400
    assert answer.document == {
        "status": "bad_request",
        "reason": "header X-Pulse-Relay-Meta-Note is longer than 8190 bytes",
    }
    assert await metric(relay, "bad_request") == 1


VALUE_START = b"v" * 100 + b"..."


@pytest.mark.parametrize(
    ("error", "received", "reason"),
    [
        # aiohttp's C parser reports the value's start, its Python parser the line's.
        (LineTooLong(VALUE_START, 8190), b"GET / HTTP/1.1\r\nX-Big: " + b"v" * 9000, "X-Big"),
        (LineTooLong(b"X-Big: " + b"v" * 93 + b"...", 8190), b"\r\nX-Big: " + b"v" * 9000, "X-Big"),
        # The line's start came in an earlier read: nothing to name.
        (LineTooLong(VALUE_START, 8190), b"v" * 9000, None),
        (LineTooLong(b"HostX-" + b"n" * 94 + b"...", 8190), b"\r\nX-" + b"n" * 9000, None),
        (LineTooLong(b"GET /" + b"p" * 95 + b"...", 8190), b"GET /" + b"p" * 9000, None),
        (LineTooLong(VALUE_START, 8190), b"\r\nBad Name: " + b"v" * 9000, None),
    ],
    ids=["c parser", "python parser", "split read", "long name", "long path", "bad name"],
)
def test_the_reason_names_an_over_long_header_when_it_can(
    error: LineTooLong, received: bytes, reason: str | None
) -> None:
    expected = (
        "the request line or a header is longer than 8190 bytes"
        if reason is None
        else f"header {reason} is longer than 8190 bytes"
    )
    assert malformed_reason(error, received) == expected
    assert malformed_reason(BadHttpMessage("bad"), received) == MALFORMED


async def test_a_client_disconnecting_mid_body_is_logged_at_info(
    relay: Relay, no_tracebacks: None
) -> None:
    body = make_body()
    _, writer = await asyncio.open_connection("127.0.0.1", relay.port)
    with capture_logs() as logs:
        writer.write(request_bytes(body, signed(body))[:-10])
        await writer.drain()
        writer.transport.abort()
        await wait_for(lambda: any(line["event"] == "webhook rejected" for line in logs))

    rejected = [line for line in logs if line["event"] == "webhook rejected"]
    assert rejected[0]["log_level"] == "info"
    assert rejected[0]["reason"] == "client disconnected mid-body"
    assert await metric(relay, "disconnected") == 1
    # The relay goes on serving.
    body = make_body()
    assert (await exchange(relay.port, request_bytes(body, signed(body)))).status == 202


async def test_a_body_not_sent_in_time_is_408_counted_and_logged(
    start_relay: StartRelay,
) -> None:
    relay = await start_relay(server={"read_timeout_seconds": 0.5})
    body = make_body()
    reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
    try:
        with capture_logs() as logs:
            writer.write(request_bytes(body, signed(body))[:-10])
            await writer.drain()
            answer = await asyncio.wait_for(read_answer(reader), 30)
    finally:
        await close(writer)

    assert (answer.status, answer.document["status"]) == (408, "timeout")
    assert await metric(relay, "timeout") == 1
    assert [line["http_status"] for line in logs if line["event"] == "webhook rejected"] == [408]


async def test_a_flood_of_bad_signatures_writes_a_few_lines_and_one_count(
    relay: Relay,
) -> None:
    body = make_body()
    requests = 60
    with capture_logs() as logs:
        async with aiohttp.ClientSession() as session:
            for _ in range(requests):
                headers = signed(body, secret=OTHER_SECRET)
                async with session.post(relay.webhook_url, data=body, headers=headers) as answer:
                    assert answer.status == 401
        await wait_for(
            lambda: any(line["event"] == "similar log lines suppressed" for line in logs)
        )

    rejected = [line for line in logs if line["event"] == "webhook rejected"]
    suppressed = sum(
        line["suppressed"] for line in logs if line["event"] == "similar log lines suppressed"
    )
    assert 1 <= len(rejected) <= 10
    assert len(rejected) + suppressed == requests
    assert await metric(relay, "unauthorized") == requests


# --- who may call ------------------------------------------------------------------------------


async def test_a_source_outside_allow_from_is_403_before_its_body(
    start_relay: StartRelay,
) -> None:
    relay = await start_relay(server={"allow_from": ["192.0.2.0/24"]})
    body = make_body()

    answer, continued = await send_expecting(
        relay, signed(body) | {"Content-Length": str(len(body))}
    )

    assert not continued
    assert (answer.status, answer.document["status"]) == (403, "forbidden")
    assert "reason" not in answer.document
    assert await metric(relay, "forbidden") == 1
    async with (
        aiohttp.ClientSession() as session,
        session.get(relay.base_url + "/healthz") as health,
    ):
        assert health.status == 200


async def test_x_forwarded_for_is_believed_only_from_a_trusted_proxy(
    start_relay: StartRelay, tmp_path: Path
) -> None:
    relay = await start_relay(
        server={"allow_from": ["203.0.113.0/24"], "trusted_proxies": ["127.0.0.1"]}
    )
    body = make_body()
    # The client claims an allowed address; the trusted proxy appended the real one.
    forged = signed(body) | {"X-Forwarded-For": "203.0.113.9, 198.51.100.7"}
    assert (await exchange(relay.port, request_bytes(body, forged))).status == 403

    headers = signed(body, webhook_id="msg_proxied") | {"X-Forwarded-For": "203.0.113.9"}
    assert (await exchange(relay.port, request_bytes(body, headers))).status == 202
    view = await relay.store.get_event("msg_proxied")
    assert view is not None and view.client_address == "203.0.113.9"
    # The API and `show` give the same address.
    async with (
        aiohttp.ClientSession() as session,
        session.get(relay.admin_url + "/api/events/msg_proxied") as answer,
    ):
        assert (await answer.json())["client_address"] == "203.0.113.9"
    config = tmp_path / "relay.toml"
    config.write_text(f'[store]\npath = "{relay.settings.store.path}"\n')
    shown = await asyncio.to_thread(run_cli, "show", "msg_proxied", "--json", config=config)
    assert json.loads(shown.stdout)["client_address"] == "203.0.113.9"
    shown = await asyncio.to_thread(run_cli, "show", "msg_proxied", config=config)
    assert "client:      203.0.113.9" in shown.stdout


@pytest.mark.parametrize(
    ("trusted_proxies", "client"),
    [(["10.0.0.0/8"], "127.0.0.1"), (["127.0.0.0/8"], "2001:db8::7")],
    ids=["untrusted peer: its headers change nothing", "Forwarded preferred to X-Forwarded-For"],
)
async def test_the_stored_client_address(
    start_relay: StartRelay, trusted_proxies: list[str], client: str
) -> None:
    relay = await start_relay(server={"trusted_proxies": trusted_proxies})
    body = make_body()
    headers = signed(body, webhook_id="msg_client") | {
        "X-Forwarded-For": "203.0.113.9",
        "Forwarded": 'for="[2001:db8::7]:4711";proto=https',
    }

    assert (await exchange(relay.port, request_bytes(body, headers))).status == 202
    view = await relay.store.get_event("msg_client")
    assert view is not None and view.client_address == client


REQUIRED = {"X-Relay-Token": "token-only-svix-knows"}


@pytest.mark.parametrize(
    "extra",
    [{}, {"X-Relay-Token": "wrong"}, {"x-relay-token": "Token-only-svix-knows"}],
    ids=["missing", "wrong", "other case"],
)
async def test_a_missing_or_wrong_required_header_is_401_before_the_body(
    start_relay: StartRelay, extra: dict[str, str]
) -> None:
    relay = await start_relay(verify={"required_headers": REQUIRED})
    body = make_body()

    answer, continued = await send_expecting(
        relay, signed(body) | extra | {"Content-Length": str(len(body))}
    )

    assert not continued
    assert answer.status == 401
    assert answer.document["reason"] == "missing or wrong x-relay-token header"


async def test_the_required_header_lets_a_signed_webhook_in(start_relay: StartRelay) -> None:
    relay = await start_relay(verify={"required_headers": REQUIRED})
    body = make_body()
    headers = signed(body, webhook_id="msg_token") | {"x-relay-token": "token-only-svix-knows"}

    assert (await exchange(relay.port, request_bytes(body, headers))).status == 202
    async with (
        aiohttp.ClientSession() as session,
        session.get(relay.base_url + "/healthz") as health,
    ):
        assert health.status == 200


async def test_a_bug_not_input_still_answers_500_with_its_traceback(
    relay: Relay, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async def broken(record: object) -> str:
        raise RuntimeError("a bug in the relay")

    monkeypatch.setattr(relay.store, "ingest", broken)
    body = make_body()

    answer = await exchange(relay.port, request_bytes(body, signed(body)))

    assert answer.status == 500
    assert any(record.exc_info for record in caplog.records if record.levelno >= logging.ERROR)
