"""sd_notify: READY, WATCHDOG and STOPPING reach a socket the test owns, in order."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pulse_relay.notify import Notifier, run_watchdog, watchdog_interval_seconds
from tests.helpers import free_port, wait_for, write_config


@pytest.fixture
def notify_socket() -> Iterator[tuple[socket.socket, str]]:
    """A unix datagram socket standing in for systemd (short path: sun_path is 108 bytes)."""
    folder = tempfile.mkdtemp(prefix="pr-notify-", dir="/tmp")
    path = os.path.join(folder, "notify")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(path)
    yield listener, path
    listener.close()
    shutil.rmtree(folder, ignore_errors=True)


def receive(listener: socket.socket, *, timeout_seconds: float = 20.0) -> dict[str, str]:
    """The next message, as its KEY=VALUE fields; fails the test at the deadline."""
    listener.settimeout(timeout_seconds)
    try:
        data = listener.recv(4096)
    except TimeoutError:
        raise AssertionError("no sd_notify message within the deadline") from None
    return dict(line.split("=", 1) for line in data.decode().splitlines())


def accepts_connections(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


def test_serve_notifies_ready_after_binding_then_watchdog_then_stopping(
    tmp_path: Path, notify_socket: tuple[socket.socket, str]
) -> None:
    listener, path = notify_socket
    port, admin_port = free_port(), free_port()
    config = write_config(tmp_path, port, admin_port=admin_port)
    env = {**os.environ, "NOTIFY_SOCKET": path, "WATCHDOG_USEC": "2000000"}
    env.pop("WATCHDOG_PID", None)
    process = subprocess.Popen(
        [sys.executable, "-m", "pulse_relay", "--config", str(config), "serve"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        first = receive(listener)
        # Checked the moment READY arrives: both ports must already take connections.
        assert first.get("READY") == "1", first
        assert accepts_connections(port)
        assert accepts_connections(admin_port)
        assert f":{port}/webhooks/pulse" in first.get("STATUS", "")
        assert f"admin on http://127.0.0.1:{admin_port}" in first.get("STATUS", "")

        pings = 0
        while pings < 3:
            message = receive(listener)
            assert "STOPPING" not in message
            if message.get("WATCHDOG") == "1":
                pings += 1

        process.send_signal(signal.SIGTERM)
        while True:
            message = receive(listener)
            if message.get("STOPPING") == "1":
                break
            assert message == {"WATCHDOG": "1"}, message
        _, stderr = process.communicate(timeout=30)
        assert process.returncode == 0, stderr
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()


def test_serve_without_watchdog_usec_sends_no_watchdog(
    tmp_path: Path, notify_socket: tuple[socket.socket, str]
) -> None:
    listener, path = notify_socket
    port = free_port()
    config = write_config(tmp_path, port)
    env = {k: v for k, v in os.environ.items() if not k.startswith("WATCHDOG_")}
    process = subprocess.Popen(
        [sys.executable, "-m", "pulse_relay", "--config", str(config), "serve"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**env, "NOTIFY_SOCKET": path},
    )
    try:
        assert receive(listener).get("READY") == "1"
        process.send_signal(signal.SIGTERM)
        # The very next message is STOPPING: no WATCHDOG was sent in between.
        assert receive(listener).get("STOPPING") == "1"
        _, stderr = process.communicate(timeout=30)
        assert process.returncode == 0, stderr
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()


async def test_watchdog_withholds_pings_while_the_relay_is_not_alive(
    notify_socket: tuple[socket.socket, str],
) -> None:
    listener, path = notify_socket
    listener.setblocking(False)
    checks = 0
    healthy = False

    async def check() -> list[str]:
        nonlocal checks
        checks += 1
        return [] if healthy else ["store writer did not answer"]

    task = asyncio.create_task(
        run_watchdog(Notifier(path), interval_seconds=0.01, check=check), name="watchdog"
    )
    received: list[bytes] = []

    def pinged() -> bool:
        with contextlib.suppress(BlockingIOError):
            received.append(listener.recv(4096))
        return bool(received)

    try:
        await wait_for(lambda: checks >= 5, interval_seconds=0.01)
        with pytest.raises(BlockingIOError):
            listener.recv(4096)
        healthy = True
        await wait_for(pinged, interval_seconds=0.01)
        assert received[0] == b"WATCHDOG=1"
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def test_abstract_socket_names_are_supported() -> None:
    name = f"pulse-relay-test-{os.getpid()}-{time.monotonic_ns()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind("\0" + name)
        listener.settimeout(10)
        assert Notifier("@" + name).ready(status="up")
        assert listener.recv(4096) == b"READY=1\nSTATUS=up"


def test_without_notify_socket_nothing_is_sent() -> None:
    notifier = Notifier.from_environment({})
    assert not notifier.is_enabled
    assert notifier.ready() is False


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({"WATCHDOG_USEC": "30000000"}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}, None),
    ],
)
def test_watchdog_interval_is_half_of_watchdog_usec_for_this_process_only(
    environ: dict[str, str], expected: float | None
) -> None:
    assert watchdog_interval_seconds(environ) == expected
