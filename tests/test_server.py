"""The ingress against a real relay on 127.0.0.1: every row of docs/ingress.md's status codes."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from standardwebhooks.webhooks import Webhook

from pulse_relay.app import Relay
from pulse_relay.ingress.signature import hex_signature
from tests.helpers import (
    HOSTILE_BODY,
    OTHER_SECRET,
    SECRET,
    UNAUTHORIZED_CASES,
    MakeSettings,
    StartRelay,
    make_body,
    signed,
    wait_for,
)


async def post(
    relay: Relay, body: bytes | Any, headers: dict[str, str]
) -> tuple[int, dict[str, Any]]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(relay.webhook_url, data=body, headers=headers) as response,
    ):
        text = await response.text()
        try:
            document = json.loads(text)
        except ValueError:
            document = {"text": text}
        return response.status, document


async def stored_ids(relay: Relay) -> list[str]:
    return [view.id for view in await relay.store.list_events(limit=1000)]


@pytest.fixture
async def relay(start_relay: StartRelay, tmp_path: Path) -> Relay:
    sinks = [{"type": "file", "name": "files", "directory": str(tmp_path / "out")}]
    return await start_relay(sinks=sinks)


async def test_signed_event_is_accepted_and_stored(relay: Relay) -> None:
    body = make_body()
    headers = signed(body, webhook_id="msg_one")
    status, document = await post(relay, body, headers)
    assert (status, document) == (202, {"status": "accepted", "id": "msg_one"})
    view = await relay.store.get_event("msg_one")
    assert view is not None
    assert view.body == body
    assert (view.type, view.job_id, view.state) == ("job.completed", "job-1", "accepted")
    assert view.deliveries["files"]["state"] == "pending"
    assert "webhook-signature" not in (view.headers or {})


async def test_duplicate_is_answered_200_and_stored_once(relay: Relay) -> None:
    body = make_body()
    headers = signed(body, webhook_id="msg_dup")
    assert (await post(relay, body, headers))[0] == 202
    status, document = await post(relay, body, headers)
    assert (status, document) == (200, {"status": "duplicate", "id": "msg_dup"})
    assert await stored_ids(relay) == ["msg_dup"]


async def test_request_signed_by_standardwebhooks_library_is_accepted(relay: Relay) -> None:
    body = make_body()
    now = datetime.now(tz=UTC)
    signature = Webhook(SECRET).sign("msg_lib", now, body.decode())
    headers = {
        "webhook-id": "msg_lib",
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": signature,
    }
    assert (await post(relay, body, headers))[0] == 202


async def test_svix_prefixed_headers_are_accepted(relay: Relay) -> None:
    body = make_body()
    headers = {k.replace("webhook-", "svix-"): v for k, v in signed(body).items()}
    assert (await post(relay, body, headers))[0] == 202


@pytest.mark.parametrize("case", sorted(UNAUTHORIZED_CASES))
async def test_hostile_request_is_unauthorized(relay: Relay, case: str) -> None:
    body, headers = UNAUTHORIZED_CASES[case](signed(HOSTILE_BODY, webhook_id="msg_h"))
    status, document = await post(relay, body, headers)
    assert status == 401, case
    assert document["status"] == "unauthorized"
    assert document["reason"]
    assert await stored_ids(relay) == []
    # The same id, genuinely signed, still goes through afterwards.
    assert (await post(relay, HOSTILE_BODY, signed(HOSTILE_BODY, webhook_id="msg_h")))[0] == 202


# The relay's clock stands still at this moment, so the window's edges are exact however
# long the machine takes between signing and checking.
SIGNED_AT = 1_700_000_000


@pytest.mark.parametrize("offset_seconds", [-301, 301, -86400])
async def test_timestamp_outside_tolerance_is_unauthorized(
    start_relay: StartRelay, offset_seconds: int
) -> None:
    relay = await start_relay(clock=lambda: SIGNED_AT)
    headers = signed(HOSTILE_BODY, timestamp=SIGNED_AT + offset_seconds)
    status, document = await post(relay, HOSTILE_BODY, headers)
    assert (status, document["reason"]) == (401, "timestamp outside tolerance")


@pytest.mark.parametrize("offset_seconds", [-300, 300])
async def test_timestamp_at_the_edge_of_tolerance_is_accepted(
    start_relay: StartRelay, offset_seconds: int
) -> None:
    relay = await start_relay(clock=lambda: SIGNED_AT)
    headers = signed(HOSTILE_BODY, timestamp=SIGNED_AT + offset_seconds)
    assert (await post(relay, HOSTILE_BODY, headers))[0] == 202


async def test_non_json_body_with_valid_signature_is_stored_as_invalid(relay: Relay) -> None:
    for webhook_id, body in [
        ("msg_text", b"not json at all"),
        ("msg_bytes", b"\xff\xfe\x00binary"),
        ("msg_array", b"[1, 2, 3]"),
        ("msg_notype", b'{"data": {"job_id": "x"}}'),
    ]:
        status, document = await post(relay, body, signed(body, webhook_id=webhook_id))
        assert (status, document["status"], document["id"]) == (200, "invalid", webhook_id)
        view = await relay.store.get_event(webhook_id)
        assert view is not None
        assert (view.state, view.body, view.deliveries) == ("invalid", body, {})


async def test_bad_job_id_is_stored_but_never_delivered(relay: Relay) -> None:
    body = make_body(job_id="../../etc/passwd")
    status, document = await post(relay, body, signed(body, webhook_id="msg_badjob"))
    assert (status, document["status"]) == (200, "invalid")
    assert "job id" in document["reason"]
    view = await relay.store.get_event("msg_badjob")
    assert view is not None and view.deliveries == {} and view.job_id is None


async def test_an_event_type_over_128_characters_is_invalid_and_reaches_no_sink(
    relay: Relay,
) -> None:
    longest = "job." + "é" * 124  # 128 code points, more bytes
    body = make_body(longest, job_id="job-longest")
    status, document = await post(relay, body, signed(body, webhook_id="msg_longest"))
    assert (status, document["status"]) == (202, "accepted")
    for webhook_id, event_type in [("msg_long", "job." + "x" * 125), ("msg_huge", "x" * 200_000)]:
        body = make_body(event_type)
        status, document = await post(relay, body, signed(body, webhook_id=webhook_id))
        assert (status, document["status"]) == (200, "invalid")
        assert document["reason"] == (
            f"event type is {len(event_type)} characters long (at most 128)"
        )
        view = await relay.store.get_event(webhook_id)
        assert view is not None
        assert (view.state, view.type, view.deliveries, view.body) == ("invalid", None, {}, body)


async def test_oversized_body_is_refused_with_413(start_relay: StartRelay) -> None:
    relay = await start_relay(server={"max_body_bytes": 1000})
    body = b"x" * 1001
    status, _ = await post(relay, body, signed(body))
    assert status == 413
    assert await stored_ids(relay) == []


async def test_oversized_chunked_body_is_refused_before_it_is_read(
    start_relay: StartRelay,
) -> None:
    relay = await start_relay(server={"max_body_bytes": 64 * 1024})
    sent = 0

    async def endless() -> AsyncIterator[bytes]:
        nonlocal sent
        # Far more than the limit: the relay must answer before reading it all.
        for _ in range(10_000):
            sent += 16 * 1024
            yield b"y" * (16 * 1024)

    headers = signed(b"irrelevant")
    try:
        status, _ = await post(relay, endless(), headers)
    except aiohttp.ClientError:
        status = 413  # the relay may close the connection while the client still writes
    assert status == 413
    assert sent < 10_000 * 16 * 1024
    assert await stored_ids(relay) == []


async def test_other_methods_are_405(relay: Relay) -> None:
    async with aiohttp.ClientSession() as session:
        for method in ("GET", "PUT", "DELETE"):
            async with session.request(method, relay.webhook_url) as response:
                assert response.status == 405, method


async def test_concurrent_requests_with_one_id_store_one_event(relay: Relay) -> None:
    body = make_body()
    headers = signed(body, webhook_id="msg_race")
    async with aiohttp.ClientSession() as session:

        async def one() -> int:
            async with session.post(relay.webhook_url, data=body, headers=headers) as response:
                return response.status

        statuses = await asyncio.gather(*(one() for _ in range(50)))
    assert sorted(set(statuses)) == [200, 202]
    assert statuses.count(202) == 1
    assert await stored_ids(relay) == ["msg_race"]


async def test_forged_request_with_a_real_id_does_not_block_the_genuine_one(
    relay: Relay,
) -> None:
    body = make_body()
    forged = signed(body, secret=OTHER_SECRET, webhook_id="msg_real")
    assert (await post(relay, body, forged))[0] == 401
    assert (await post(relay, body, signed(body, webhook_id="msg_real")))[0] == 202


async def test_locked_store_answers_503_and_keeps_nothing_half_written(
    make_settings: MakeSettings, start_relay: StartRelay
) -> None:
    settings = make_settings(store={"busy_timeout_seconds": 0.2})
    relay = await start_relay(settings)
    # Another process holding the write lock, as a long-running writer would.
    blocker = sqlite3.connect(
        settings.store.path, isolation_level=None, timeout=10, check_same_thread=False
    )
    try:
        await asyncio.to_thread(blocker.execute, "BEGIN EXCLUSIVE")
        body = make_body()
        headers = signed(body, webhook_id="msg_locked")
        status, document = await post(relay, body, headers)
        assert (status, document["status"], document["id"]) == (503, "unavailable", "msg_locked")
        async with aiohttp.ClientSession() as session:
            async with session.get(relay.base_url + "/healthz") as response:
                assert response.status == 200
            async with session.get(relay.admin_url + "/readyz") as response:
                assert response.status == 503
                assert "store not writable" in (await response.json())["reasons"][0]
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert await stored_ids(relay) == []
    # The sender's retry of the same request goes through once the store is back.
    assert (await post(relay, body, signed(body, webhook_id="msg_locked")))[0] == 202

    async def ready() -> bool:
        async with (
            aiohttp.ClientSession() as session,
            session.get(relay.admin_url + "/readyz") as response,
        ):
            return response.status == 200

    # The readiness probe runs at most once a second: the 503 above may be repeated once.
    await wait_for(ready, timeout_seconds=5)


async def test_events_survive_a_restart(
    make_settings: MakeSettings, start_relay: StartRelay
) -> None:
    settings = make_settings()
    first = Relay(settings)
    await first.start()
    try:
        body = make_body()
        assert (await post(first, body, signed(body, webhook_id="msg_keep")))[0] == 202
    finally:
        await first.stop()
    second = await start_relay(settings)
    assert await stored_ids(second) == ["msg_keep"]
    assert (await post(second, body, signed(body, webhook_id="msg_keep")))[0] == 200


async def test_polling_only_mode_refuses_every_webhook(start_relay: StartRelay) -> None:
    relay = await start_relay(verify={"secrets": []})
    body = make_body()
    status, document = await post(relay, body, signed(body))
    assert (status, document["status"]) == (503, "unavailable")
    assert "polling-only" in document["reason"]
    status, _ = await post(relay, body, {})
    assert status == 503
    assert await stored_ids(relay) == []


async def test_metrics_count_outcomes_and_ack_latency(relay: Relay) -> None:
    body = make_body()
    await post(relay, body, signed(body, webhook_id="msg_m1"))
    await post(relay, body, signed(body, webhook_id="msg_m1"))
    await post(relay, body, signed(body, secret=OTHER_SECRET))
    async with (
        aiohttp.ClientSession() as session,
        session.get(relay.admin_url + "/metrics") as response,
    ):
        text = await response.text()
    assert 'pulse_relay_webhooks_total{outcome="accepted"} 1.0' in text
    assert 'pulse_relay_webhooks_total{outcome="duplicate"} 1.0' in text
    assert 'pulse_relay_webhooks_total{outcome="unauthorized"} 1.0' in text
    assert "pulse_relay_ack_seconds_count 3.0" in text


async def test_a_lone_surrogate_in_the_type_is_invalid_and_fails_none_of_its_batch(
    relay: Relay,
) -> None:
    # `\ud800` as a JSON escape: valid JSON, but no UTF-8 text can hold what it decodes to.
    hostile = b'{"type": "job.\\ud800", "data": {"job_id": "job-hostile"}}'
    bodies = {f"msg_{n:02d}": make_body(job_id=f"job-{n}") for n in range(40)}
    bodies["msg_20"] = hostile
    async with aiohttp.ClientSession() as session:

        async def one(webhook_id: str, body: bytes) -> tuple[str, int, dict[str, Any]]:
            headers = signed(body, webhook_id=webhook_id)
            async with session.post(relay.webhook_url, data=body, headers=headers) as response:
                text = await response.text()
                if response.content_type != "application/json":
                    return webhook_id, response.status, {"status": text}
                return webhook_id, response.status, json.loads(text)

        answers = await asyncio.gather(*(one(i, body) for i, body in bodies.items()))
    statuses = {webhook_id: (status, answer["status"]) for webhook_id, status, answer in answers}
    assert statuses.pop("msg_20") == (200, "invalid")
    assert set(statuses.values()) == {(202, "accepted")} and len(statuses) == 39
    (document,) = [answer for webhook_id, _, answer in answers if webhook_id == "msg_20"]
    assert document["reason"] == "event type is not valid Unicode text (a lone surrogate)"
    view = await relay.store.get_event("msg_20")
    assert view is not None
    assert (view.state, view.type, view.deliveries, view.body) == ("invalid", None, {}, hostile)
    assert sorted(await stored_ids(relay)) == sorted(bodies)


# --- hmac-sha256-hex: the body is the only signed part ------------------------------------

HEX_SECRET = "docextract-shared-secret"
HEX_NOW = 1_700_000_000.0


def hex_headers(body: bytes, webhook_id: str | None = None) -> dict[str, str]:
    headers = {"X-DocExtract-Signature": hex_signature(HEX_SECRET, body)}
    if webhook_id is not None:
        headers["X-Webhook-Id"] = webhook_id
    return headers


@pytest.fixture
async def hex_relay(make_settings: MakeSettings, tmp_path: Path) -> AsyncIterator[Relay]:
    settings = make_settings(
        verify={"scheme": "hmac-sha256-hex", "secrets": [HEX_SECRET], "tolerance_seconds": 300},
        sinks=[{"type": "file", "name": "files", "directory": str(tmp_path / "out")}],
    )
    relay = Relay(settings, clock=lambda: HEX_NOW)
    await relay.start()
    yield relay
    await relay.stop()


async def test_hex_a_captured_body_under_a_new_id_is_a_duplicate(hex_relay: Relay) -> None:
    body = make_body(timestamp="2023-11-14T22:13:20Z")

    assert await post(hex_relay, body, hex_headers(body, "delivery-1")) == (
        202,
        {"status": "accepted", "id": "delivery-1"},
    )
    for replayed_id in ("delivery-2", None):
        status, document = await post(hex_relay, body, hex_headers(body, replayed_id))
        assert (status, document["status"]) == (200, "duplicate")
    assert await stored_ids(hex_relay) == ["delivery-1"]


@pytest.mark.parametrize("timestamp", [HEX_NOW - 301, "2023-11-14T22:18:21Z"])
async def test_hex_a_body_timestamp_outside_tolerance_is_unauthorized(
    hex_relay: Relay, timestamp: object
) -> None:
    body = make_body(timestamp=timestamp)

    status, document = await post(hex_relay, body, hex_headers(body, "delivery-old"))

    assert (status, document) == (
        401,
        {"status": "unauthorized", "reason": "timestamp outside tolerance"},
    )
    assert await stored_ids(hex_relay) == []
