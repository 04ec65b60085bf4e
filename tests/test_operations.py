"""Operations: graceful shutdown, prune and retention, SIGHUP reload, healthcheck, host checks."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import signal
import sqlite3
import stat
import sys
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from pulse_relay.config import Settings
from pulse_relay.store import Attempt, IngestRecord, SQLiteStore
from pulse_relay.wiring import PruneOutcome
from tests.helpers import (
    SECRET,
    MakeSettings,
    Served,
    StartRelay,
    free_port,
    make_body,
    post_captured,
    run_cli,
    signed,
    wait_for,
    wait_until,
    write_config,
)

DAY = 86_400.0

# A command sink that hangs on its first run (until killed) and records on the next.
SLOW_COMMAND = """\
import pathlib, sys, time
out = pathlib.Path(sys.argv[1])
data = sys.stdin.buffer.read()
started = out / "started"
if not started.exists():
    started.write_text("first run")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        time.sleep(0.05)
    sys.exit(1)
# Written aside and renamed, so that the test never reads a half-written file.
(out / "delivered.part").write_bytes(data)
(out / "delivered.part").rename(out / "delivered.json")
"""

# A command sink that records its pid, then hangs far beyond any test's patience.
HANGING_COMMAND = """\
import os, pathlib, sys, time
pathlib.Path(sys.argv[1], "pid").write_text(str(os.getpid()))
time.sleep(600)
"""


@pytest.fixture
def serve_processes() -> Iterator[list[Served]]:
    started: list[Served] = []
    yield started
    for served in started:
        served.kill()


def post_webhook(port: int, body: bytes, webhook_id: str) -> int:
    return post_captured(port, body, signed(body, webhook_id=webhook_id))[0]


def command_sink_config(
    tmp_path: Path, script: str, *, grace_seconds: float, timeout_seconds: float
) -> tuple[Path, int, Path]:
    """A serve configuration with a command sink "slow" running `script` with an out folder.

    Returns the configuration file, its port and the out folder.
    """
    script_path = tmp_path / "command.py"
    script_path.write_text(script)
    out = tmp_path / "out"
    out.mkdir()
    port = free_port()
    slow = {
        "name": "slow",
        "type": "command",
        "argv": [sys.executable, str(script_path), str(out)],
        "timeout_seconds": timeout_seconds,
    }
    config = write_config(
        tmp_path, port, server={"shutdown_grace_seconds": grace_seconds}, extra_sinks=[slow]
    )
    return config, port, out


# --- graceful shutdown ---------------------------------------------------------------------


def test_sigterm_during_a_slow_delivery_exits_0_and_the_delivery_completes_after_restart(
    tmp_path: Path, serve_processes: list[Served]
) -> None:
    config, port, out = command_sink_config(
        tmp_path, SLOW_COMMAND, grace_seconds=1.0, timeout_seconds=300
    )
    first = Served(config, tmp_path / "first.log")
    serve_processes.append(first)
    first.wait_listening(port)
    body = make_body("job.created", job_id="job-slow")
    assert post_webhook(port, body, "msg_slow") == 202
    wait_until((out / "started").exists)

    assert first.terminate() == 0, first.log()
    assert not (out / "delivered.json").exists()
    events = [line["event"] for line in first.log_lines()]
    assert "shutdown grace over; unfinished work resumes at next start" in events
    assert events[-1] == "stopped"

    second = Served(config, tmp_path / "second.log")
    serve_processes.append(second)
    second.wait_listening(port)
    wait_until((out / "delivered.json").exists)
    assert json.loads((out / "delivered.json").read_bytes())["id"] == "msg_slow"
    assert second.terminate() == 0, second.log()
    shown = run_cli("show", "msg_slow", "--json", config=config)
    assert json.loads(shown.stdout)["deliveries"]["slow"]["state"] == "delivered"


def process_is_gone(pid: int) -> bool:
    """True once `pid` has exited (a zombie not yet reaped counts as gone)."""
    try:
        stat_line = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat_line.rsplit(")", 1)[1].split()[0] == "Z"


@pytest.mark.parametrize("second", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_second_signal_during_the_grace_period_exits_at_once_with_status_1(
    tmp_path: Path, serve_processes: list[Served], second: signal.Signals
) -> None:
    # A grace period no test waits for: only the second signal can end this shutdown soon.
    config, port, out = command_sink_config(
        tmp_path, HANGING_COMMAND, grace_seconds=900, timeout_seconds=900
    )
    served = Served(config, tmp_path / "serve.log")
    serve_processes.append(served)
    served.wait_listening(port)
    assert post_webhook(port, make_body("job.created", job_id="job-hang"), "msg_hang") == 202
    wait_until(lambda: (out / "pid").exists() and (out / "pid").read_text() != "")
    command_pid = int((out / "pid").read_text())

    served.process.send_signal(signal.SIGTERM)
    wait_until(lambda: "shutting down" in [line["event"] for line in served.log_lines()])
    served.process.send_signal(second)
    assert served.process.wait(timeout=60) == 1, served.log()

    events = [line["event"] for line in served.log_lines()]
    assert "second signal: exiting at once; unfinished work runs again after a restart" in events
    assert "stopped" not in events
    wait_until(lambda: process_is_gone(command_pid))
    # The delivery keeps its lease and no outcome: the next start takes it up again.
    with sqlite3.connect(tmp_path / "relay.db") as db:
        row = db.execute(
            "SELECT state, attempts, lease_until FROM deliveries WHERE sink = 'slow'"
        ).fetchone()
    assert row[:2] == ("pending", 0)
    assert row[2] is not None


# --- prune and retention -------------------------------------------------------------------


def record(
    event_id: str,
    received_at: float,
    *,
    sinks: tuple[str, ...] = ("a",),
    error: str | None = None,
    job_key: str | None = None,
    needs_fetch: bool = False,
) -> IngestRecord:
    return IngestRecord(
        event_id=event_id,
        received_at=received_at,
        source="webhook",
        headers={},
        body=b"{}",
        event_type="job.completed",
        job_id="job-1",
        job_key=job_key,
        error=error,
        sinks=sinks,
        needs_fetch=needs_fetch,
    )


async def finish(store: SQLiteStore, event_id: str, sink: str, outcome: Any) -> None:
    attempt = Attempt(sink, 1, time.time(), 1.0, outcome)
    await store.finish_delivery(event_id, sink, outcome=outcome, attempt=attempt)


async def populate(store: SQLiteStore, now: float) -> None:
    """Events of every kind, old (20 days) unless named new_."""
    old = now - 20 * DAY
    records = [
        record("old_delivered", old, job_key="k1"),
        record("old_half_dead", old, sinks=("a", "b")),
        record("old_pending", old),
        record("old_invalid", old, sinks=(), error="not a JSON object"),
        record("old_repeat", old, job_key="k1"),
        record("old_no_sinks", old, sinks=()),
        record("old_fetching", old, needs_fetch=True),
        record("new_delivered", now - DAY),
    ]
    for item in records:
        assert await store.ingest(item) == "accepted"
    await finish(store, "old_delivered", "a", "delivered")
    await finish(store, "old_half_dead", "a", "delivered")
    await finish(store, "old_half_dead", "b", "dead")
    await finish(store, "new_delivered", "a", "delivered")


async def stored(store: SQLiteStore) -> set[str]:
    return {view.id for view in await store.list_events(limit=100)}


KEPT = {"old_half_dead", "old_pending", "old_fetching", "new_delivered"}


async def test_prune_removes_only_finished_events_older_than_the_limit(tmp_path: Path) -> None:
    now = time.time()
    async with SQLiteStore(tmp_path / "relay.db") as store:
        await populate(store, now)
        view = await store.get_event("old_repeat")
        assert view is not None and view.state == "repeat"

        assert await store.prune(received_before=now - 30 * DAY) == 0
        assert await store.prune(received_before=now - 14 * DAY, batch_size=2) == 4
        assert await stored(store) == KEPT
        async with store.db.execute(
            "SELECT COUNT(*) FROM attempts WHERE event_id = 'old_delivered'"
        ) as cursor:
            assert (await cursor.fetchone())[0] == 0

        # A dead delivery replayed and delivered is finished: the next prune takes it.
        await store.replay(["old_half_dead"], dead_only=True)
        await finish(store, "old_half_dead", "b", "delivered")
        assert await store.prune(received_before=now - 14 * DAY) == 1
        assert "old_half_dead" not in await stored(store)


def test_prune_command_uses_retention_days_or_older_than(tmp_path: Path) -> None:
    import asyncio

    config = write_config(tmp_path, 8787)

    async def setup() -> None:
        async with SQLiteStore(tmp_path / "relay.db") as store:
            await populate(store, time.time())

    asyncio.run(setup())
    # 20-day-old events are younger than 30 days: nothing goes.
    result = run_cli("prune", "--older-than", "30", config=config)
    assert (result.returncode, result.stdout.strip()) == (
        0,
        "0 events older than 30 days pruned",
    )
    # Default: store.retention_days (14).
    result = run_cli("prune", config=config)
    assert (result.returncode, result.stdout.strip()) == (0, "4 events older than 14 days pruned")
    listed = run_cli("events", "--json", config=config)
    assert {json.loads(line)["id"] for line in listed.stdout.splitlines()} == KEPT

    assert run_cli("prune", "--older-than", "-1", config=config).returncode == 2
    # 0: every finished event, however new.
    result = run_cli("prune", "--older-than", "0", config=config)
    assert (result.returncode, result.stdout.strip()) == (0, "1 event older than 0 days pruned")
    listed = run_cli("events", "--json", config=config)
    assert {json.loads(line)["id"] for line in listed.stdout.splitlines()} == KEPT - {
        "new_delivered"
    }
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    assert run_cli("prune", config=write_config(elsewhere, 8787)).returncode == 1


async def test_retention_task_prunes_shortly_after_start(
    make_settings: MakeSettings, tmp_path: Path
) -> None:
    from pulse_relay.app import Relay

    settings = make_settings(
        sinks=[{"type": "file", "name": "a", "directory": str(tmp_path / "a")}],
        store={"retention_days": 14},
    )
    async with SQLiteStore(settings.store.path) as store:
        await populate(store, time.time())
    relay = Relay(settings, retention_first_run_seconds=0.0)
    await relay.start()
    try:
        await wait_for(
            lambda: relay.metrics.registry.get_sample_value("pulse_relay_pruned_events_total") == 4
        )
        remaining = await stored(relay.store)
        # What was pending when the relay started may have been delivered since; never pruned.
        assert remaining == KEPT
    finally:
        await relay.stop()


def hex_signed(body: bytes, webhook_id: str | None) -> dict[str, str]:
    """hmac-sha256-hex headers, computed here rather than by the relay's own helper."""
    digest = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    headers = {"X-DocExtract-Signature": digest, "content-type": "application/json"}
    if webhook_id is not None:
        headers["X-Webhook-Id"] = webhook_id
    return headers


