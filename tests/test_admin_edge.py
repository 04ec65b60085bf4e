"""The admin listener under attack: rebinding host names, slow and oversized headers, guessing."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiohttp
import pytest
from structlog.testing import capture_logs

from pulse_relay.admin.auth import LoginThrottle, is_allowed_host
from pulse_relay.app import Relay
from pulse_relay.config import ConfigError
from tests.helpers import (
    FakeClock,
    MakeSettings,
    StartRelay,
    call,
    free_port,
    run_cli,
    write_config,
)
from tests.rawhttp import close, exchange

TOKEN = "admin-token-for-tests"
BEARER = {"Authorization": f"Bearer {TOKEN}"}
REBOUND = "rebind.attacker.example:8788"
WATCH = {"job_id": "job-rebind", "metadata": {"k": "v"}}


# -- host names (DNS rebinding) ------------------------------------------------------------


async def test_a_rebound_host_name_reads_and_writes_nothing(start_relay: StartRelay) -> None:
    relay = await start_relay()
    rebound = {"Host": REBOUND, "Origin": f"http://{REBOUND}", "X-Pulse-Relay": "1"}
    for method, path in (
        ("GET", "/api/events"),
        ("GET", "/api/stream"),
        ("GET", "/"),
        ("GET", "/pulse/job/j1"),
        ("POST", "/api/watches"),
        ("POST", "/api/replay"),
    ):
        status, body = await call(method, relay.admin_url + path, headers=rebound, json_body=WATCH)
        assert (status, body["error"]) == (403, "forbidden_host"), path
        assert "admin.allowed_hosts" in body["detail"]
    # The pass-through too, even with a Pulse key (the page may bring its own).
    keyed = {**rebound, "x-api-key": "the-pages-own-key"}
    status, body = await call("POST", relay.admin_url + "/pulse/extract", headers=keyed)
    assert (status, body["error"]) == (403, "forbidden_host")
    assert await relay.store.list_watches() == []
    # Probes and scrapers answer whatever name they use.
    for path in ("/healthz", "/readyz", "/metrics"):
        assert (await call("GET", relay.admin_url + path, headers={"Host": REBOUND}))[0] == 200


async def test_loopback_names_and_listed_hosts_are_answered(start_relay: StartRelay) -> None:
    relay = await start_relay(admin={"allowed_hosts": ["Relay.Internal"]})
    url = relay.admin_url + "/api/stats"
    for host in ("127.0.0.1:8788", "127.9.9.9", "localhost:1", "LOCALHOST", "[::1]:8788"):
        assert (await call("GET", url, headers={"Host": host}))[0] == 200, host
    assert (await call("GET", url, headers={"Host": "relay.internal:8788"}))[0] == 200
    status, body = await call("GET", url, headers={"Host": "relay.internal.evil.example"})
    assert (status, body["error"]) == (403, "forbidden_host")


async def test_with_a_token_the_token_is_the_guard(start_relay: StartRelay) -> None:
    relay = await start_relay(admin={"token": TOKEN})
    url = relay.admin_url + "/api/stats"
    # A rebinding page never has the token, and the login cookie belongs to another name.
    assert (await call("GET", url, headers={"Host": REBOUND}))[0] == 401
    assert (await call("GET", url, headers={**BEARER, "Host": "relay:8788"}))[0] == 200
    # A list of names, when given, is kept even with a token.
    listed = await start_relay(admin={"token": TOKEN, "allowed_hosts": ["relay"]})
    url = listed.admin_url + "/api/stats"
    assert (await call("GET", url, headers={**BEARER, "Host": "relay:8788"}))[0] == 200
    status, body = await call("GET", url, headers={**BEARER, "Host": REBOUND})
    assert (status, body["error"]) == (403, "forbidden_host")


@pytest.mark.parametrize(
    ("host", "allowed"),
    [
        (None, True),
        ("127.0.0.1", True),
        ("127.0.0.1:8788", True),
        ("127.200.1.2:1", True),
        ("[::1]", True),
        ("[::1]:8788", True),
        ("localhost", True),
        ("LocalHost:8788", True),
        ("relay.internal:8788", True),
        ("RELAY.internal", True),
        ("", False),
        ("0.0.0.0:8788", False),
        ("[::]:8788", False),
        ("10.0.0.5:8788", False),
        ("localhost.attacker.example", False),
        ("127.0.0.1.attacker.example", False),
        ("rebind.attacker.example:8788", False),
        ("relay.internal.attacker.example", False),
        ("[::1", False),
    ],
)
def test_allowed_host_names(host: str | None, allowed: bool) -> None:
    assert is_allowed_host(host, ("relay.internal",)) is allowed


# -- slow and oversized headers --------------------------------------------------------------


async def test_a_client_trickling_its_headers_is_cut_off_at_the_ingress_deadline(
    start_relay: StartRelay,
) -> None:
    relay = await start_relay(server={"read_timeout_seconds": 0.5})
    assert relay.admin_port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", relay.admin_port)
    started = time.monotonic()
    try:
        writer.write(b"GET /api/events HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        closed = False
        while time.monotonic() - started < 10:
            try:
                writer.write(b"X-A: b\r\n")
                await writer.drain()
            except ConnectionError:
                closed = True
                break
            if reader.at_eof() or await _eof_within(reader, 0.1):
                closed = True
                break
        assert closed, "the admin listener kept a client that never finished its headers"
        assert time.monotonic() - started < 5
    finally:
        await close(writer)


async def _eof_within(reader: asyncio.StreamReader, seconds: float) -> bool:
    try:
        return await asyncio.wait_for(reader.read(1), seconds) == b""
    except TimeoutError:
        return False
    except ConnectionError:
        return True


@pytest.mark.parametrize(
    "head",
    [
        b"GET /api/events HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Pulse-Relay-Meta-Note: %s\r\n\r\n",
        b"POST /pulse/extract HTTP/1.1\r\nHost: 127.0.0.1\r\nx-api-key: k\r\n"
        b"X-Pulse-Relay-Meta-Note: %s\r\nContent-Length: 0\r\n\r\n",
    ],
    ids=["api", "pass-through"],
)
async def test_an_oversized_header_is_a_json_400_naming_it(
    start_relay: StartRelay, head: bytes
) -> None:
    relay = await start_relay()
    assert relay.admin_port is not None
    value = b"secret-" + b"v" * 9000
    answer = await exchange(relay.admin_port, head % value)
    assert answer.status == 400
    assert answer.headers["content-type"].startswith("application/json")
    assert answer.document["error"] == "bad_request"
    assert "X-Pulse-Relay-Meta-Note" in answer.document["detail"]
    assert b"secret-" not in answer.body


async def test_an_oversized_header_sent_by_a_client_library_is_named(
    start_relay: StartRelay,
) -> None:
    relay = await start_relay()
    headers = {"X-Pulse-Relay-Meta-Big": "m" * 9000, "x-api-key": "k"}
    async with (
        aiohttp.ClientSession() as session,
        session.post(relay.admin_url + "/pulse/extract", headers=headers) as response,
    ):
        document = await response.json()
    assert response.status == 400
    assert document["error"] == "bad_request"
    assert "X-Pulse-Relay-Meta-Big" in document["detail"] and "mmmm" not in document["detail"]


# -- tokens ----------------------------------------------------------------------------------


async def test_a_short_token_on_an_exposed_listener_is_refused_at_start(
    make_settings: MakeSettings,
) -> None:
    relay = Relay(make_settings(admin={"host": "0.0.0.0", "token": "x" * 15}))
    with pytest.raises(ConfigError, match=r"admin\.token: .*16 characters"):
        await relay.start()
    assert relay.admin_port is None and relay.port is None


def test_check_config_names_a_short_token(tmp_path: Path) -> None:
    config = write_config(
        tmp_path, free_port(), admin_port=free_port(), admin={"host": "0.0.0.0", "token": "x"}
    )
    checked = run_cli("check-config", config=config)
    assert checked.returncode == 1
    assert "admin.token" in checked.stderr and "16 characters" in checked.stderr
    # On loopback a short token is the operator's affair.
    config = write_config(tmp_path, free_port(), admin_port=free_port(), admin={"token": "x"})
    assert run_cli("check-config", config=config).returncode == 0


def test_the_throttle_blocks_an_address_until_its_minute_is_over() -> None:
    clock = FakeClock()
    throttle = LoginThrottle(clock=clock)
    for _ in range(9):
        throttle.failed("10.0.0.1")
    clock.now += 30
    assert throttle.retry_after_seconds("10.0.0.1") is None
    throttle.failed("10.0.0.1")
    assert throttle.retry_after_seconds("10.0.0.1") == 30
    assert throttle.retry_after_seconds("10.0.0.2") is None
    clock.now += 29.5
    assert throttle.retry_after_seconds("10.0.0.1") == 1
    clock.now += 0.5
    assert throttle.retry_after_seconds("10.0.0.1") is None
    # A new minute starts with the next failure.
    throttle.failed("10.0.0.1")
    assert throttle.retry_after_seconds("10.0.0.1") is None


def test_failures_spread_over_minutes_never_block() -> None:
    clock = FakeClock()
    throttle = LoginThrottle(clock=clock)
    for _ in range(30):
        for _ in range(9):
            throttle.failed("10.0.0.1")
        clock.now += 61
        assert throttle.retry_after_seconds("10.0.0.1") is None


def test_the_throttle_forgets_the_oldest_addresses_beyond_its_bound() -> None:
    clock = FakeClock()
    throttle = LoginThrottle(clock=clock, max_addresses=3)
    for _ in range(10):
        throttle.failed("10.0.0.1")
    assert throttle.retry_after_seconds("10.0.0.1") == 60
    for address in ("10.0.0.2", "10.0.0.3", "10.0.0.4"):
        throttle.failed(address)
    assert len(throttle) == 3
    assert throttle.retry_after_seconds("10.0.0.1") is None


async def test_guessing_the_token_is_answered_429_after_ten_failures(
    start_relay: StartRelay,
) -> None:
    relay = await start_relay(admin={"token": TOKEN})
    login = relay.admin_url + "/login"
    with capture_logs() as logs:
        for guess in range(5):
            form = f"token=guess-{guess}".encode()
            headers = {"Content-Type": "application/x-www-form-urlencoded"}
            assert (await call("POST", login, headers=headers, data=form))[0] == 401
        for guess in range(5, 10):
            wrong = {"Authorization": f"Bearer guess-{guess}"}
            assert (await call("GET", relay.admin_url + "/api/stats", headers=wrong))[0] == 401
        # The eleventh try is not even checked: the right token is refused too.
        for headers in (BEARER, {"Authorization": "Bearer guess-10"}):
            async with (
                aiohttp.ClientSession() as session,
                session.get(relay.admin_url + "/api/stats", headers=headers) as response,
            ):
                document = await response.json()
            assert response.status == 429
            assert 0 < int(response.headers["Retry-After"]) <= 60
            assert document["error"] == "too_many_requests"
        form = f"token={TOKEN}".encode()
        headers = {"Content-Type": "application/x-www-form-urlencoded"}
        status, body = await call("POST", login, headers=headers, data=form)
        assert (status, body["error"]) == (429, "too_many_requests")
    failures = [entry for entry in logs if entry["event"] == "admin login failed"]
    assert len(failures) == 10
    assert {entry["via"] for entry in failures} == {"form", "bearer"}
    assert all("guess" not in repr(entry) for entry in logs)
    # Probes and the pass-through with a Pulse key are not credential checks.
    assert (await call("GET", relay.admin_url + "/healthz"))[0] == 200


# -- login redirects -------------------------------------------------------------------------


async def test_login_never_redirects_off_the_listener(start_relay: StartRelay) -> None:
    relay = await start_relay()
    for query, location in (
        ("next=/%09/evil.example/x", "/"),
        ("next=/%5Cevil.example", "/"),
        ("next=%2F%2Fevil.example", "/"),
        ("next=/events/msg_1", "/events/msg_1"),
    ):
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"{relay.admin_url}/login?{query}", allow_redirects=False) as response,
        ):
            assert (response.status, response.headers["Location"]) == (303, location), query
