"""GET /api/stream: Server-Sent Events of every change, resumable with Last-Event-ID."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from pulse_relay.admin.changes import ChangeHub
from pulse_relay.app import Relay
from pulse_relay.store import Attempt
from tests.helpers import MakeSettings, StartRelay, call, make_body, signed


@dataclass
class Message:
    id: str | None
    event: str
    data: Any


async def messages(response: aiohttp.ClientResponse) -> AsyncIterator[Message]:
    """The SSE messages of a response, comments and `retry:` skipped."""
    fields: dict[str, str] = {}
    async for raw in response.content:
        line = raw.decode().rstrip("\n")
        if line == "":
            if "data" in fields:
                yield Message(
                    fields.get("id"), fields.get("event", "message"), json.loads(fields["data"])
                )
            fields = {}
        elif not line.startswith(":"):
            name, _, value = line.partition(": ")
            fields[name] = value


async def next_message(stream: AsyncIterator[Message], kind: str, **match: Any) -> Message:
    """The next message of `kind` whose data has the given items (within 10 s)."""
    async with asyncio.timeout(10):
        async for message in stream:
            if message.event == kind and all(message.data.get(k) == v for k, v in match.items()):
                return message
    raise AssertionError("stream ended")


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest) -> dict[str, str]:
    """The relay's store section, on each backend in turn."""
    return {"url": request.getfixturevalue("postgres_url")} if request.param == "postgresql" else {}


@pytest.fixture
async def relay(store: dict[str, str], start_relay: StartRelay, tmp_path: Path) -> Relay:
    """A relay with a file sink. The store comes first: its database outlives the relay."""
    return await start_relay(
        sinks=[{"type": "file", "name": "files", "directory": str(tmp_path / "out")}],
        pulse={"fetch_on": []},
        store=store,
    )


async def post_webhook(relay: Relay, webhook_id: str) -> None:
    body = make_body(job_id=f"job-{webhook_id}")
    status, _ = await call(
        "POST", relay.webhook_url, data=body, headers=signed(body, webhook_id=webhook_id)
    )
    assert status == 202


async def test_a_webhook_appears_on_the_stream_then_its_delivery(relay: Relay) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.get(relay.admin_url + "/api/stream") as response,
    ):
        assert response.status == 200
        assert response.headers["Content-Type"] == "text/event-stream"
        stream = messages(response)
        await post_webhook(relay, "msg_live")
        event = await next_message(stream, "event", id="msg_live")
        assert event.data["job_id"] == "job-msg_live" and "payload" not in event.data
        delivery = await next_message(stream, "delivery", event_id="msg_live")
        assert (delivery.data["sink"], delivery.data["state"]) == ("files", "delivered")
        assert delivery.data["attempt"]["outcome"] == "delivered"
        summary = await next_message(stream, "event", id="msg_live")
        assert summary.data["deliveries"]["files"]["state"] == "delivered"
        assert event.id is not None and summary.id is not None
        assert int(event.id) < int(delivery.id or 0) < int(summary.id)


async def test_a_reconnect_with_last_event_id_receives_what_it_missed(relay: Relay) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.get(relay.admin_url + "/api/stream") as response:
            stream = messages(response)
            await post_webhook(relay, "msg_seen")
            seen = await next_message(stream, "event", id="msg_seen")
        # Disconnected: these happen while nobody listens.
        await post_webhook(relay, "msg_missed_1")
        await post_webhook(relay, "msg_missed_2")
        headers = {"Last-Event-ID": str(seen.id)}
        async with session.get(relay.admin_url + "/api/stream", headers=headers) as response:
            stream = messages(response)
            first = await next_message(stream, "event", id="msg_missed_1")
            second = await next_message(stream, "event", id="msg_missed_2")
            assert int(str(seen.id)) < int(str(first.id)) < int(str(second.id))


async def test_an_id_the_ring_no_longer_holds_asks_for_a_resync(relay: Relay) -> None:
    async with aiohttp.ClientSession() as session:
        for last_event_id in ("1", "not-a-number", str(relay.hub.last_seq + 10)):
            headers = {"Last-Event-ID": last_event_id}
            async with session.get(relay.admin_url + "/api/stream", headers=headers) as response:
                message = await anext(messages(response))
                assert message.event == "resync", last_event_id
                assert int(str(message.id)) == relay.hub.last_seq


async def test_stopping_the_relay_ends_open_streams(make_settings: MakeSettings) -> None:
    relay = Relay(make_settings())
    await relay.start()
    async with aiohttp.ClientSession() as session:
        response = await session.get(relay.admin_url + "/api/stream")
        async with asyncio.timeout(10):
            await relay.stop()
            await response.read()  # the stream ends rather than hanging
        response.release()


def test_the_ring_keeps_the_last_changes_and_detects_gaps() -> None:
    hub = ChangeHub(capacity=3, clock=lambda: 1.0)
    start = hub.last_seq
    assert start == 1_000_000 and hub.since(start) == []
    seqs = [hub.publish("delivery", {"n": n}) for n in range(5)]
    assert seqs == list(range(start + 1, start + 6))
    assert [c.data for c in hub.since(seqs[1]) or []] == [{"n": 2}, {"n": 3}, {"n": 4}]
    assert hub.since(seqs[0]) is None  # change 2 was dropped from the ring
    assert hub.since(seqs[4] + 1) is None  # not one of this run's ids
    assert hub.since(seqs[4]) == []


def test_an_attempt_is_published_at_once_and_its_document_built_when_read() -> None:
    hub = ChangeHub(clock=lambda: 1.0)
    start = hub.last_seq
    attempt = Attempt("files", 1, 1_000_000.0, 0.25, "delivered", None)
    hub.on_store_change(
        "delivery", "m1", {"sink": "files", "state": "delivered", "attempt": attempt}
    )
    delivery, summary = hub.since(start) or []
    assert (delivery.kind, delivery.event_id, delivery.data) == ("delivery", "m1", None)
    assert (summary.kind, summary.event_id, summary.data) == ("event", "m1", None)
    assert delivery.build is not None
    document = delivery.build()
    assert (document["event_id"], document["sink"], document["state"]) == (
        "m1",
        "files",
        "delivered",
    )
    assert document["attempt"]["outcome"] == "delivered"
    assert document["attempt"]["started_at"].startswith("1970-01-12T13:46:40")
