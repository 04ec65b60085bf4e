"""The second baseline: the least a verified, durable webhook ingest can do on this stack.

Standard Webhooks verification, JSON parse, group commit of the event on a writer
thread (SQLite WAL, synchronous = FULL), JSON answer. No logging, metrics, dedupe
answers, routing or limits: the floor under pulse-relay's ingest, not a relay.
Run as `python -m bench.minimal PORT SECRET DB_PATH [--log-line | --relay-work]
[--postgres URL]`.

With `--log-line` it also writes the one JSON line per accepted webhook that
docs/metrics.md (logs) asks of the relay, through the relay's own logging set-up: how much of
the gap to the relay that line alone accounts for.

With `--relay-work` it does, in the least code, what the relay must do per webhook: the
verification and the log line above, the row the relay stores (the relay's own schema
and indexes, every column the relay writes, the stored headers as JSON), its deliveries
rows, dedupe by id (`INSERT OR IGNORE` on the primary key), the same group commit, and
the relay's answer. What it leaves out is the relay's edge rules, pruned-id and
job-status dedupe, metrics and error handling: the best a relay doing this work can do.
With `--postgres URL` too, that group commit goes to PostgreSQL instead (bench/minimal_pg.py).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import queue
import sqlite3
import sys
import threading
import time
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

from bench.minimal_pg import pg_connect, pg_writer
from pulse_relay.ingress.server import STORED_HEADERS
from pulse_relay.logs import configure_logging, get_logger
from pulse_relay.store.sqlite.schema import migrate

log = get_logger("pulse_relay.server")

Pending = tuple[tuple[Any, ...], asyncio.Future[bool], asyncio.AbstractEventLoop]

MINIMAL_INSERT = "INSERT OR IGNORE INTO events VALUES (?, ?)"
# Every column the relay's ingest writes (store/sqlite/ingest.py).
RELAY_INSERT = (
    "INSERT OR IGNORE INTO events (id, received_at, source, type, job_id, job_key, state, "
    "error, headers, body, fetch_state, next_fetch_at, client_address, body_digest) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
# The ingest scenario's relay has no sinks, so its events start no deliveries; the rows
# are written as the relay writes them, one per sink named here.
SINKS: tuple[str, ...] = ()
INSERT_DELIVERY = (
    "INSERT INTO deliveries (event_id, sink, state, next_attempt_at, updated_at) "
    "VALUES (?, ?, 'pending', ?, ?)"
)
JSON_HEADERS = {"Content-Type": "application/json; charset=utf-8"}


def _due(item: Pending) -> list[tuple[Any, ...]]:
    """The deliveries rows of a stored event: (event id, sink, due at, updated at)."""
    event_id, received_at = item[0][:2]
    return [(event_id, sink, received_at, received_at) for sink in SINKS]


def _open(path: str, *, relay_schema: bool) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA synchronous = FULL")
    if relay_schema:
        migrate(db, Path(path))
    else:
        db.execute("CREATE TABLE IF NOT EXISTS events (id TEXT PRIMARY KEY, body BLOB)")
    return db


def _writer(path: str, jobs: queue.SimpleQueue[Pending], relay_schema: bool) -> None:
    db = _open(path, relay_schema=relay_schema)
    insert = RELAY_INSERT if relay_schema else MINIMAL_INSERT
    while True:
        batch = [jobs.get()]
        while not jobs.empty():
            batch.append(jobs.get_nowait())
        db.execute("BEGIN IMMEDIATE")
        done = [db.execute(insert, item[0]).rowcount == 1 for item in batch]
        rows = [row for item, new in zip(batch, done, strict=True) if new for row in _due(item)]
        if rows:
            db.executemany(INSERT_DELIVERY, rows)
        db.execute("COMMIT")
        # One wake-up of the event loop per transaction, not one per event.
        batch[0][2].call_soon_threadsafe(_resolve, [item[1] for item in batch], done)


def _resolve(futures: list[asyncio.Future[bool]], inserted: list[bool]) -> None:
    for future, was_inserted in zip(futures, inserted, strict=True):
        future.set_result(was_inserted)


async def _healthz(_: web.Request) -> web.Response:
    return web.Response(text="ok")


def _relay_row(request: web.Request, webhook_id: str, body: bytes, payload: Any) -> tuple[Any, ...]:
    """The relay's row for an accepted job event (state, fetch state, job key)."""
    job_id = payload.get("data", {}).get("job_id")
    headers = {name: request.headers[name] for name in STORED_HEADERS if name in request.headers}
    event_type = payload.get("type")
    job_key = f"{job_id}:{event_type.removeprefix('job.')}"
    stored = orjson.dumps(headers).decode()
    received_at = time.time()
    key = (webhook_id, received_at, "webhook", event_type, job_id, job_key, "accepted")
    return (*key, None, stored, body, "none", None, request.remote, None)


