"""The command line as real subprocesses: serve, check-config, events, show, replay."""

from __future__ import annotations

import base64
import json
import os
import re
import socket
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import pytest
from standardwebhooks.webhooks import Webhook

from tests.helpers import (
    SECRET,
    Served,
    config_toml,
    free_port,
    make_body,
    run_cli,
    signed,
    wait_for,
    write_config,
)

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Served, int, Path]]:
    """`pulse-relay serve` as a subprocess; yields (served, port, config)."""
    port = free_port()
    config = write_config(tmp_path, port)
    served = Served.start(config, port, tmp_path / "serve.log")
    yield served, port, config
    served.kill()


def test_check_config_accepts_the_example_and_prints_no_secret(tmp_path: Path) -> None:
    result = run_cli("check-config", config=REPO / "config.example.toml")
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["server"]["port"] == 8787
    assert "configuration OK" in result.stderr

    secret_config = write_config(tmp_path, 8787)
    result = run_cli("check-config", config=secret_config)
    assert result.returncode == 0, result.stderr
    assert SECRET not in result.stdout + result.stderr
    assert json.loads(result.stdout)["verify"]["secrets"] == ["**********"]


def test_a_plain_http_pulse_api_draws_a_warning_in_check_config_and_at_serve_start(
    tmp_path: Path,
) -> None:
    port = free_port()
    base_url = "http://pulse-user:url-password@pulse.internal:8080?key=query-key"
    config = write_config(tmp_path, port, pulse={"base_url": base_url})
    result = run_cli("check-config", config=config)
    assert result.returncode == 0, result.stderr
    warning = (
        "warning: pulse.base_url: http://**********@pulse.internal:8080?********** is not"
        " https: the API key and the job results would cross the network unencrypted"
    )
    assert warning in result.stderr.splitlines()
    for secret in ("pulse-user", "url-password", "query-key"):
        assert secret not in result.stdout + result.stderr
    served = Served.start(config, port, tmp_path / "serve.log")
    try:
        assert served.terminate() == 0
    finally:
        served.kill()
    (line,) = [line for line in served.log_lines() if line["event"] == "risky configuration"]
    assert line["level"] == "warning"
    assert line["detail"] == warning.removeprefix("warning: ")
    assert "url-password" not in served.log()


def test_loopback_or_https_pulse_api_draws_no_warning(tmp_path: Path) -> None:
    for base_url in ("http://127.0.0.1:8788", "https://api.runpulse.com"):
        config = write_config(tmp_path, 8787, pulse={"base_url": base_url})
        config.chmod(0o600)  # it holds the webhook secret
        result = run_cli("check-config", config=config)
        assert result.returncode == 0, result.stderr
        assert "warning: pulse.base_url" not in result.stderr


