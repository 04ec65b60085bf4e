"""The README's reverse-proxy recipes, run for real in front of a real relay.

Each test takes the nginx or Caddy block from the README's "HTTPS and reverse
proxies" section, swaps the example host, ports and certificate for test ones
(failing loudly if the README no longer holds what it swaps), and runs Debian's
`nginx` or `caddy` as an unprivileged foreground process on 127.0.0.1. Clients
connect from 127.0.0.2, so that the proxy (127.0.0.1) and the client differ.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
from collections.abc import AsyncIterator, Iterator

import aiohttp
import pytest

from bench.proxies import CLIENT, Workdir, find_program, start_recipe, stop_proxy
from pulse_relay.app import Relay
from tests.helpers import StartRelay, make_body, require_debian_package, signed, wait_for
from tests.rawhttp import close, request_bytes

OTHER_CLIENT = "127.0.0.3"
FORGED = "203.0.113.66"


@pytest.fixture
def workdir() -> Iterator[Workdir]:
    made = Workdir()
    yield made
    made.remove()


@pytest.fixture
async def relay(start_relay: StartRelay) -> Relay:
    return await start_relay(
        server={"trusted_proxies": ["127.0.0.1"], "allow_from": [f"{CLIENT}/32"]}
    )


@contextlib.asynccontextmanager
async def running_proxy(name: str, relay: Relay, workdir: Workdir) -> AsyncIterator[str]:
    """Run nginx or caddy with the README's recipe; yield the webhook URL through it."""
    require_debian_package(name, find_program(name) is not None)
    assert relay.port is not None
    process, port = await asyncio.to_thread(start_recipe, name, workdir, relay.port)
    try:
        yield f"https://127.0.0.1:{port}/webhooks/pulse"
    finally:
        await asyncio.to_thread(stop_proxy, process)


@pytest.fixture(params=["nginx", "caddy"])
async def proxy_url(
    request: pytest.FixtureRequest, relay: Relay, workdir: Workdir
) -> AsyncIterator[str]:
    """The webhook URL through the proxy the test is parametrized with."""
    async with running_proxy(request.param, relay, workdir) as url:
        yield url


async def post(
    url: str, workdir: Workdir, body: bytes, headers: dict[str, str], *, source: str = CLIENT
) -> tuple[int, str, bytes]:
    connector = aiohttp.TCPConnector(local_addr=(source, 0))
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        session.post(
            url, data=io.BytesIO(body), headers=headers, ssl=workdir.ca.client_context()
        ) as answer,
    ):
        return answer.status, answer.headers.get("Content-Type", ""), await answer.read()


async def test_a_signed_webhook_through_the_proxy_keeps_the_real_client_address(
    proxy_url: str, relay: Relay, workdir: Workdir
) -> None:
    body = make_body()
    headers = signed(body, webhook_id="msg_proxied") | {"X-Forwarded-For": FORGED}

    status, _, _ = await post(proxy_url, workdir, body, headers)

    assert status == 202
    view = await relay.store.get_event("msg_proxied")
    assert view is not None
    assert view.client_address == CLIENT


async def test_allow_from_sees_the_client_behind_the_proxy(
    proxy_url: str, relay: Relay, workdir: Workdir
) -> None:
    body = make_body()
    # Not allowed, and claiming to be the allowed client does not help.
    headers = signed(body) | {"X-Forwarded-For": CLIENT}

    status, content_type, answer = await post(
        proxy_url, workdir, body, headers, source=OTHER_CLIENT
    )

    assert (status, content_type) == (403, "application/json; charset=utf-8")
    assert json.loads(answer)["status"] == "forbidden"


async def test_a_body_over_the_relay_limit_gets_the_relay_json_413(
    proxy_url: str, relay: Relay, workdir: Workdir
) -> None:
    body = b"x" * (relay.settings.server.max_body_bytes + 512 * 1024)

    status, content_type, answer = await post(proxy_url, workdir, body, signed(body))

    assert status == 413
    assert content_type.startswith("application/json")
    assert b'"too_large"' in answer


async def test_nginx_caps_the_connections_of_one_source(relay: Relay, workdir: Workdir) -> None:
    body = make_body()
    # The headers of a request whose body never comes.
    request = request_bytes(b"", signed(body) | {"Content-Length": str(len(body))})
    async with running_proxy("nginx", relay, workdir) as url:
        port = int(url.split(":")[2].split("/")[0])
        held: list[asyncio.StreamWriter] = []
        try:
            # 20 requests whose bodies never come: each holds its connection open.
            for _ in range(20):
                _, writer = await asyncio.open_connection(
                    "127.0.0.1", port, ssl=workdir.ca.client_context(), local_addr=(CLIENT, 0)
                )
                writer.write(request)
                await writer.drain()
                held.append(writer)
            await wait_for(lambda: len(relay_connections(relay)) >= 20)
            status, _, _ = await post(url, workdir, body, signed(body))
        finally:
            for writer in held:
                await close(writer)

    assert status == 429


def relay_connections(relay: Relay) -> list[object]:
    server = relay._runner.server if relay._runner is not None else None
    return list(server.connections) if server is not None else []
