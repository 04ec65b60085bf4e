"""A relay killed with SIGKILL mid-delivery delivers that work after the next start."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from pulse_relay.ingress.signature import sign_headers
from tests.helpers import SECRET, Served, free_port, make_body, run_cli, wait_until, write_config

# Blocks while the "block" marker exists (the delivery in flight when the relay dies),
# otherwise records the envelope.
SLOW_COMMAND = """\
import json, os, pathlib, sys, time
out = pathlib.Path(sys.argv[1])
data = sys.stdin.buffer.read()
event_id = json.loads(data)["id"]
(out / "pids").open("a").write(f"{os.getpid()}\\n")
while (out / "block").exists():
    (out / "started").touch()
    time.sleep(0.05)
(out / (event_id + ".json")).write_bytes(data)
"""


@pytest.fixture
def out(tmp_path: Path) -> Iterator[Path]:
    folder = tmp_path / "out"
    folder.mkdir()
    yield folder
    # The command ran in its own session, so it outlives a SIGKILLed relay: end it here.
    pids = folder / "pids"
    if pids.exists():
        for pid in pids.read_text().split():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(int(pid), signal.SIGKILL)


# With a lease far longer than this deadline, the restarted relay delivers in time
# only by taking back at start the lease its killed predecessor held.
TAKE_BACK_DEADLINE_SECONDS = 10.0


@pytest.mark.parametrize("lease_seconds", [1, 600], ids=["short-lease", "lease-taken-back"])
def test_delivery_in_flight_when_the_relay_is_killed_is_made_after_restart(
    tmp_path: Path, out: Path, lease_seconds: int
) -> None:
    port = free_port()
    script = tmp_path / "slow.py"
    script.write_text(SLOW_COMMAND)
    command = {
        "name": "cmd",
        "type": "command",
        "argv": [sys.executable, str(script), str(out)],
        "events": ["job.*"],
        "retry_initial_seconds": 0.05,
    }
    config = write_config(
        tmp_path, port, delivery={"lease_seconds": lease_seconds}, sinks=[command]
    )
    (out / "block").touch()
    first = Served.start(config, port, tmp_path / "first.log")
    try:
        body = make_body(event_type="job.created", job_id="job-crash")
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/webhooks/pulse",
            data=body,
            headers={**sign_headers(SECRET, "msg_crash", body), "content-type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 202
        wait_until((out / "started").exists)
    finally:
        first.kill()
    assert first.process.returncode == -signal.SIGKILL

    listed = run_cli("events", "--json", config=config)
    row = json.loads(listed.stdout)
    assert row["deliveries"]["cmd"]["state"] == "pending"
    assert not (out / "msg_crash.json").exists()

    (out / "block").unlink()
    second = Served.start(config, port, tmp_path / "second.log")
    try:
        wait_until((out / "msg_crash.json").exists)

        def delivered() -> bool:
            rows = run_cli("events", "--json", config=config).stdout
            return json.loads(rows)["deliveries"]["cmd"]["state"] == "delivered"

        wait_until(delivered, timeout_seconds=TAKE_BACK_DEADLINE_SECONDS)
    finally:
        returncode = second.terminate()
    assert returncode == 0, second.log()
    envelope = json.loads((out / "msg_crash.json").read_bytes())
    assert (envelope["id"], envelope["job_id"]) == ("msg_crash", "job-crash")
    integrity = subprocess.run(
        [
            sys.executable,
            "-c",
            f"import sqlite3; print(sqlite3.connect({str(tmp_path / 'relay.db')!r})"
            ".execute('PRAGMA integrity_check').fetchone()[0])",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert integrity.stdout.strip() == "ok"