def raw_post(port: int, head: str, body: bytes) -> bytes:
    """Send a request byte for byte (headers no client library would let through)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
        connection.sendall(head.encode() + f"Content-Length: {len(body)}\r\n\r\n".encode())
        connection.sendall(body)
        return connection.recv(65536)


async def test_control_characters_in_a_signed_type_or_header_print_as_escapes(
    served: tuple[Served, int, Path],
) -> None:
    _, port, config = served
    hostile_type = "job.\x1b[2J\x1b[31mcompleted\r\nmsg_forged  accepted\u202e"
    body = json.dumps({"type": hostile_type, "data": {"job_id": "job-ctl"}}).encode()
    headers = signed(body, webhook_id="msg_ctl")
    head = "POST /webhooks/pulse HTTP/1.1\r\nHost: relay\r\nConnection: close\r\n"
    head += "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    # HTTP refuses C0 controls in headers; C1 ones (CSI is \x9b) and bidi overrides pass.
    head += "User-Agent: agent\x9b2J\u202eevil\r\n"
    answer = raw_post(port, head, body)
    assert answer.startswith(b"HTTP/1.1 202"), answer

    for command in (["events"], ["show", "msg_ctl"]):
        # Bytes, not text: universal newlines would turn a raw \r into \n unseen.
        result = subprocess.run(
            [sys.executable, "-m", "pulse_relay", "--config", str(config), *command],
            capture_output=True,
            timeout=30,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        stdout = result.stdout.decode()
        unprintable = [c for c in stdout if c != "\n" and (ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0)]
        assert unprintable == [], command
        assert "\u202e" not in stdout
        assert "job.\\x1b[2J\\x1b[31mcompleted\\r\\nmsg_forged  accepted\\u202e" in stdout
    shown = run_cli("show", "msg_ctl", config=config).stdout
    assert "user-agent: agent\\x9b2J\\u202eevil" in shown
    # The JSON output keeps the exact text (JSON escapes it).
    document = json.loads(run_cli("show", "msg_ctl", "--json", config=config).stdout)
    assert document["type"] == hostile_type


@pytest.mark.parametrize(
    ("content", "key"),
    [
        (config_toml(server={"port": "eighty"}), "server.port"),
        (config_toml(server={"prot": 1}), "server.prot"),
        (config_toml(verify={"secrets": ["whsec_!!!"]}), "verify.secrets[0]"),
        (
            config_toml(sinks=[{"name": "a", "type": "http", "url": "not a url"}]),
            "sinks[0].url",
        ),
        (config_toml(sinks=[{"name": "a", "type": "carrier-pigeon"}]), "sinks[0]"),
        # Not TOML at all: no factory writes this.
        ("[server\nport = 1\n", "line 1"),
    ],
)
def test_check_config_names_the_broken_key(tmp_path: Path, content: str, key: str) -> None:
    config = tmp_path / "broken.toml"
    config.write_text(content)
    result = run_cli("check-config", config=config)
    assert result.returncode == 1
    assert key in result.stderr
    assert str(config) in result.stderr


def test_missing_config_file_is_a_user_error(tmp_path: Path) -> None:
    result = run_cli("check-config", config=tmp_path / "nowhere.toml")
    assert result.returncode == 1
    assert "nowhere.toml" in result.stderr


def test_usage_errors_exit_2() -> None:
    assert run_cli("no-such-command").returncode == 2
    assert run_cli("events", "--no-such-option").returncode == 2
    # A bad filter value is the user's error (1), refused as the API refuses it.
    assert run_cli("events", "--limit", "zero").returncode == 1


def test_events_without_a_store_says_so(tmp_path: Path) -> None:
    result = run_cli("events", config=write_config(tmp_path, 8787))
    assert result.returncode == 1
    assert "no store" in result.stderr


# Every script pays for what `events` imports: on SQLite it needs neither the
# PostgreSQL driver, nor an HTTP stack, nor the daemon's logging setup, nor the
# sinks and ingress rules that only validate fields this configuration leaves out,
# nor the signature schemes and the ed25519 library (a secret is only decoded), nor
# the store proper (its writer, aiosqlite, the migrations' run, the write side's
# records and the contract's protocols): it reads the file with sqlite3.
_EVENTS_THEN_LIST_MODULES = """
import json, sys
from pulse_relay.cli import cli
cli(["--config", sys.argv[1], "events"], prog_name="pulse-relay", standalone_mode=False)
heavy = ("psycopg", "psycopg_pool", "aiohttp", "structlog", "rich", "pulse_relay.logs",
         "pulse_relay.sinks", "pulse_relay.ingress.edge",
         "pulse_relay.ingress.signature", "cryptography", "aiosqlite", "pulse_relay.wiring",
         "pulse_relay.store.sqlite.store", "pulse_relay.store.sqlite.plumbing",
         "pulse_relay.store.model", "pulse_relay.store.contract", "pulse_relay.store.decide")
