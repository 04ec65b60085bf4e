"""The HTTP sink against a real receiving aiohttp server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import base64
import socket
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from pydantic import SecretStr, ValidationError
from standardwebhooks.webhooks import Webhook

from pulse_relay.config import HttpSinkSettings
from pulse_relay.sinks import (
    HttpSink,
    PermanentSinkError,
    RetryableSinkError,
    build_sink,
)
from pulse_relay.sinks.http import MAX_RESPONSE_EXCERPT_BYTES
from tests.helpers import SENDER_KEYS, make_delivery

SIGN_SECRET = "whsec_" + base64.b64encode(b"relay-to-app-signing-key-32bytes").decode()


# The receiving app gets these bytes exactly: not ASCII, and shell syntax left alone.
RESULT_TEXT = "héllo; $(rm -rf /)"


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """A receiving app; each path answers in its own way and every request is recorded."""

    base_url: str
    requests: list[Received] = field(default_factory=list)

    def url(self, path: str) -> str:
        return self.base_url + path

    def paths(self) -> list[str]:
        return [request.path for request in self.requests]


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    released = asyncio.Event()
    state = Receiver(base_url="")

    async def record(request: web.Request) -> None:
        state.requests.append(
            Received(request.method, request.path, dict(request.headers), await request.read())
        )

    async def ok(request: web.Request) -> web.Response:
        await record(request)
        return web.json_response({"stored": True})

    async def status(request: web.Request) -> web.Response:
        await record(request)
        code = int(request.match_info["code"])
        headers = {}
        if "retry_after" in request.query:
            headers["Retry-After"] = request.query["retry_after"]
        return web.Response(status=code, text=f"answer {code}", headers=headers)

    async def redirect(request: web.Request) -> web.Response:
        await record(request)
        raise web.HTTPFound(location="/ok")

    async def slow(request: web.Request) -> web.Response:
        await record(request)
        await released.wait()
        return web.Response(text="too late")

    async def big(request: web.Request) -> web.Response:
        await record(request)
        return web.Response(status=500, text="E" * 100_000)

    app = web.Application()
    app.router.add_post("/ok", ok)
    app.router.add_post("/status/{code}", status)
    app.router.add_post("/redirect", redirect)
    app.router.add_post("/slow", slow)
    app.router.add_post("/big", big)
    runner = web.AppRunner(app, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    state.base_url = f"http://127.0.0.1:{port}"
    try:
        yield state
    finally:
        released.set()
        await runner.cleanup()


MakeSink = Callable[..., HttpSink]


@pytest.fixture
async def make_sink() -> AsyncIterator[MakeSink]:
    sinks: list[HttpSink] = []

    def make(url: str, **options: Any) -> HttpSink:
        sink = HttpSink(HttpSinkSettings(type="http", name="app", url=url, **options))
        sinks.append(sink)
        return sink

    yield make
    for sink in sinks:
        await sink.close()


async def test_2xx_is_delivered_with_the_exact_body(
    receiver: Receiver, make_sink: MakeSink
) -> None:
    sink = make_sink(receiver.url("/ok"))
    delivery = make_delivery(text=RESULT_TEXT)
    result = await sink.deliver(delivery)
    assert result.status_code == 200
    assert result.output_tail == '{"stored": true}'
    [request] = receiver.requests
    assert request.method == "POST"
    assert request.body == delivery.body
    assert request.headers["Content-Type"] == "application/json"
    assert request.headers["User-Agent"].startswith("pulse-relay/")
    # Unsigned unless a sign_secret is configured.
    assert "webhook-signature" not in {name.lower() for name in request.headers}


@pytest.mark.parametrize("code", [500, 502, 503, 408, 425, 429])
async def test_server_errors_and_throttling_are_retryable(
    receiver: Receiver, make_sink: MakeSink, code: int
) -> None:
    sink = make_sink(receiver.url(f"/status/{code}"))
    with pytest.raises(RetryableSinkError) as caught:
        await sink.deliver(make_delivery())
    assert caught.value.status_code == code
    assert caught.value.reason == f"HTTP {code}"
    assert caught.value.output_tail == f"answer {code}"
    assert caught.value.retry_after_seconds is None


async def test_429_carries_retry_after(receiver: Receiver, make_sink: MakeSink) -> None:
    sink = make_sink(receiver.url("/status/429?retry_after=42"))
    with pytest.raises(RetryableSinkError) as caught:
        await sink.deliver(make_delivery())
    assert caught.value.status_code == 429
    assert caught.value.retry_after_seconds == 42.0


async def test_503_with_a_past_http_date_retry_after(
    receiver: Receiver, make_sink: MakeSink
) -> None:
    sink = make_sink(
        receiver.url("/status/503?retry_after=Wed,%2021%20Oct%202015%2007:28:00%20GMT")
    )
    with pytest.raises(RetryableSinkError) as caught:
        await sink.deliver(make_delivery())
    assert caught.value.retry_after_seconds == 0.0


@pytest.mark.parametrize("code", [400, 401, 403, 404, 410, 422])
async def test_other_client_errors_are_permanent(
    receiver: Receiver, make_sink: MakeSink, code: int
) -> None:
    sink = make_sink(receiver.url(f"/status/{code}"))
    with pytest.raises(PermanentSinkError) as caught:
        await sink.deliver(make_delivery())
    assert caught.value.status_code == code
    assert caught.value.output_tail == f"answer {code}"


async def test_redirects_are_not_followed(receiver: Receiver, make_sink: MakeSink) -> None:
    sink = make_sink(receiver.url("/redirect"))
    with pytest.raises(PermanentSinkError, match="redirect to /ok not followed") as caught:
        await sink.deliver(make_delivery())
    assert caught.value.status_code == 302
    assert receiver.paths() == ["/redirect"]


@pytest.fixture
def refusing_port() -> Iterator[int]:
    # Bound but not listening: a connection is refused at once, and the port
    # cannot be taken by anything else while the test runs.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


async def test_connection_refused_is_retryable(make_sink: MakeSink, refusing_port: int) -> None:
    sink = make_sink(f"http://127.0.0.1:{refusing_port}/hook")
    with pytest.raises(RetryableSinkError, match="request failed") as caught:
        await sink.deliver(make_delivery())
    assert caught.value.status_code is None


async def test_slow_server_past_the_timeout_is_retryable(
    receiver: Receiver, make_sink: MakeSink
) -> None:
    sink = make_sink(receiver.url("/slow"), timeout_seconds=0.3)
    with pytest.raises(RetryableSinkError, match=r"no response within 0\.3s"):
        await sink.deliver(make_delivery())
    assert receiver.paths() == ["/slow"]


async def test_configured_headers_arrive(receiver: Receiver, make_sink: MakeSink) -> None:
    headers = {"Authorization": "Bearer app-token", "X-Tenant": "acme"}
    sink = make_sink(receiver.url("/ok"), headers=headers)
    await sink.deliver(make_delivery())
    [request] = receiver.requests
    assert request.headers["Authorization"] == "Bearer app-token"
    assert request.headers["X-Tenant"] == "acme"
    assert request.headers["Content-Type"] == "application/json"


async def test_configured_content_type_replaces_the_default(
    receiver: Receiver, make_sink: MakeSink
) -> None:
    sink = make_sink(receiver.url("/ok"), headers={"content-type": "application/vnd.app+json"})
    await sink.deliver(make_delivery())
    [request] = receiver.requests
    assert request.headers["Content-Type"] == "application/vnd.app+json"


async def test_signed_request_verifies_with_standard_webhooks(
    receiver: Receiver, make_sink: MakeSink
) -> None:
    # A configured header of the same name must not replace the real signature.
    sink = make_sink(
        receiver.url("/ok"),
        sign_secret=SecretStr(SIGN_SECRET),
        headers={"Webhook-Signature": "v1,forged"},
    )
    delivery = make_delivery(event_id="msg_signed", text=RESULT_TEXT)
    await sink.deliver(delivery)
    [request] = receiver.requests
    lowered = {name.lower(): value for name, value in request.headers.items()}
    assert lowered["webhook-id"] == "msg_signed"
    verified = Webhook(SIGN_SECRET).verify(request.body, lowered)
    assert verified == delivery.envelope
    other_secret = "whsec_" + base64.b64encode(b"some-other-key-of-32-bytes-long!").decode()
    with pytest.raises(Exception, match="No matching signature found"):
        Webhook(other_secret).verify(request.body, lowered)


async def test_a_private_key_alone_signs_v1a_that_the_public_key_verifies(
    receiver: Receiver, make_sink: MakeSink
) -> None:
    # As with a secret, a configured header of the same name must not replace the signature.
    sink = make_sink(
        receiver.url("/ok"),
        sign_private_key=SENDER_KEYS.whsk,
        headers={"Webhook-Signature": "v1a,forged"},
    )
    delivery = make_delivery(event_id="msg_v1a", text=RESULT_TEXT)
    await sink.deliver(delivery)
    [request] = receiver.requests
    lowered = {name.lower(): value for name, value in request.headers.items()}
    version, _, signature = lowered["webhook-signature"].partition(",")
    assert (version, lowered["webhook-id"]) == ("v1a", "msg_v1a")
    signed_content = f"msg_v1a.{lowered['webhook-timestamp']}.".encode() + request.body
    SENDER_KEYS.private_key.public_key().verify(base64.b64decode(signature), signed_content)


async def test_long_response_bodies_are_cut_for_the_log(
    receiver: Receiver, make_sink: MakeSink
) -> None:
    sink = make_sink(receiver.url("/big"))
    with pytest.raises(RetryableSinkError) as caught:
        await sink.deliver(make_delivery())
    assert caught.value.output_tail == "E" * MAX_RESPONSE_EXCERPT_BYTES


async def test_invalid_url_goes_dead_without_echoing_it(make_sink: MakeSink) -> None:
    settings = HttpSinkSettings.model_construct(
        type="http", name="app", url="ftp://user:secret@example.invalid/x"
    )
    sink = HttpSink(settings)
    try:
        with pytest.raises(PermanentSinkError, match="not a valid http") as caught:
            await sink.deliver(make_delivery())
        assert "secret" not in caught.value.reason
    finally:
        await sink.close()


async def test_owned_session_is_closed_and_a_shared_one_is_not(receiver: Receiver) -> None:
    settings = HttpSinkSettings(type="http", name="app", url=receiver.url("/ok"))
    async with aiohttp.ClientSession() as shared:
        sink = build_sink(settings, session=shared)
        assert isinstance(sink, HttpSink)
        await sink.deliver(make_delivery())
        await sink.close()
        assert not shared.closed
        # Still usable by whoever owns it.
        await sink.deliver(make_delivery())
    owned = HttpSink(settings)
    await owned.deliver(make_delivery())
    session = owned._session
    assert session is not None
    await owned.close()
    assert session.closed
    assert len(receiver.requests) == 3


async def test_close_without_any_delivery_is_harmless(receiver: Receiver) -> None:
    sink = HttpSink(HttpSinkSettings(type="http", name="app", url=receiver.url("/ok")))
    await sink.close()
    await sink.close()


def test_unusable_sign_secret_is_refused_by_the_settings() -> None:
    with pytest.raises(ValidationError, match=r"sign_secret\n.*base64"):
        HttpSinkSettings(
            type="http", name="app", url="http://127.0.0.1:1/", sign_secret=SecretStr("whsec_!!")
        )
