"""Several real `serve` processes sharing one PostgreSQL database."""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from pulse_relay.signature import sign_headers
from tests.conftest import SECRET, make_body
from tests.helpers import Served, free_port, wait_until, write_config
from tests.test_cli import run_cli

EVENTS_ACROSS_RELAYS = 300
LEASE_SECONDS = 3.0

# A command sink whose first run hangs (its relay is killed meanwhile); every later run
# appends one line per delivery, so a duplicate delivery shows as a second line.
HANG_THEN_RECORD = """\
import pathlib, sys, time
out = pathlib.Path(sys.argv[1])
sys.stdin.buffer.read()
started = out / "started"
if not started.exists():
    started.write_text("first run")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        time.sleep(0.05)
    sys.exit(1)
with (out / "delivered.log").open("a") as log:
    log.write("delivered\\n")
"""


def post(port: int, event_id: str, job_id: str) -> int:
    """POST one signed job.completed-less event (no fetch) to the relay on `port`."""
    body = make_body(event_type="job.created", job_id=job_id)
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/webhooks/pulse",
        data=body,
        headers={**sign_headers(SECRET, event_id, body), "content-type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)


@pytest.fixture
def relays(tmp_path: Path, postgres_url: str) -> Iterator[tuple[list[int], Path]]:
    """Two relays on one database writing to one results folder: their ports and the folder."""
    results = tmp_path / "results"
    sink = {"name": "results", "type": "file", "directory": str(results), "filename": "{id}.json"}
    ports: list[int] = []
    served: list[Served] = []
    try:
        for name in ("a", "b"):
            folder = tmp_path / name
            folder.mkdir()
            port = free_port()
            config = write_config(
                folder, port, sinks=[sink], store={"url": postgres_url}, log={"level": "warning"}
            )
            served.append(Served.start(config, port, folder / "serve.log"))
            ports.append(port)
        yield ports, results
    finally:
        for relay in served:
            relay.kill()


def test_an_id_posted_to_two_relays_at_once_is_accepted_by_exactly_one(
    relays: tuple[list[int], Path],
) -> None:
    ports, results = relays
    with ThreadPoolExecutor(max_workers=8) as pool:
        for n in range(10):
            statuses = sorted(pool.map(post, ports, [f"msg_race_{n}"] * 2, [f"job-{n}"] * 2))
            assert statuses == [200, 202], n
    wait_until(lambda: len(list(results.glob("*.json"))) == 10)


def test_events_sent_across_relays_all_reach_the_sink(relays: tuple[list[int], Path]) -> None:
    ports, results = relays
    ids = [f"msg_{n}" for n in range(EVENTS_ACROSS_RELAYS)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        statuses = list(pool.map(lambda n: post(ports[n % 2], ids[n], f"job-{n}"), range(len(ids))))
    assert statuses == [202] * len(ids)
    wait_until(lambda: len(list(results.glob("*.json"))) == len(ids), timeout_seconds=60)
    assert {path.stem for path in results.glob("*.json")} == set(ids)


def test_the_cli_reads_and_steers_the_shared_store(
    tmp_path: Path, relays: tuple[list[int], Path]
) -> None:
    ports, results = relays
    assert post(ports[0], "msg_cli", "job-cli") == 202
    wait_until((results / "msg_cli.json").exists)
    config = tmp_path / "a" / "relay.toml"
    checked = run_cli("check-config", config=config)
    assert checked.returncode == 0, checked.stderr
    assert "pulse_relay_test:pulse_relay_test" not in checked.stdout + checked.stderr

    def delivered() -> bool:
        listed = run_cli("events", "--json", config=config)
        return bool(json.loads(listed.stdout)["deliveries"]["results"]["state"] == "delivered")

    wait_until(delivered)
    shown = json.loads(run_cli("show", "msg_cli", "--json", config=config).stdout)
    assert shown["job_id"] == "job-cli"
    assert run_cli("replay", "msg_cli", config=config).returncode == 0
    assert run_cli("watch", "job-w", "--meta", "user=7", config=config).returncode == 0
    assert run_cli("unwatch", "job-w", config=config).returncode == 0
    assert run_cli("prune", config=config).returncode == 0


def test_check_config_names_an_unreachable_store(tmp_path: Path) -> None:
    url = "postgresql://someone:hunter2@127.0.0.1:1/relay?connect_timeout=1"
    config = write_config(tmp_path, free_port(), store={"url": url})
    checked = run_cli("check-config", config=config)
    assert checked.returncode == 1
    assert "store.url: cannot reach postgresql://**********@127.0.0.1:1/relay" in checked.stderr
    assert "hunter2" not in checked.stdout + checked.stderr


def test_work_claimed_by_a_killed_relay_is_finished_by_the_other_within_a_lease(
    tmp_path: Path, postgres_url: str
) -> None:
    script = tmp_path / "command.py"
    script.write_text(HANG_THEN_RECORD)
    out = tmp_path / "out"
    out.mkdir()
    sink = {"name": "slow", "type": "command", "argv": [sys.executable, str(script), str(out)]}
    served: list[Served] = []
    try:
        ports: list[int] = []
        configs: list[Path] = []
        for name in ("a", "b"):
            folder = tmp_path / name
            folder.mkdir()
            port = free_port()
            config = write_config(
                folder,
                port,
                sinks=[sink],
                store={"url": postgres_url},
                delivery={"lease_seconds": LEASE_SECONDS},
                log={"level": "warning"},
            )
            configs.append(config)
            ports.append(port)
        # Only relay a runs while the event arrives, so it is the one holding the claim.
        served.append(Served.start(configs[0], ports[0], tmp_path / "a" / "serve.log"))
        assert post(ports[0], "msg_claimed", "job-claimed") == 202
        wait_until((out / "started").exists)
        served[0].kill()
        served.append(Served.start(configs[1], ports[1], tmp_path / "b" / "serve.log"))
        delivered = out / "delivered.log"
        # Within one lease (plus the time to start and to poll), never twice.
        wait_until(delivered.exists, timeout_seconds=LEASE_SECONDS + 15)
        assert delivered.read_text().splitlines() == ["delivered"]
    finally:
        for relay in served:
            relay.kill()