def delivered_count(database: Path) -> int:
    with closing(sqlite3.connect(database)) as db:
        row = db.execute("SELECT COUNT(*) FROM deliveries WHERE state = 'delivered'").fetchone()
    return int(row[0])


@pytest.mark.parametrize("scheme", ["standard", "hmac-sha256-hex"])
def test_a_request_replayed_after_its_event_was_pruned_is_still_a_duplicate(
    tmp_path: Path, serve_processes: list[Served], scheme: str
) -> None:
    port = free_port()
    results = {"name": "results", "type": "file", "directory": str(tmp_path / "results")}
    config = write_config(
        tmp_path,
        port,
        verify={"scheme": scheme},
        sinks=[{**results, "events": ["job.processing"]}],
    )
    serve_processes.append(Served.start(config, port, tmp_path / "serve.log"))
    captured: list[tuple[bytes, dict[str, str]]] = []
    for number, webhook_id in enumerate(["msg_pruned", None]):
        body = make_body("job.processing", job_id=f"job-pruned-{number}")
        if scheme == "standard":
            captured.append((body, signed(body, webhook_id=f"msg_pruned_{number}")))
        else:
            # With and without an id header (then the dedupe key is the body's SHA-256).
            captured.append((body, hex_signed(body, webhook_id)))
    for body, headers in captured:
        assert post_captured(port, body, headers) == (202, "accepted")
    wait_until(lambda: delivered_count(tmp_path / "relay.db") == len(captured))

    result = run_cli("prune", "--older-than", "0", config=config)
    assert (result.returncode, result.stdout.strip()) == (0, "2 events older than 0 days pruned")
    assert run_cli("events", "--json", config=config).stdout == ""
    for body, headers in captured:
        assert post_captured(port, body, headers) == (200, "duplicate")
    assert run_cli("events", "--json", config=config).stdout == ""
    fresh = make_body("job.processing", job_id="job-fresh")
    headers = signed(fresh) if scheme == "standard" else hex_signed(fresh, "msg_fresh")
    assert post_captured(port, fresh, headers) == (202, "accepted")
    assert serve_processes[0].terminate() == 0


