"""The benchmark suite runs: a tiny end-to-end scenario and the report. No timing is checked."""

from __future__ import annotations

import dataclasses
import json
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
if not (ROOT / "bench" / "scenarios.py").exists():
    pytest.skip("bench/ is not in this checkout", allow_module_level=True)
sys.path.insert(0, str(ROOT))

from bench import common, delivery_scenarios, report  # noqa: E402
from bench.measure import Sizes  # noqa: E402


def _post(port: int, request: common.SignedRequest) -> tuple[int, dict[str, Any]]:
    """POST a signed webhook to a handler on `port`: its status and JSON answer."""
    posted = urllib.request.Request(
        f"http://127.0.0.1:{port}{common.WEBHOOK_PATH}",
        data=request.body,
        headers={**request.headers, "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(posted, timeout=10) as answer:
        return answer.status, json.loads(answer.read())


@pytest.mark.skipif(sys.platform != "linux", reason="the bench watches renames with inotify")
def test_end_to_end_scenario_runs_and_the_report_renders(tmp_path: Path) -> None:
    sizes = dataclasses.replace(Sizes.quick(), e2e_events=20, e2e_rate=50.0)
    result = delivery_scenarios.end_to_end(sizes)
    assert result["files"] == 20
    assert [row["scenario"] for row in result["rows"]] == ["end-to-end"]

    results = tmp_path / "results"
    report.save("e2e", result, command="pytest", directory=results)
    output = tmp_path / "BENCHMARKS.md"
    report.write(output, results)
    text = output.read_text()
    assert "| end-to-end |" in text
    others = [name for name in report.ORDER if name != "e2e"]
    assert f"Not run yet: {', '.join(others)}." in text


def test_the_fan_out_floor_fetches_every_job_and_feeds_every_sink(tmp_path: Path) -> None:

    emulator, base_url = common.emulator_process(tmp_path, "fan-", 12)
    receiver, http_port = common.baseline_process(tmp_path)
    with emulator, receiver:
        floor = delivery_scenarios.fanout_floor_run(tmp_path / "floor", base_url, http_port, 12)
    assert floor["events"] == 12
    assert floor["seconds"] > 0
    assert floor["cpu_seconds"] > 0
    # One renamed file per event, no temporary file left behind.
    assert sorted(p.name for p in (tmp_path / "floor").iterdir()) == sorted(
        f"{n}.json" for n in range(12)
    )
    written = json.loads((tmp_path / "floor" / "7.json").read_bytes())
    assert written["job"]["job_id"] == "fan-7"


def test_the_fan_out_lower_bound_keeps_every_job_and_outcome_as_the_relay_does(
    tmp_path: Path,
) -> None:
    import sqlite3

    emulator, base_url = common.emulator_process(tmp_path, "fan-", 12)
    receiver, http_port = common.baseline_process(tmp_path)
    out = tmp_path / "bound"
    with emulator, receiver:
        bound = delivery_scenarios.fanout_floor_run(out, base_url, http_port, 12, record=True)
    assert bound["events"] == 12
    assert sorted(p.name for p in out.glob("*.json")) == sorted(f"{n}.json" for n in range(12))
    with sqlite3.connect(out / "bound.db") as db:
        fetched = db.execute("SELECT id, fetch_state, job FROM events ORDER BY id").fetchall()
        kept = db.execute("SELECT job_id, typeof(received_at) FROM events ORDER BY id").fetchall()
        states = db.execute("SELECT sink, state, attempts FROM deliveries").fetchall()
        attempts = db.execute("SELECT sink, outcome FROM attempts").fetchall()
    assert [(i, state) for i, state, _ in fetched] == sorted(
        (f"evt-{n}", "done") for n in range(12)
    )
    assert json.loads(fetched[0][2])["job_id"] == "fan-0"
    assert kept == sorted((f"fan-{n}", "real") for n in range(12))
    assert sorted(states) == sorted(
        (sink, "delivered", 1) for sink in ("files", "app", "script") for _ in range(12)
    )
    assert sorted(attempts, key=str) == sorted(
        [(None, "fetched")] * 12
        + [(sink, "delivered") for sink in ("files", "app", "script") for _ in range(12)],
        key=str,
    )


def test_the_fan_out_lower_bound_on_postgresql_keeps_the_same_rows(
    tmp_path: Path, postgres_url: str
) -> None:
    emulator, base_url = common.emulator_process(tmp_path, "fan-", 5)
    receiver, http_port = common.baseline_process(tmp_path)
    with emulator, receiver:
        bound = delivery_scenarios.fanout_floor_run(
            tmp_path / "bound", base_url, http_port, 5, record_postgres=postgres_url
        )
    assert bound["events"] == 5
    events = common.pg_query(
        postgres_url, "SELECT job_id, fetch_state, job::jsonb->>'job_id' FROM events"
    )
    assert sorted(events) == [(f"fan-{n}", "done", f"fan-{n}") for n in range(5)]
    assert common.delivered_count_pg(postgres_url) == 15
    (attempts,) = common.pg_query(postgres_url, "SELECT count(*) FROM attempts")
    assert attempts == (20,)


def test_the_minimal_handler_with_the_log_line_stores_answers_and_logs(tmp_path: Path) -> None:
    import sqlite3

    minimal, port = common.minimal_process(tmp_path, log_line=True)
    (request,) = common.signed_requests("line-", 1)
    with minimal:
        status, answer = _post(port, request)
    assert status == 202
    assert answer["status"] == "accepted"
    (store,) = tmp_path.glob("minimal-*.db")
    with sqlite3.connect(store) as db:
        assert db.execute("SELECT id FROM events").fetchall() == [("line-0",)]
    lines = [
        json.loads(line) for line in (tmp_path / "minimal-log-line.log").read_text().splitlines()
    ]
    accepted = [line for line in lines if line["event"] == "webhook accepted"]
    assert [line["webhook_id"] for line in accepted] == ["line-0"]
    assert accepted[0]["level"] == "info"


def test_the_lower_bound_handler_stores_the_relays_row_and_answers_as_the_relay(
    tmp_path: Path,
) -> None:
    import sqlite3

    handler, port = common.minimal_process(tmp_path, relay_work=True)
    (request,) = common.signed_requests("work-", 1)
    with handler:
        answers = [_post(port, request) for _ in range(2)]
    assert answers == [
        (202, {"status": "accepted", "id": "work-0"}),
        (200, {"status": "duplicate", "id": "work-0"}),
    ]
    (store,) = tmp_path.glob("minimal-*.db")
    with sqlite3.connect(store) as db:
        stored = db.execute(
            "SELECT id, source, type, job_id, job_key, state, fetch_state, client_address, "
            "headers FROM events"
        ).fetchall()
    assert [row[:8] for row in stored] == [
        (
            "work-0",
            "webhook",
            "job.completed",
            "work-0",
            "work-0:completed",
            "accepted",
            "none",
            "127.0.0.1",
        )
    ]
    assert json.loads(stored[0][8])["webhook-id"] == "work-0"
    lines = [
        json.loads(line)
        for line in (tmp_path / "minimal-relay-work.log").read_text().split("\n")
        if line
    ]
    assert [line["webhook_id"] for line in lines if line["event"] == "webhook accepted"] == [
        "work-0"
    ]


def test_the_lower_bound_handler_on_postgresql_commits_the_relays_row_to_the_relays_schema(
    tmp_path: Path, postgres_url: str
) -> None:

    from pulse_relay.store.postgres.schema import MIGRATIONS

    handler, port = common.minimal_process(tmp_path, relay_work=True, postgres=postgres_url)
    (request,) = common.signed_requests("pgwork-", 1)
    with handler:
        answers = [_post(port, request) for _ in range(2)]
    assert answers == [
        (202, {"status": "accepted", "id": "pgwork-0"}),
        (200, {"status": "duplicate", "id": "pgwork-0"}),
    ]
    stored = common.pg_query(
        postgres_url,
        "SELECT id, source, type, job_key, state, fetch_state, client_address, body FROM events",
    )
    assert stored == [
        (
            "pgwork-0",
            "webhook",
            "job.completed",
            "pgwork-0:completed",
            "accepted",
            "none",
            "127.0.0.1",
            request.body,
        )
    ]
    assert common.pg_query(postgres_url, "SELECT version FROM pulse_relay_schema") == [
        (len(MIGRATIONS),)
    ]
    assert not list(tmp_path.glob("minimal-*.db"))


def test_the_postgresql_lower_bound_accepts_an_id_sent_twice_in_one_group_once() -> None:
    from bench.minimal_pg import inserted

    assert inserted(["a", "b", "a", "c"], {"a", "c"}) == [True, False, False, True]


def test_the_cli_floor_reads_the_same_rows_with_the_relay_settings_as_with_its_own(
    tmp_path: Path,
) -> None:
    import subprocess

    config = tmp_path / "relay.toml"
    config.write_text(f'[store]\npath = "{tmp_path / "relay.db"}"\n')
    relay = [sys.executable, "-m", "pulse_relay", "--config", str(config)]
    subprocess.run([*relay, "watch", "cli-job"], check=True, capture_output=True)

    def floor(mode: str) -> str:
        argv = [sys.executable, "-m", "bench.cli_floor", mode, str(config)]
        return subprocess.run(argv, check=True, capture_output=True, text=True, cwd=ROOT).stdout

    assert floor("relay") == floor("both")
    assert floor("both").split() == ["ID", "RECEIVED", "SOURCE", "TYPE", "JOB", "STATE"]
