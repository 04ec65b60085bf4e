"""Idle connections that use up the relay's file descriptors (issue 13, scaled down).

The relay runs as `pulse-relay serve` with a small RLIMIT_NOFILE; the test holds
more idle connections than that allows, then sends a genuine webhook. The
webhook must be answered once the idle connections are closed at the read
timeout, and the failed accept() calls must not flood the log.
"""

from __future__ import annotations

import http.client
import json
import os
import resource
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.helpers import free_port, make_body, signed, write_config

FILE_LIMIT = 64
READ_TIMEOUT_SECONDS = 1.0


def _lower_file_limit() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (FILE_LIMIT, hard))


def _open_files(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _wait(condition: Callable[[], bool], what: str, timeout_seconds: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} within {timeout_seconds} s")
        time.sleep(0.02)


def _stop(process: subprocess.Popen[bytes], log_path: Path) -> None:
    """SIGTERM, then wait for the exit; a relay that hangs is killed and its log shown."""
    process.terminate()
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired as error:
        process.kill()
        process.wait()
        tail = log_path.read_text()[-4000:]
        message = f"serve did not exit within 60 s of SIGTERM; log ends:\n{tail}"
        raise AssertionError(message) from error


@pytest.mark.timeout(150)
@pytest.mark.skipif(not Path("/proc/self/fd").exists(), reason="needs /proc")
def test_a_webhook_is_answered_after_idle_connections_exhaust_the_file_limit(
    tmp_path: Path,
) -> None:
    port = free_port()
    config = write_config(
        tmp_path,
        port,
        sinks=[],
        server={"read_timeout_seconds": READ_TIMEOUT_SECONDS},
        admin={"enabled": False},
        # A closed local port: the accepted event's fetch fails at once, never waits on DNS.
        pulse={"base_url": f"http://127.0.0.1:{free_port()}"},
    )
    log_path = tmp_path / "serve.log"
    with log_path.open("w") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "pulse_relay", "--config", str(config), "serve"],
            stdout=subprocess.DEVNULL,
            stderr=log_file,
            preexec_fn=_lower_file_limit,
        )
    idle: list[socket.socket] = []
    try:
        _wait(lambda: "listening" in log_path.read_text(), "serve did not start")
        # More idle connections than the relay has descriptors left.
        for _ in range(FILE_LIMIT - _open_files(process.pid) + 40):
            idle.append(socket.create_connection(("127.0.0.1", port)))
        _wait(
            lambda: "cannot accept connections" in log_path.read_text(),
            "the relay did not run out of descriptors",
        )

        body = make_body()
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        connection.request("POST", "/webhooks/pulse", body, signed(body, webhook_id="msg_late"))
        answer = connection.getresponse()
        assert (answer.status, json.loads(answer.read())["status"]) == (202, "accepted")
        connection.close()
    finally:
        for sock in idle:
            sock.close()
        _stop(process, log_path)

    lines = [json.loads(line) for line in log_path.read_text().splitlines() if line[:1] == "{"]
    failures = [line for line in lines if line["event"].startswith("cannot accept connections")]
    assert failures, "the relay never ran out of descriptors"
    assert all("Too many open files" in line["reason"] for line in failures)
    assert "Traceback" not in log_path.read_text()
    # At most a few lines a second, however often accept() fails.
    per_second = Counter(line["timestamp"][:19] for line in failures)
    assert max(per_second.values()) <= 5, per_second