async def test_ids_are_forgotten_dedupe_days_after_pruning(
    make_settings: MakeSettings,
) -> None:
    from pulse_relay.app import Relay

    now = [time.time()]
    settings = make_settings(
        verify={"scheme": "hmac-sha256-hex", "secrets": [SECRET]},
        store={"retention_days": 14, "dedupe_days": 30},
    )
    relay = Relay(settings, clock=lambda: now[0], retention_first_run_seconds=3600)
    await relay.start()
    try:
        body = make_body("job.processing", job_id="job-forgotten")
        headers = hex_signed(body, "msg_forgotten")
        assert await asyncio.to_thread(post_captured, relay.port or 0, body, headers) == (
            202,
            "accepted",
        )
        now[0] += 15 * DAY
        assert await relay.prune(older_than_days=14) == PruneOutcome(events=1, forgotten_ids=0)
        now[0] += 29 * DAY  # 29 days after pruning: still known
        assert await relay.prune(older_than_days=14) == PruneOutcome(events=0, forgotten_ids=0)
        assert await asyncio.to_thread(post_captured, relay.port or 0, body, headers) == (
            200,
            "duplicate",
        )
        now[0] += 2 * DAY
        assert await relay.prune(older_than_days=14) == PruneOutcome(events=0, forgotten_ids=1)
        # Forgotten: the same request is new again (this scheme has no timestamp).
        assert await asyncio.to_thread(post_captured, relay.port or 0, body, headers) == (
            202,
            "accepted",
        )
    finally:
        await relay.stop()