print(json.dumps(sorted(name for name in heavy if name in sys.modules)))
"""


def test_events_on_sqlite_imports_no_postgres_http_or_logging_stack(tmp_path: Path) -> None:
    config = tmp_path / "relay.toml"
    # A secret is checked when the configuration is read, without the signature schemes.
    secret = "whsec_" + base64.b64encode(b"k" * 24).decode()
    config.write_text(
        f'[verify]\nsecrets = ["{secret}"]\n[store]\npath = "{tmp_path / "relay.db"}"\n'
    )
    assert run_cli("watch", "job-1", config=config).returncode == 0
    result = subprocess.run(
        [sys.executable, "-c", _EVENTS_THEN_LIST_MODULES, str(config)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    table, loaded = result.stdout.splitlines()
    assert table.split() == ["ID", "RECEIVED", "SOURCE", "TYPE", "JOB", "STATE", "SINKS"]
    assert json.loads(loaded) == []


def test_events_leaves_a_store_to_migrate_or_refuse_to_the_store_proper(tmp_path: Path) -> None:
    # The file read (store/sqlite/reader.py) reads only this release's schema; any other
    # goes through the store as before: an older one is migrated, a newer one refused.
    config = tmp_path / "relay.toml"
    path = tmp_path / "relay.db"
    config.write_text(f'[store]\npath = "{path}"\n')
    assert run_cli("watch", "job-1", config=config).returncode == 0
    with sqlite3.connect(path) as db:
        version = int(db.execute("PRAGMA user_version").fetchone()[0])
        db.execute("ALTER TABLE attempts DROP COLUMN edited_envelope")
        db.execute("ALTER TABLE deliveries DROP COLUMN edited_envelope")
        db.execute(f"PRAGMA user_version = {version - 1}")
    listed = run_cli("events", config=config)
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.split() == ["ID", "RECEIVED", "SOURCE", "TYPE", "JOB", "STATE", "SINKS"]
    with sqlite3.connect(path) as db:
        assert int(db.execute("PRAGMA user_version").fetchone()[0]) == version
        db.execute(f"PRAGMA user_version = {version + 1}")
    refused = run_cli("events", config=config)
    assert refused.returncode == 1
    assert refused.stderr == (
        f"pulse-relay: {path} has schema version {version + 1}; this pulse-relay knows "
        f"{version}: upgrade pulse-relay\n"
    )


async def test_serve_accepts_a_library_signed_webhook_visible_in_events_and_show(
    served: tuple[Served, int, Path], tmp_path: Path
) -> None:
    process, port, config = served
    body = make_body(job_id="job-cli")
    now = datetime.now(tz=UTC)
    headers = {
        "webhook-id": "msg_cli",
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": Webhook(SECRET).sign("msg_cli", now, body.decode()),
        "content-type": "application/json",
    }
    url = f"http://127.0.0.1:{port}/webhooks/pulse"
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, data=body, headers=headers) as response,
    ):
        assert response.status == 202

    listed = run_cli("events", "--json", config=config)
    assert listed.returncode == 0, listed.stderr
    rows = [json.loads(line) for line in listed.stdout.splitlines()]
    assert [(r["id"], r["type"], r["job_id"]) for r in rows] == [
        ("msg_cli", "job.completed", "job-cli")
    ]
    assert "results" in rows[0]["deliveries"]

    table = run_cli("events", config=config)
    assert table.returncode == 0
    assert "msg_cli" in table.stdout and "job.completed" in table.stdout

    shown = run_cli("show", "msg_cli", "--json", config=config)
    assert shown.returncode == 0, shown.stderr
    document = json.loads(shown.stdout)
    assert document["payload"] == json.loads(body)
    assert document["headers"]["webhook-id"] == "msg_cli"
    assert "webhook-signature" not in document["headers"]

    human = run_cli("show", "msg_cli", config=config)
    assert human.returncode == 0 and "job-cli" in human.stdout
    assert run_cli("show", "msg_nope", config=config).returncode == 1

    returncode = process.terminate(timeout_seconds=20)
    stderr = process.log()
    assert returncode == 0, stderr
    assert SECRET not in stderr
    lines = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    assert any(
        line.get("event") == "webhook accepted" and line.get("webhook_id") == "msg_cli"
        for line in lines
    )


def test_serve_refuses_a_port_in_use(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli("serve", config=write_config(tmp_path, port))
    assert result.returncode == 1
    assert "cannot start" in result.stderr


async def test_replay_from_the_cli_while_serve_runs(
    served: tuple[Served, int, Path], tmp_path: Path
) -> None:
    _, port, config = served
    body = make_body(event_type="job.created", job_id="job-replay")
    headers = {**_sign(body, "msg_replay"), "content-type": "application/json"}
    url = f"http://127.0.0.1:{port}/webhooks/pulse"
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, data=body, headers=headers) as response,
    ):
        assert response.status == 202
    written = tmp_path / "results" / "job-replay.json"
    await wait_for(written.exists)
    written.unlink()

    result = run_cli("replay", "msg_replay", config=config)
    assert result.returncode == 0, result.stderr
    assert "1 delivery queued" in result.stdout
    await wait_for(written.exists)
    assert json.loads(written.read_bytes())["source"] == "replay"

    assert run_cli("replay", config=config).returncode == 2
    unknown = run_cli("replay", "msg_unknown", config=config)
    assert unknown.returncode == 1 and "no event with id 'msg_unknown'" in unknown.stderr
    # The admin API's rules: a sink this event never had is named, and nothing is queued.
    other_sink = run_cli("replay", "msg_replay", "--sink", "nope", config=config)
    assert other_sink.returncode == 1 and "no delivery of this event to 'nope'" in other_sink.stderr
    assert run_cli("replay", "--dead", "--sink", "nope", config=config).returncode == 1
    dead = run_cli("replay", "--dead", config=config)
    assert (dead.returncode, dead.stdout.strip()) == (0, "0 deliveries queued for replay")

    # A pruned event is "pruned", as the admin API answers (409), not "no event".
    def pruned_the_replayed_event() -> bool:
        # Finished events only: polled until the replay's delivery is recorded.
        result = run_cli("prune", "--older-than", "0", config=config)
        return result.stdout.startswith("1 event older")

    await wait_for(pruned_the_replayed_event, timeout_seconds=20, interval_seconds=0.2)
    pruned = run_cli("replay", "msg_replay", config=config)
    assert pruned.returncode == 1, pruned.stdout
    assert "event 'msg_replay' was pruned" in pruned.stderr
    # `show` answers as GET /api/events/{id} does (404 "was pruned").
    for flags in ([], ["--json"]):
        shown = run_cli("show", "msg_replay", *flags, config=config)
        assert (shown.returncode, shown.stdout) == (1, ""), shown.stderr
        assert "event 'msg_replay' was pruned (store.retention_days)" in shown.stderr
    never = run_cli("show", "msg_unknown", config=config)
    assert never.returncode == 1 and "no event with id 'msg_unknown'" in never.stderr


def _sign(body: bytes, webhook_id: str) -> dict[str, str]:
    from pulse_relay.ingress.signature import sign_headers

    return sign_headers(SECRET, webhook_id, body)


def test_watch_list_and_unwatch(tmp_path: Path) -> None:
    config = write_config(tmp_path, 8787)
    result = run_cli(
        "watch", "job-a", "job-b", "--meta", "user=u-1", "--meta", "file=a.pdf", config=config
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["watching job-a", "watching job-b"]
    assert run_cli("watch", "job-a", "--meta", "user=u-2", config=config).returncode == 0

    listed = run_cli("watch", "--list", "--json", config=config)
    assert listed.returncode == 0, listed.stderr
    watches = {w["job_id"]: w for w in map(json.loads, listed.stdout.splitlines())}
    assert watches["job-a"]["metadata"] == {"user": "u-2", "file": "a.pdf"}
    assert watches["job-b"]["metadata"] == {"user": "u-1", "file": "a.pdf"}
    assert {w["state"] for w in watches.values()} == {"active"}
    table = run_cli("watch", "--list", config=config)
    assert "job-a" in table.stdout and "user=u-2" in table.stdout

    removed = run_cli("unwatch", "job-a", "job-zzz", config=config)
    assert (removed.returncode, removed.stdout.strip()) == (0, "1 of 2 job(s) no longer watched")
    listed = run_cli("watch", "--list", "--json", config=config)
    assert [json.loads(line)["job_id"] for line in listed.stdout.splitlines()] == ["job-b"]


def test_watch_refuses_bad_input(tmp_path: Path) -> None:
    config = write_config(tmp_path, 8787)
    bad_id = run_cli("watch", "../etc/passwd", config=config)
    assert bad_id.returncode == 1 and "not a valid job id" in bad_id.stderr
    assert run_cli("watch", "job-a", "--meta", "novalue", config=config).returncode == 2
    assert run_cli("watch", config=config).returncode == 2


async def test_send_test_is_accepted_and_shows_in_events(
    served: tuple[Served, int, Path],
) -> None:
    _, _, config = served
    result = run_cli("send-test", "--job-id", "job-sent", config=config)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("202 ")
    assert '"accepted"' in result.stdout
    listed = run_cli("events", "--json", config=config)
    rows = [json.loads(line) for line in listed.stdout.splitlines()]
    assert [(r["type"], r["job_id"]) for r in rows] == [("job.completed", "job-sent")]

    wrong = run_cli("send-test", "--secret", "whsec_" + "A" * 32, config=config)
    assert wrong.returncode == 1
    assert wrong.stdout.startswith("401 ")


def test_send_test_signs_for_the_hex_scheme_too(tmp_path: Path) -> None:
    port = free_port()
    config = write_config(tmp_path, port, verify={"scheme": "hmac-sha256-hex"})
    served = Served.start(config, port, tmp_path / "serve.log")
    try:
        result = run_cli("send-test", "--job-id", "job-hex", config=config)
    finally:
        served.kill()
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("202 ")


def test_send_test_without_a_running_relay_says_so(tmp_path: Path) -> None:
    result = run_cli("send-test", config=write_config(tmp_path, free_port()))
    assert result.returncode == 1
    assert "is serve running?" in result.stderr


def test_demo_runs_the_whole_pipeline_from_an_empty_folder(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pulse_relay", "demo"],
        capture_output=True,
        text=True,
        timeout=90,
        cwd=tmp_path,
        env={k: v for k, v in os.environ.items() if not k.startswith("PULSE_")},
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "everything arrived" in result.stdout
    assert "poll:job-watched:completed" in result.stdout
    # A document submitted through the pass-through, delivered with no webhook and no watch.
    assert "/pulse/extract (as the Pulse SDK does) → 200" in result.stdout
    assert "request POST /extract invoice-042.pdf (9800 bytes" in result.stdout
    # The chained call on that extraction, delivered the same way.
    (extraction_id,) = re.findall(r"applied a schema to extraction (ext_\w+) ", result.stdout)
    assert "/pulse/schema → 200" in result.stdout
    assert f"request POST /schema on {extraction_id}" in result.stdout
    polled = re.findall(r"^poll:\S+ +job\.completed +poll +delivered", result.stdout, re.M)
    assert len(polled) == 3  # the extraction, the schema on it, the watched job
    assert "metadata user_id=demo@example.com" in result.stdout
    assert "large result downloaded 1 time(s)" in result.stdout
    assert list(tmp_path.iterdir()) == []


# --- events filters: the API's rule --------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        (["--state", "bogus"], "--state: must be one of accepted, invalid, repeat, pending,"),
        (["--state", "DEAD"], "--state: must be one of"),
        (["--source", "replay"], "--source: must be one of webhook, poll"),
        (["--limit", "0"], "--limit: must be an integer from 1 to 500"),
        (["--limit", "501"], "--limit: must be an integer from 1 to 500"),
        (["--limit", "ten"], "--limit: must be an integer from 1 to 500"),
        (["--type", "t" * 257], "--type: at most 256 characters"),
        (["--sink", "s" * 257], "--sink: at most 256 characters"),
        (["--job-id", "j" * 257], "--job-id: at most 256 characters"),
        (["--search", "q" * 257], "--search: at most 256 characters"),
    ],
)
def test_events_refuses_a_filter_the_api_refuses(
    tmp_path: Path, options: list[str], expected: str
) -> None:
    config = write_config(tmp_path, 8787)
    result = run_cli("events", *options, config=config)
    assert result.returncode == 1, result
    assert result.stdout == ""
    assert f"pulse-relay: {expected}" in result.stderr


async def test_events_filters_by_source_job_and_sink(served: tuple[Served, int, Path]) -> None:
    _, port, config = served
    body = make_body(job_id="job-filtered")
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"http://127.0.0.1:{port}/webhooks/pulse",
            data=body,
            headers=signed(body, webhook_id="msg_filtered"),
        ) as response,
    ):
        assert response.status == 202

    def listed(*options: str) -> list[str]:
        result = run_cli("events", "--json", *options, config=config)
        assert result.returncode == 0, result.stderr
        return [json.loads(line)["id"] for line in result.stdout.splitlines()]

    assert listed("--source", "webhook", "--job-id", "job-filtered") == ["msg_filtered"]
    assert listed("--sink", "results", "--search", "filtered") == ["msg_filtered"]
    assert listed("--source", "poll") == []
    assert listed("--job-id", "job-other") == []
    assert listed("--sink", "other") == []


# --- check-config: origins, one line per problem, warnings ----------------------------------


def test_check_config_names_the_environment_variable_a_bad_value_came_from(
    tmp_path: Path,
) -> None:
    config = write_config(tmp_path, 8787)
    result = run_cli("check-config", config=config, env={"PULSE_RELAY_ADMIN__HOST": "0.0.0.0"})
    assert result.returncode == 1
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("admin.token")]
    assert line.endswith("(from environment variable PULSE_RELAY_ADMIN__HOST)"), line
    assert f"in {config}" not in result.stderr


def test_serve_names_the_environment_variable_that_exposes_the_admin_listener(
    tmp_path: Path,
) -> None:
    config = write_config(tmp_path, free_port())
    result = run_cli("serve", config=config, env={"PULSE_RELAY_ADMIN__HOST": "0.0.0.0"})
    assert result.returncode == 1
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("admin.token")]
    assert line.endswith("(from environment variable PULSE_RELAY_ADMIN__HOST)"), line


def test_check_config_names_the_file_a_bad_value_came_from(tmp_path: Path) -> None:
    config = write_config(tmp_path, 8787, admin={"host": "0.0.0.0"})
    result = run_cli("check-config", config=config)
    assert result.returncode == 1
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("admin.token")]
    assert line.endswith(f"(in {config})"), line


def test_an_unreachable_postgres_store_is_one_line_naming_its_variable(tmp_path: Path) -> None:
    config = write_config(tmp_path, 8787)
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    url = f"postgresql://relay:pg-password@127.0.0.1:{port}/relay"
    result = run_cli("check-config", config=config, env={"PULSE_RELAY_STORE__URL": url})
    assert result.returncode == 1
    assert "pg-password" not in result.stderr
    lines = result.stderr.splitlines()
    assert lines[0] == "pulse-relay: configuration error:"
    (line,) = lines[1:]
    assert line.startswith(
        f"store.url: cannot reach postgresql://**********@127.0.0.1:{port}/relay"
    )
    assert line.endswith("(from environment variable PULSE_RELAY_STORE__URL)"), line


def test_check_config_warns_as_serve_does_without_secret_or_api_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = free_port()
    config = write_config(tmp_path, port, verify={"secrets": []})
    for name in ("PULSE_WEBHOOK_SECRET", "PULSE_API_KEY", "PULSE_RELAY_PULSE__API_KEY"):
        monkeypatch.delenv(name, raising=False)
    result = run_cli("check-config", config=config)
    assert result.returncode == 0, result.stderr
    warnings = [
        line.removeprefix("warning: ")
        for line in result.stderr.splitlines()
        if line.startswith("warning: ")
    ]
    assert [warning.split(":")[0] for warning in warnings] == [
        "polling-only mode",
        "pulse.api_key is not set (pulse.api_key, pulse.api_key_file or PULSE_API_KEY)",
    ]
    assert f"relative paths resolve against {os.getcwd()}" in result.stderr
    served = Served.start(config, port, tmp_path / "serve.log")
    try:
        assert served.terminate() == 0
    finally:
        served.kill()
    logged = [line["event"] for line in served.log_lines() if line["level"] == "warning"]
    assert set(warnings) <= set(logged), logged


def test_check_config_shows_which_store_with_only_its_credentials_masked(tmp_path: Path) -> None:
    config = write_config(tmp_path, 8787, store={"url": "sqlite:rel.db"})
    result = run_cli("check-config", config=config)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["store"]["url"] == "sqlite:rel.db"


async def test_replay_with_an_edited_envelope_from_a_file_or_stdin(
    served: tuple[Served, int, Path], tmp_path: Path
) -> None:
    _, port, config = served
    body = make_body(event_type="job.created", job_id="job-edit")
    headers = {**_sign(body, "msg_edit"), "content-type": "application/json"}
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"http://127.0.0.1:{port}/webhooks/pulse", data=body, headers=headers) as r,
    ):
        assert r.status == 202
    written = tmp_path / "results" / "job-edit.json"
    await wait_for(written.exists)
    original = json.loads(written.read_bytes())
    written.unlink()

    edited = {**original, "job": {"status": "fixed by hand"}}
    envelope_file = tmp_path / "edited.json"
    envelope_file.write_text(json.dumps(edited, indent=2))
    result = run_cli(
        "replay", "msg_edit", "--sink", "results", "--envelope", str(envelope_file), config=config
    )
    assert (result.returncode, result.stdout.strip()) == (0, "1 delivery queued for replay")
    await wait_for(written.exists)
    assert json.loads(written.read_bytes()) == edited
    written.unlink()
    from_stdin = {"from": "stdin"}
    result = run_cli(
        "replay", "msg_edit", "--envelope", "-", config=config, input_text=json.dumps(from_stdin)
    )
    assert result.returncode == 0, result.stderr
    await wait_for(written.exists)
    assert json.loads(written.read_bytes()) == from_stdin

    def attempts_recorded() -> bool:
        shown = run_cli("show", "msg_edit", "--json", config=config)
        return len(json.loads(shown.stdout)["attempts"]) == 3

    await wait_for(attempts_recorded, timeout_seconds=20, interval_seconds=0.2)
    attempts = json.loads(run_cli("show", "msg_edit", "--json", config=config).stdout)["attempts"]
    assert [(a["edited"], a["edited_envelope"]) for a in attempts] == [
        (False, None),
        (True, edited),
        (True, from_stdin),
    ]

    # Refusals name --envelope, exit 1 and queue nothing.
    big = json.dumps({"x": "y" * 1024 * 1024})
    for text, problem in (
        ("[1]", "--envelope: a JSON object"),
        ("{not json", "--envelope: stdin is not valid JSON"),
        ('{"x": NaN}', "--envelope: stdin is not valid JSON"),
        (big, "over 1048576 (1 MiB)"),
    ):
        refused = run_cli("replay", "msg_edit", "--envelope", "-", config=config, input_text=text)
        assert refused.returncode == 1 and problem in refused.stderr, refused.stderr
        assert refused.stderr.startswith("pulse-relay: --envelope: ")
    missing = run_cli("replay", "msg_edit", "--envelope", str(tmp_path / "nope"), config=config)
    assert missing.returncode == 1 and "--envelope: cannot read" in missing.stderr
    two = run_cli("replay", "msg_edit", "msg_x", "--envelope", "-", config=config)
    assert two.returncode == 2 and "one event id" in two.stderr
    shown = json.loads(run_cli("show", "msg_edit", "--json", config=config).stdout)
    assert len(shown["attempts"]) == 3
