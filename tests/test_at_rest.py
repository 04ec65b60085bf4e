"""What the real `serve` leaves behind, hands on and logs: file modes, command environment."""

from __future__ import annotations

import json
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import SECRET, make_body, signed
from tests.helpers import Served, free_port
from tests.test_operations import wait_until


@pytest.fixture
def serve_processes() -> Iterator[list[Served]]:
    started: list[Served] = []
    yield started
    for served in started:
        served.kill()


def post(port: int, body: bytes, headers: dict[str, str]) -> tuple[int, dict[str, object]]:
    """POST to the webhook path; (status, JSON answer) whatever the status."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/webhooks/pulse", data=body, headers=headers, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status), json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def mode_of(path: Path) -> int:
    return path.stat().st_mode & 0o7777


def test_a_real_run_under_a_permissive_umask_leaves_only_private_files(
    tmp_path: Path, serve_processes: list[Served]
) -> None:
    port = free_port()
    state, results, lines = tmp_path / "state", tmp_path / "results", tmp_path / "lines"
    config = tmp_path / "relay.toml"
    config.write_text(
        f"""
[server]
host = "127.0.0.1"
port = {port}
[verify]
secrets = ["{SECRET}"]
[store]
path = "{state / "nested" / "relay.db"}"
[log]
format = "json"
[[sinks]]
name = "files"
type = "file"
events = ["job.processing"]
directory = "{results}"
filename = "{{date}}/{{job_id}}.json"
[[sinks]]
name = "lines"
type = "file"
events = ["job.processing"]
format = "jsonl"
directory = "{lines}"
filename = "by-type/{{type}}.jsonl"
"""
    )
    previous = os.umask(0o022)
    try:
        serve_processes.append(Served.start(config, port, tmp_path / "serve.log"))
    finally:
        os.umask(previous)
    body = make_body("job.processing", job_id="job-modes")
    assert post(port, body, signed(body))[0] == 202
    wait_until(lambda: any(results.rglob("job-modes.json")) and any(lines.rglob("*.jsonl")))
    database = state / "nested" / "relay.db"
    written = [*results.rglob("job-modes.json"), *lines.rglob("*.jsonl")]
    # While the relay runs, the WAL and its index exist beside the database.
    store_files = [database, Path(f"{database}-wal"), Path(f"{database}-shm")]
    assert {path.name: mode_of(path) for path in store_files + written} == {
        path.name: 0o600 for path in store_files + written
    }
    created = [state, state / "nested", results, lines, *(p.parent for p in written)]
    assert {str(path): mode_of(path) for path in created} == {str(p): 0o700 for p in created}
    assert serve_processes[0].terminate() == 0


COMMAND_DUMPING_ITS_ENVIRONMENT = """\
import json, os, sys
with open(sys.argv[1], "w") as out:
    json.dump(dict(os.environ), out)
"""


def test_a_command_sink_sees_none_of_the_relays_environment(
    tmp_path: Path, serve_processes: list[Served], monkeypatch: pytest.MonkeyPatch
) -> None:
    port = free_port()
    script = tmp_path / "dump_env.py"
    script.write_text(COMMAND_DUMPING_ITS_ENVIRONMENT)
    dumped = tmp_path / "env.json"
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    config = tmp_path / "relay.toml"
    config.write_text(
        f"""
[server]
host = "127.0.0.1"
port = {port}
[store]
path = "{tmp_path / "relay.db"}"
[log]
format = "json"
[[sinks]]
name = "script"
type = "command"
events = ["job.processing"]
argv = ["{sys.executable}", "{script}", "{dumped}"]
env = {{ APP_MODE = "relay" }}
"""
    )
    canary = f"canary-{os.getpid()}-{port}"
    # The secret reaches the relay the usual ways: the well-known variables.
    monkeypatch.setenv("PULSE_WEBHOOK_SECRET", SECRET)
    monkeypatch.setenv("PULSE_API_KEY", "relay-api-key-" + canary)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(credentials))
    monkeypatch.setenv("RELAY_ONLY_" + canary.replace("-", "_").upper(), canary)
    monkeypatch.setenv("LC_ALL", "C.UTF-8")
    monkeypatch.setenv("TZ", "UTC")
    serve_processes.append(Served.start(config, port, tmp_path / "serve.log"))
    body = make_body("job.processing", job_id="job-env")
    assert post(port, body, signed(body, webhook_id="msg_env"))[0] == 202
    wait_until(dumped.exists)
    wait_until(lambda: dumped.stat().st_size > 0 and dumped.read_text().endswith("}"))
    seen = json.loads(dumped.read_text())
    allowed = {"PATH", "LANG", "TZ", "HOME"}
    inherited = {
        name: value
        for name, value in os.environ.items()
        if name in allowed or name.startswith("LC_")
    }
    assert seen == {
        **inherited,
        "APP_MODE": "relay",
        "PULSE_EVENT_ID": "msg_env",
        "PULSE_EVENT_TYPE": "job.processing",
        "PULSE_JOB_ID": "job-env",
        "PULSE_JOB_STATUS": "",
    }
    assert canary not in json.dumps(seen)
    assert serve_processes[0].terminate() == 0


def test_a_200_kb_event_type_reaches_no_command_and_no_log_line(
    tmp_path: Path, serve_processes: list[Served]
) -> None:
    port = free_port()
    ran = tmp_path / "ran"
    config = tmp_path / "relay.toml"
    config.write_text(
        f"""
[server]
host = "127.0.0.1"
port = {port}
[verify]
secrets = ["{SECRET}"]
[store]
path = "{tmp_path / "relay.db"}"
[log]
format = "json"
level = "debug"
[[sinks]]
name = "script"
type = "command"
events = ["*"]
argv = ["/usr/bin/touch", "{ran}"]
"""
    )
    served = Served.start(config, port, tmp_path / "serve.log")
    serve_processes.append(served)
    huge = "job." + "x" * 200_000
    body = make_body(huge)
    status, answer = post(port, body, signed(body, webhook_id="msg_huge_type"))
    assert (status, answer["status"]) == (200, "invalid")
    # An ordinary event afterwards is delivered: the command sink works.
    body = make_body("job.processing", job_id="job-after")
    assert post(port, body, signed(body, webhook_id="msg_after"))[0] == 202
    wait_until(ran.exists)
    assert served.terminate() == 0
    lines = served.log().splitlines()
    assert any('"webhook invalid"' in line and "msg_huge_type" in line for line in lines)
    assert max(len(line) for line in lines) < 4096
    assert "x" * 600 not in served.log()