# --- SIGHUP --------------------------------------------------------------------------------


def test_sighup_reloads_sinks_and_refuses_a_broken_configuration(
    tmp_path: Path, serve_processes: list[Served]
) -> None:
    port = free_port()
    config = write_config(tmp_path, port)
    served = Served(config, tmp_path / "serve.log")
    serve_processes.append(served)
    served.wait_listening(port)

    def reloads(outcome_event: str) -> int:
        return sum(line["event"] == outcome_event for line in served.log_lines())

    # A second file sink appears; the first one keeps working.
    more = {"name": "more", "type": "file", "directory": str(tmp_path / "more")}
    write_config(tmp_path, port, extra_sinks=[more])
    served.process.send_signal(signal.SIGHUP)
    wait_until(lambda: reloads("configuration reloaded") == 1)
    assert post_webhook(port, make_body("job.created", job_id="job-a"), "msg_a") == 202
    wait_until((tmp_path / "more" / "job-a.json").exists)
    wait_until((tmp_path / "results" / "job-a.json").exists)

    # A broken file is refused; the running configuration stays.
    good = config.read_text()
    config.write_text(good + "\n[server\n")
    served.process.send_signal(signal.SIGHUP)
    wait_until(
        lambda: reloads("reload refused: configuration invalid; keeping the running one") == 1
    )
    assert post_webhook(port, make_body("job.created", job_id="job-b"), "msg_b") == 202
    wait_until((tmp_path / "more" / "job-b.json").exists)

    # A change outside sinks and log is reported as needing a restart.
    write_config(tmp_path, port, extra_sinks=[more], pulse={"timeout_seconds": 7.0})
    served.process.send_signal(signal.SIGHUP)
    wait_until(lambda: reloads("configuration reloaded") == 2)

    def restart_warnings() -> list[dict[str, Any]]:
        lines = served.log_lines()
        return [line for line in lines if line["event"].startswith("changes in these")]

    # Logged right after "configuration reloaded": wait for it rather than race it.
    wait_until(lambda: bool(restart_warnings()))
    assert restart_warnings()[-1]["sections"] == ["pulse"]
    assert served.terminate() == 0, served.log()
    assert SECRET not in served.log()


async def test_reload_keeps_pending_work_and_serves_it_with_the_new_sinks(
    start_relay: StartRelay, make_settings: MakeSettings, tmp_path: Path
) -> None:
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the sink wants a directory")
    relay = await start_relay(
        sinks=[
            {
                "type": "file",
                "name": "files",
                "directory": str(blocked / "sub"),
                "retry_initial_seconds": 0.05,
                "retry_max_seconds": 0.1,
            }
        ]
    )
    body = make_body("job.created", job_id="job-r")
    import aiohttp

    async with (
        aiohttp.ClientSession() as session,
        session.post(relay.webhook_url, data=body, headers=signed(body, webhook_id="msg_r")) as r,
    ):
        assert r.status == 202

    async def attempted() -> bool:
        view = await relay.store.get_event("msg_r")
        return view is not None and view.deliveries["files"]["attempts"] >= 1

    await wait_for(attempted)
    fixed: Settings = make_settings(
        sinks=[{"type": "file", "name": "files", "directory": str(tmp_path / "fixed")}]
    )
    assert await relay.reload(fixed) == []

    async def delivered() -> bool:
        view = await relay.store.get_event("msg_r")
        return view is not None and view.deliveries["files"]["state"] == "delivered"

    # The file is in place a moment before the outcome is recorded: wait for the record.
    await wait_for(delivered)
    assert (tmp_path / "fixed" / "job-r.json").exists()
    assert relay.dispatcher is not None and relay.dispatcher.is_running
    assert await relay.readiness() == []


