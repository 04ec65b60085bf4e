"""`pulse-relay export` and `import`, and `GET /api/export`: a SQLite relay's events moved to
PostgreSQL whole (states, attempts, metadata), idempotently, line by line."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sqlite3
import time
import tracemalloc
from pathlib import Path
from typing import Any

import aiohttp
import psycopg
import pytest

from pulse_relay.app import Relay
from pulse_relay.config import Settings
from pulse_relay.events import ingest_record
from pulse_relay.store import (
    Attempt,
    IngestRecord,
    SQLiteStore,
    StoreBackend,
    StoredDelivery,
    StoredEvent,
    StoreUnavailableError,
)
from pulse_relay.transfer import ExportFilters, export_documents
from pulse_relay.wiring import build_store
from tests.helpers import (
    StartRelay,
    call,
    config_toml,
    make_body,
    relay_config,
    run_cli,
    signed,
    wait_for,
)

FILE_SINK = "files"


def record(
    event_id: str,
    received_at: float,
    event_type: str = "job.completed",
    *,
    job_id: str | None = None,
    body: bytes | None = None,
    sinks: tuple[str, ...] = (FILE_SINK,),
    fetch_on: frozenset[str] = frozenset(),
    body_digest: str | None = None,
) -> IngestRecord:
    """What the ingress stores for a webhook `event_id` routed to `sinks`."""
    body = body or make_body(event_type, job_id=job_id or f"job-{event_id}")
    return ingest_record(
        event_id=event_id,
        received_at=received_at,
        source="webhook",
        headers=signed(body, webhook_id=event_id),
        body=body,
        route=lambda _: sinks,
        fetch_on=fetch_on,
        client_address="203.0.113.7",
        body_digest=body_digest,
    )


def attempt(sink: str | None, number: int, outcome: str, **fields: Any) -> Attempt:
    return Attempt(sink, number, time.time() - 60 + number, 12.5, outcome, **fields)


async def fill_every_state(store: StoreBackend) -> None:
    """Events delivered, pending (after a failed attempt), dead, invalid, a repeat, one
    whose job is still being fetched, one whose body was signed alone; a watched job."""
    now = time.time()
    await store.add_watches(["job-pending"], metadata={"team": "ops"}, interval_seconds=5)
    await store.ingest(record("evt_delivered", now - 50))
    await store.finish_delivery(
        "evt_delivered", FILE_SINK, outcome="delivered", attempt=attempt(FILE_SINK, 1, "ok")
    )
    # An edited replay's attempt keeps the envelope it sent.
    edited = {"id": "evt_delivered", "note": "fixed by hand"}
    await store.replay(["evt_delivered"], sink=FILE_SINK, edited_envelope=edited)
    await store.finish_delivery(
        "evt_delivered",
        FILE_SINK,
        outcome="delivered",
        attempt=attempt(FILE_SINK, 2, "ok", edited_envelope=edited),
    )
    await store.ingest(record("evt_pending", now - 40, job_id="job-pending"))
    await store.finish_delivery(
        "evt_pending",
        FILE_SINK,
        outcome="retry",
        attempt=attempt(FILE_SINK, 1, "error", status_code=503, error="HTTP 503"),
        next_attempt_at=now - 30,
    )
    await store.ingest(record("evt_dead", now - 30, "job.failed"))
    await store.finish_delivery(
        "evt_dead",
        FILE_SINK,
        outcome="dead",
        attempt=attempt(FILE_SINK, 1, "error", error="disk full", output_tail="no space"),
    )
    await store.ingest(record("evt_invalid", now - 20, body=b"not json at all"))
    await store.ingest(record("evt_repeat", now - 10, job_id="job-evt_delivered"))
    fetching = record("evt_fetching", now - 5, fetch_on=frozenset({"job.completed"}))
    await store.ingest(fetching)
    await store.retry_fetch(
        "evt_fetching", next_fetch_at=now + 3600, attempt=attempt(None, 1, "error", error="502")
    )
    await store.ingest(record("evt_digest", now - 1, body_digest="sha256:" + "ab" * 32))


def write_store_config(tmp_path: Path, name: str, store: dict[str, str]) -> Path:
    document = relay_config(tmp_path, store=store)
    path = tmp_path / f"{name}.toml"
    path.write_text(config_toml(**document))
    return path


def exported(config: Path, *args: str) -> list[dict[str, Any]]:
    answer = run_cli("export", *args, config=config)
    assert answer.returncode == 0, answer.stderr
    return [json.loads(line) for line in answer.stdout.splitlines()]


async def test_a_sqlite_relay_moves_to_postgresql_whole(postgres_url: str, tmp_path: Path) -> None:
    async with SQLiteStore(tmp_path / "relay.db") as source:
        await fill_every_state(source)
    sqlite_config = write_store_config(tmp_path, "sqlite", {"path": str(tmp_path / "relay.db")})
    postgres_config = write_store_config(tmp_path, "postgres", {"url": postgres_url})
    dump = tmp_path / "events.ndjson"
    dump.write_text(run_cli("export", config=sqlite_config).stdout)
    before = [json.loads(line) for line in dump.read_text().splitlines()]
    states = {d["id"]: {s: v["state"] for s, v in d["deliveries"].items()} for d in before}
    assert states["evt_delivered"] == {FILE_SINK: "delivered"}
    assert states["evt_pending"] == {FILE_SINK: "pending"}
    assert states["evt_dead"] == {FILE_SINK: "dead"}
    assert {d["id"]: d["state"] for d in before}["evt_invalid"] == "invalid"

    first = run_cli("import", str(dump), config=postgres_config)
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip() == "imported 7, skipped 0 (already present), refused 0"
    # Nothing differs: ids, times (to the millisecond), payloads, headers, jobs, metadata,
    # the fetch, every delivery's state, attempt count and due time, every attempt. What
    # the documents do not show may: the body is the payload encoded again (the same JSON,
    # not the same bytes), and a pending fetch is due at the import.
    assert exported(postgres_config) == before
    again = run_cli("import", "-", config=postgres_config, input_text=dump.read_text())
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == "imported 0, skipped 7 (already present), refused 0"


async def test_an_imported_pending_delivery_is_delivered_and_its_id_stays_taken(
    postgres_url: str, start_relay: StartRelay, tmp_path: Path
) -> None:
    async with SQLiteStore(tmp_path / "relay.db") as source:
        await fill_every_state(source)
    sqlite_config = write_store_config(tmp_path, "sqlite", {"path": str(tmp_path / "relay.db")})
    dump = tmp_path / "events.ndjson"
    dump.write_text(run_cli("export", "--type", "job.completed", config=sqlite_config).stdout)
    postgres_config = write_store_config(tmp_path, "postgres", {"url": postgres_url})
    assert run_cli("import", str(dump), config=postgres_config).returncode == 0

    relay = await start_relay(
        store={"url": postgres_url},
        # The fetch still pending fails at once, rather than reaching out.
        pulse={"fetch_on": [], "base_url": "http://127.0.0.1:9"},
        sinks=[{"type": "file", "name": FILE_SINK, "directory": str(tmp_path / "out")}],
    )

    async def delivered() -> bool:
        view = await relay.store.get_event("evt_pending")
        assert view is not None
        return view.deliveries[FILE_SINK].state == "delivered"

    await wait_for(delivered)
    view = await relay.store.get_event("evt_pending")
    # The imported failed attempt, then the relay's own.
    assert view is not None and len(view.attempts) == 2
    assert view.attempts[0].error == "HTTP 503"
    await wait_for(lambda: len(list((tmp_path / "out").rglob("*.json"))) == 2)
    written = {
        envelope["id"]: envelope
        for envelope in (json.loads(p.read_text()) for p in (tmp_path / "out").rglob("*.json"))
    }
    # The delivered event is not delivered again; the pending ones are, with their metadata.
    assert sorted(written) == ["evt_digest", "evt_pending"]
    assert written["evt_pending"]["relay"]["metadata"] == {"team": "ops"}
    kept = await relay.store.get_event("evt_delivered")
    assert kept is not None and kept.deliveries[FILE_SINK].state == "delivered"

    body = make_body("job.completed", job_id="job-evt_delivered")
    status, answer = await call(
        "POST", relay.webhook_url, data=body, headers=signed(body, webhook_id="evt_delivered")
    )
    assert (status, answer["status"]) == (200, "duplicate")


def test_bad_lines_are_named_and_the_others_imported(tmp_path: Path) -> None:
    good = {
        "id": "evt_good",
        "received_at": "2026-12-01T10:00:00.000+00:00",
        "source": "webhook",
        "type": "job.completed",
        "job_id": "job-1",
        "state": "accepted",
        "error": None,
        "fetch": {"state": "none", "error": None},
        "deliveries": {
            FILE_SINK: {
                "state": "dead",
                "attempts": 2,
                "next_attempt_at": None,
                "last_error": "gone",
                "replay": False,
            }
        },
        "headers": {"webhook-id": "evt_good"},
        "payload": {"type": "job.completed"},
        "job": None,
        "result_url": None,
        "metadata": None,
        "attempts": [],
    }
    huge_attempt = {
        "sink": FILE_SINK,
        "attempt": 1,
        "started_at": "2026-12-01T10:00:01.000+00:00",
        "duration_ms": 3.5,
        "outcome": "error",
        "status_code": 2**40,
        "error": None,
        "output_tail": None,
    }
    bad_delivery = {**good, "id": "evt_bad", "deliveries": {FILE_SINK: {"state": "lost"}}}
    lines = [
        json.dumps(good),
        "{not json",
        json.dumps({key: good[key] for key in good if key != "headers"}),
        "",
        json.dumps(bad_delivery),
        json.dumps({**good, "id": "evt_good_2"}),
        json.dumps({**good, "id": "evt_huge", "attempts": [huge_attempt]}),
    ]
    dump = tmp_path / "events.ndjson"
    dump.write_text("\n".join(lines) + "\n")
    config = write_store_config(tmp_path, "sqlite", {"path": str(tmp_path / "target.db")})

    strict = run_cli("import", "--strict", str(dump), config=config)
    assert strict.returncode == 1
    assert strict.stderr.splitlines()[0].startswith("pulse-relay: line 2: not valid JSON")
    assert len(strict.stderr.splitlines()) == 1
    assert strict.stdout.startswith("imported 1, skipped 0 (already present), refused 1")

    answer = run_cli("import", str(dump), config=config)
    assert answer.returncode == 1
    assert answer.stderr.splitlines()[1:] == [
        "pulse-relay: line 3: headers: missing",
        "pulse-relay: line 5: deliveries.files.state: one of pending, delivered, dead",
        "pulse-relay: line 7: attempts[0].status_code: from 0 to 2147483647",
    ]
    assert answer.stdout.strip() == "imported 1, skipped 1 (already present), refused 4"
    ids = [document["id"] for document in exported(config)]
    assert sorted(ids) == ["evt_good", "evt_good_2"]


@pytest.fixture(params=["sqlite", "postgresql"])
def store_section(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, str]:
    if request.param == "postgresql":
        return {"url": request.getfixturevalue("postgres_url")}
    return {"path": str(tmp_path / "relay.db")}


async def test_an_event_is_written_whole_or_not_at_all(
    store_section: dict[str, str], tmp_path: Path
) -> None:
    settings = relay_config(tmp_path, store=store_section)
    delivery = StoredDelivery(FILE_SINK, "pending", 0, 0.0, None, False)
    event = StoredEvent(
        "evt_torn", 1.0, "webhook", "job.completed", "job-1", "job-1:completed", "accepted",
        None, {}, b"{}", "none", 0, None, None, None, None, None, None,
        deliveries=(delivery, delivery), attempts=(), metadata={"a": 1},
    )  # fmt: skip
    async with build_store(Settings.model_validate(settings)) as store:
        with pytest.raises((sqlite3.IntegrityError, psycopg.errors.UniqueViolation)):
            await store.insert_event(event)
        assert await store.get_event("evt_torn") is None
        assert await store.get_watch("job-1") is None
        assert await store.insert_event(dataclasses.replace(event, deliveries=(delivery,)))
        assert not await store.insert_event(event)
        # What an export reads a page with: unknown ids left out, the order kept.
        views = await store.get_events(["evt_unknown", "evt_torn"])
        assert [(v.id, list(v.deliveries), v.metadata) for v in views] == [
            ("evt_torn", [FILE_SINK], {"a": 1})
        ]


async def test_the_api_streams_the_export_with_its_filters(
    store_section: dict[str, str], start_relay: StartRelay
) -> None:
    relay: Relay = await start_relay(store=store_section, pulse={"fetch_on": []})
    start = 1_700_000_000.0
    await asyncio.gather(
        *(
            relay.store.ingest(
                record(
                    f"evt_{n:03}", start + n, "job.failed" if n % 3 else "job.completed", sinks=()
                )
            )
            for n in range(300)
        )
    )
    status, text = await call("GET", relay.admin_url + "/api/export")
    assert status == 200
    lines = [json.loads(line) for line in text.splitlines()]
    assert [line["id"] for line in lines] == [f"evt_{n:03}" for n in reversed(range(300))]
    assert all("headers" in line and "attempts" in line for line in lines)

    query = "?type=job.completed&since=1700000100&until=2023-11-14T22:16:40Z"
    status, text = await call("GET", relay.admin_url + "/api/export" + query)
    # until is start + 200 s; both ends inclusive.
    expected = [f"evt_{n:03}" for n in reversed(range(100, 201)) if n % 3 == 0]
    assert [json.loads(line)["id"] for line in text.splitlines()] == expected

    status, answer = await call("GET", relay.admin_url + "/api/export?since=yesterday")
    assert status == 400 and answer["detail"].startswith("since:")
    status, answer = await call("GET", relay.admin_url + "/api/export?state=lost")
    assert status == 400 and answer["detail"].startswith("state:")


async def test_the_api_answers_ndjson(tmp_path: Path, start_relay: StartRelay) -> None:
    relay: Relay = await start_relay(pulse={"fetch_on": []})
    await relay.store.ingest(record("evt_1", time.time(), sinks=()))
    async with (
        aiohttp.ClientSession() as session,
        session.get(relay.admin_url + "/api/export") as answer,
    ):
        assert answer.headers["Content-Type"].startswith("application/x-ndjson")
        assert json.loads(await answer.text())["id"] == "evt_1"


async def test_an_export_holds_a_page_not_the_store(tmp_path: Path) -> None:
    padding = "x" * 4096
    async with SQLiteStore(tmp_path / "relay.db") as store:
        for start in range(0, 2000, 200):
            await asyncio.gather(
                *(
                    store.ingest(
                        record(f"evt_{n:04}", 1000.0 + n, body=make_body(pad=padding), sinks=())
                    )
                    for n in range(start, start + 200)
                )
            )
        tracemalloc.start()
        try:
            count = 0
            async for _ in export_documents(store, ExportFilters()):
                count += 1
            _, peak_bytes = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert count == 2000
    # The bodies alone are 8 MB; a page of 100 full views peaks near 0.7 MB.
    assert peak_bytes < 2_000_000


async def test_an_export_cut_short_by_the_store_never_reads_as_complete(
    start_relay: StartRelay, monkeypatch: pytest.MonkeyPatch
) -> None:
    relay: Relay = await start_relay(pulse={"fetch_on": []})
    await asyncio.gather(
        *(relay.store.ingest(record(f"evt_{n:03}", 1000.0 + n, sinks=())) for n in range(150))
    )
    real_get_events = relay.store.get_events
    pages_read = 0

    async def second_page_fails(event_ids: list[str]) -> Any:
        nonlocal pages_read
        pages_read += 1
        if pages_read == 2:
            raise StoreUnavailableError("store read failed: disk I/O error")
        return await real_get_events(event_ids)

    monkeypatch.setattr(relay.store, "get_events", second_page_fails)
    async with (
        aiohttp.ClientSession() as session,
        session.get(relay.admin_url + "/api/export") as answer,
    ):
        assert answer.status == 200
        with pytest.raises(aiohttp.ClientPayloadError):
            await answer.read()
    assert pages_read == 2
