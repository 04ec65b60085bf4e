"""Fixtures: settings, a relay running on a real port, the emulator, a receiving app.

Plain helpers (signed requests, polling, records) live in tests/helpers.py."""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from pulse_relay.app import Relay
from pulse_relay.config import Settings
from pulse_relay.emulator import PulseEmulator
from tests.helpers import (
    FAST_RETRY,
    SINK_SECRET,
    MakeSettings,
    PipelineSettings,
    Receiver,
    StartRelay,
    deep_merge,
    recorder_argv,
    relay_config,
)

# The PostgreSQL fixtures (postgres_server, postgres_url, and throwaway_postgres: a
# server to stop and start) for every test module; one summary line per absent Debian
# package, and under CI a skip fails the run; pytester runs pytest (tests/test_harness.py).
pytest_plugins = ["tests.postgres", "tests.skips", "pytester"]


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
        if name.startswith(("PULSE_RELAY_", "PULSE_API_KEY", "PULSE_WEBHOOK_")):
            monkeypatch.delenv(name)
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)


@pytest.fixture
def make_settings(tmp_path: Path) -> MakeSettings:
    """Settings for a relay on 127.0.0.1, an ephemeral port and a store in tmp_path."""

    def make(**sections: Any) -> Settings:
        return Settings.model_validate(relay_config(tmp_path, **sections))

    return make


@pytest.fixture
def pipeline_settings(
    make_settings: MakeSettings, tmp_path: Path, emulator: PulseEmulator, receiver: Receiver
) -> PipelineSettings:
    """Settings for the whole pipeline, sections given merged over them: the emulator as
    Pulse; a file sink "files" writing to tmp_path/files, an HTTP sink "app" posting to
    `receiver` signed with SINK_SECRET, a command sink "cmd" recording into
    tmp_path/command-out; each retrying fast."""
    argv, _ = recorder_argv(tmp_path)

    def make(**extra: Any) -> Settings:
        base: dict[str, Any] = {
            "pulse": {"base_url": emulator.base_url, "api_key": emulator.api_key},
            "sinks": [
                {
                    "type": "file",
                    "name": "files",
                    "directory": str(tmp_path / "files"),
                    **FAST_RETRY,
                },
                {
                    "type": "http",
                    "name": "app",
                    "url": receiver.url,
                    "sign_secret": SINK_SECRET,
                    "timeout_seconds": 2,
                    **FAST_RETRY,
                },
                {"type": "command", "name": "cmd", "argv": argv, **FAST_RETRY},
            ],
        }
        return make_settings(**deep_merge(base, extra))

    return make


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
