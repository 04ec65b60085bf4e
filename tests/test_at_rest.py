"""What the real `serve` leaves behind, hands on and logs: file modes, command environment."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import (
    SECRET,
    Served,
    free_port,
    make_body,
    post_captured,
    signed,
    wait_until,
    write_config,
)


def command_sink(argv: list[str], *, events: list[str], **more: Any) -> dict[str, Any]:
    """A command sink named "script"."""
    return {"name": "script", "type": "command", "events": events, "argv": argv, **more}


def mode_of(path: Path) -> int:
    return path.stat().st_mode & 0o7777


def test_a_real_run_under_a_permissive_umask_leaves_only_private_files(tmp_path: Path) -> None:
    port = free_port()
    state, results, lines = tmp_path / "state", tmp_path / "results", tmp_path / "lines"
    database = state / "nested" / "relay.db"
    file_sink = {"name": "results", "type": "file", "directory": str(results)}
    config = write_config(
        tmp_path,
        port,
        store={"path": str(database)},
        sinks=[
            {**file_sink, "filename": "{date}/{job_id}.json"},
            {
                **file_sink,
                "name": "lines",
                "format": "jsonl",
                "directory": str(lines),
                "filename": "by-type/{type}.jsonl",
            },
        ],
    )
    previous = os.umask(0o022)
    try:
        served = Served.start(config, port, tmp_path / "serve.log")
    finally:
        os.umask(previous)
    try:
        body = make_body("job.processing", job_id="job-modes")
        assert post_captured(port, body, signed(body)) == (202, "accepted")
        wait_until(lambda: any(results.rglob("job-modes.json")) and any(lines.rglob("*.jsonl")))
        written = [*results.rglob("job-modes.json"), *lines.rglob("*.jsonl")]
        # While the relay runs, the WAL and its index exist beside the database.
        store_files = [database, Path(f"{database}-wal"), Path(f"{database}-shm")]
        assert {path.name: mode_of(path) for path in store_files + written} == {
            path.name: 0o600 for path in store_files + written
        }
        created = [state, state / "nested", results, lines, *(p.parent for p in written)]
        assert {str(path): mode_of(path) for path in created} == {str(p): 0o700 for p in created}
        assert served.terminate() == 0
    finally:
        served.kill()


COMMAND_DUMPING_ITS_ENVIRONMENT = """\
import json, os, sys
with open(sys.argv[1], "w") as out:
    json.dump(dict(os.environ), out)
"""


def test_a_command_sink_sees_none_of_the_relays_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = free_port()
    script = tmp_path / "dump_env.py"
    script.write_text(COMMAND_DUMPING_ITS_ENVIRONMENT)
    dumped = tmp_path / "env.json"
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "pulse-api-key").write_text("credential-api-key")
    argv = [sys.executable, str(script), str(dumped)]
    sink = command_sink(argv, events=["job.processing"], env={"APP_MODE": "relay"})
    config = write_config(tmp_path, port, extra_sinks=[sink])
    canary = f"canary-{os.getpid()}-{port}"
    # The relay reads its secrets the usual ways: the well-known variables and a
    # credentials directory.
    monkeypatch.setenv("PULSE_WEBHOOK_SECRET", SECRET)
    monkeypatch.setenv("PULSE_API_KEY", "relay-api-key-" + canary)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(credentials))
    monkeypatch.setenv("PULSE_RELAY_PULSE__API_KEY_FILE", "pulse-api-key")
    monkeypatch.setenv("RELAY_ONLY_" + canary.replace("-", "_").upper(), canary)
    monkeypatch.setenv("LC_ALL", "C.UTF-8")
    monkeypatch.setenv("TZ", "UTC")
    served = Served.start(config, port, tmp_path / "serve.log")
    try:
        body = make_body("job.processing", job_id="job-env")
        assert post_captured(port, body, signed(body, webhook_id="msg_env")) == (202, "accepted")
        wait_until(lambda: dumped.exists() and dumped.read_text().endswith("}"))
        assert served.terminate() == 0
    finally:
        served.kill()
    seen = json.loads(dumped.read_text())
    inherited = {
        name: value
        for name, value in os.environ.items()
        if name in {"PATH", "LANG", "TZ", "HOME"} or name.startswith("LC_")
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


def test_a_200_kb_event_type_reaches_no_command_and_no_log_line(tmp_path: Path) -> None:
    port = free_port()
    ran = tmp_path / "ran"
    sink = command_sink(["/usr/bin/touch", str(ran)], events=["*"])
    config = write_config(tmp_path, port, extra_sinks=[sink], log={"level": "debug"})
    served = Served.start(config, port, tmp_path / "serve.log")
    try:
        body = make_body("job." + "x" * 200_000)
        answer = post_captured(port, body, signed(body, webhook_id="msg_huge_type"))
        assert answer == (200, "invalid")
        # An ordinary event afterwards is delivered: the command sink works.
        body = make_body("job.processing", job_id="job-after")
        assert post_captured(port, body, signed(body, webhook_id="msg_after")) == (202, "accepted")
        wait_until(ran.exists)
        assert served.terminate() == 0
    finally:
        served.kill()
    lines = served.log().splitlines()
    assert any('"webhook invalid"' in line and "msg_huge_type" in line for line in lines)
    assert max(len(line) for line in lines) < 4096
    assert "x" * 600 not in served.log()