# --- healthcheck ---------------------------------------------------------------------------


def test_healthcheck_passes_against_serve_and_fails_against_a_dead_port(
    tmp_path: Path, serve_processes: list[Served]
) -> None:
    port, admin_port = free_port(), free_port()
    # The admin listener on every interface (so with a token), as in a container.
    admin = {"host": "0.0.0.0", "token": "probe-needs-no-token"}
    config = write_config(tmp_path, port, admin_port=admin_port, admin=admin)
    served = Served(config, tmp_path / "serve.log")
    serve_processes.append(served)
    served.wait_listening(admin_port)

    # Derived from the configuration: the admin listener, 0.0.0.0 probed on 127.0.0.1.
    result = run_cli("healthcheck", config=config)
    assert result.returncode == 0, result.stderr
    assert f"http://127.0.0.1:{admin_port}/healthz answered 200" in result.stdout
    ready = run_cli("healthcheck", "--ready", config=config)
    assert ready.returncode == 0, ready.stderr
    assert f"http://127.0.0.1:{admin_port}/readyz answered 200" in ready.stdout
    # The public port answers /healthz, and nothing of the admin side.
    explicit = run_cli("healthcheck", "--url", f"http://127.0.0.1:{port}/healthz")
    assert explicit.returncode == 0
    missing = run_cli("healthcheck", "--url", f"http://127.0.0.1:{port}/readyz")
    assert missing.returncode == 1 and "answered 404" in missing.stderr


def test_healthcheck_without_an_admin_listener_probes_the_ingress(
    tmp_path: Path, serve_processes: list[Served]
) -> None:
    port = free_port()
    config = write_config(tmp_path, port, admin={"enabled": False})
    served = Served(config, tmp_path / "serve.log")
    serve_processes.append(served)
    served.wait_listening(port)
    result = run_cli("healthcheck", config=config)
    assert result.returncode == 0, result.stderr
    assert f"http://127.0.0.1:{port}/healthz answered 200" in result.stdout
    ready = run_cli("healthcheck", "--ready", config=config)
    assert ready.returncode == 1
    assert "admin.enabled is false" in ready.stderr

    assert served.terminate() == 0
    dead = run_cli("healthcheck", "--timeout", "2", config=config)
    assert dead.returncode == 1
    assert "unhealthy: cannot reach" in dead.stderr


# --- check-config on this host -------------------------------------------------------------


def test_check_config_reports_unwritable_sink_directories_and_missing_commands(
    tmp_path: Path,
) -> None:
    not_a_dir = tmp_path / "plain-file"
    not_a_dir.write_text("")
    not_executable = tmp_path / "script.sh"
    not_executable.write_text("#!/bin/sh\n")
    not_executable.chmod(stat.S_IRUSR | stat.S_IWUSR)
    extra = [
        {"name": "blocked", "type": "file", "directory": str(not_a_dir / "results")},
        {"name": "ghost", "type": "command", "argv": ["pulse-relay-no-such-program-anywhere"]},
        {"name": "noexec", "type": "command", "argv": [str(not_executable)]},
        {"name": "relative", "type": "command", "argv": ["./script.sh"], "cwd": str(tmp_path)},
        {
            "name": "off",
            "type": "command",
            "argv": ["pulse-relay-no-such-program-anywhere"],
            "enabled": False,
        },
    ]
    config = write_config(tmp_path, 8787, extra_sinks=extra)
    result = run_cli("check-config", config=config)
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert lines[0] == "pulse-relay: configuration error:"
    problems = lines[1:]
    assert problems == [
        f"sinks[1].directory (blocked): {not_a_dir} is not a directory (in {config})",
        "sinks[2].argv (ghost): command 'pulse-relay-no-such-program-anywhere' "
        f"not found on PATH (in {config})",
        f"sinks[3].argv (noexec): command '{not_executable}' is not executable (in {config})",
        f"sinks[4].argv (relative): command './script.sh' is not executable (in {config})",
    ]

    not_executable.chmod(stat.S_IRWXU)
    not_a_dir.unlink()
    for sink in extra:
        if sink.get("argv") == ["pulse-relay-no-such-program-anywhere"]:
            sink["argv"] = ["sh", "-c", "true"]
    fixed = write_config(tmp_path, 8787, extra_sinks=extra)
    result = run_cli("check-config", config=fixed)
    assert result.returncode == 0, result.stderr
    assert os.access(tmp_path, os.W_OK)