def make_app(
    secret: str,
    path: str,
    *,
    log_line: bool = False,
    relay_work: bool = False,
    postgres: str | None = None,
) -> web.Application:
    key = base64.b64decode(secret.removeprefix("whsec_"))
    jobs: queue.SimpleQueue[Pending] = queue.SimpleQueue()
    if postgres is not None:
        args: tuple[Any, ...] = (pg_connect(postgres), jobs, _due, _resolve)
        threading.Thread(target=pg_writer, args=args, daemon=True).start()
    else:
        threading.Thread(target=_writer, args=(path, jobs, relay_work), daemon=True).start()
    log_line = log_line or relay_work

    async def handle(request: web.Request) -> web.Response:
        body = await request.read()
        webhook_id = request.headers.get("webhook-id", "")
        timestamp = request.headers.get("webhook-timestamp", "0")
        signed = f"{webhook_id}.{timestamp}.".encode() + body
        expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
        given = [s.partition(",")[2] for s in request.headers.get("webhook-signature", "").split()]
        fresh = abs(time.time() - int(timestamp)) < 3600
        if not fresh or not any(hmac.compare_digest(expected, s) for s in given):
            return web.json_response({"status": "unauthorized"}, status=401)
        payload = orjson.loads(body) if relay_work else json.loads(body)
        row = _relay_row(request, webhook_id, body, payload) if relay_work else (webhook_id, body)
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        jobs.put((row, future, asyncio.get_running_loop()))
        inserted = await future
        answer = {"status": "accepted" if inserted else "duplicate", "id": webhook_id}
        if log_line and inserted:
            log.info(
                "webhook accepted",
                sinks=len(SINKS),
                webhook_id=webhook_id,
                type=payload.get("type"),
                job_id=payload.get("data", {}).get("job_id"),
                client_address=request.remote,
            )
        if relay_work:
            status = 202 if inserted else 200
            return web.Response(body=orjson.dumps(answer), status=status, headers=JSON_HEADERS)
        answer["type"] = payload.get("type")
        return web.json_response(answer, status=202 if inserted else 200)

    app = web.Application()
    app.router.add_post("/webhooks/pulse", handle)
    app.router.add_get("/healthz", _healthz)
    return app


if __name__ == "__main__":
    port, secret, db_path = sys.argv[1], sys.argv[2], sys.argv[3]
    with_relay_work = "--relay-work" in sys.argv[4:]
    options = sys.argv[4:]
    postgres_url = options[options.index("--postgres") + 1] if "--postgres" in options else None
    with_line = "--log-line" in sys.argv[4:] or with_relay_work
    if with_line:
        configure_logging(format="json", level="info")
    web.run_app(
        make_app(
            secret,
            db_path,
            log_line=with_line,
            relay_work=with_relay_work,
            postgres=postgres_url,
        ),
        host="127.0.0.1",
        port=int(port),
        print=None,
        access_log=None,
    )
