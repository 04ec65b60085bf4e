"""Shared factories: settings, signed requests, and a relay running on a real port."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from pulse_relay.app import Relay
from pulse_relay.config import Settings
from pulse_relay.emulator import PulseEmulator
from pulse_relay.ingress.signature import sign_headers
from tests.helpers import SECRET, Receiver, relay_config

# The PostgreSQL fixtures (postgres_server, postgres_url, and throwaway_postgres: a
# server to stop and start) for every test module; one summary line per absent Debian
# package, and under CI a skip fails the run; pytester runs pytest (tests/test_harness.py).
pytest_plugins = ["tests.postgres", "tests.skips", "pytester"]

OTHER_SECRET = "whsec_" + base64.b64encode(b"an-entirely-different-secret-key").decode()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--screenshots",
        action="store_true",
        help="write the inspector's screenshots to docs/ (tests/test_admin_ui.py)",
    )


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """A developer's own PULSE_* variables must not leak into any test."""
    for name in list(os.environ):
        if name.startswith(("PULSE_RELAY_", "PULSE_API_KEY", "PULSE_WEBHOOK_SECRET")):
            monkeypatch.delenv(name)
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)


MakeSettings = Callable[..., Settings]


@pytest.fixture
def make_settings(tmp_path: Path) -> MakeSettings:
    """Settings for a relay on 127.0.0.1, an ephemeral port and a store in tmp_path."""

    def make(**sections: Any) -> Settings:
        return Settings.model_validate(relay_config(tmp_path, **sections))

    return make


def make_body(
    event_type: str = "job.completed", job_id: str | None = "job-1", **extra: Any
) -> bytes:
    """A Pulse-style webhook payload."""
    data: dict[str, Any] = {"status": event_type.removeprefix("job.")}
    if job_id is not None:
        data["job_id"] = job_id
    return json.dumps({"type": event_type, "data": data, **extra}).encode()


def signed(
    body: bytes,
    *,
    secret: str = SECRET,
    webhook_id: str | None = None,
    timestamp: int | None = None,
) -> dict[str, str]:
    """Standard Webhooks headers for `body`, plus a JSON content type."""
    headers = sign_headers(
        secret,
        webhook_id or f"msg_{uuid.uuid4().hex}",
        body,
        timestamp=int(time.time()) if timestamp is None else timestamp,
    )
    headers["content-type"] = "application/json"
    return headers


StartRelay = Callable[..., Awaitable[Relay]]


@pytest.fixture
async def start_relay(make_settings: MakeSettings) -> AsyncIterator[StartRelay]:
    """Start relays on real ports; each is stopped when the test ends."""
    relays: list[Relay] = []

    async def start(
        settings: Settings | None = None,
        *,
        clock: Callable[[], float] = time.time,
        **sections: Any,
    ) -> Relay:
        relay = Relay(settings or make_settings(**sections), clock=clock)
        await relay.start()
        relays.append(relay)
        return relay

    yield start
    for relay in reversed(relays):
        await relay.stop()


async def wait_for(
    condition: Callable[[], Awaitable[bool]] | Callable[[], bool],
    *,
    timeout_seconds: float = 10.0,
    interval_seconds: float = 0.02,
) -> None:
    """Poll `condition` until it is true; fail the test at the deadline."""
    deadline = time.monotonic() + timeout_seconds
    while True:
        result = condition()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout_seconds} s")
        await asyncio.sleep(interval_seconds)


@pytest.fixture
async def emulator() -> AsyncIterator[PulseEmulator]:
    """The Pulse API emulator on an ephemeral port."""
    async with PulseEmulator(api_key="test-api-key") as running:
        yield running


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    """The operator's app: a real HTTP server recording what the HTTP sink posts."""
    running = Receiver()
    await running.start()
    yield running
    await running.stop()
