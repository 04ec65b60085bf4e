"""The second baseline: the least a verified, durable webhook ingest can do on this stack.

Standard Webhooks verification, JSON parse, group commit of the event on a writer
thread (SQLite WAL, synchronous = FULL), JSON answer. No logging, metrics, dedupe
answers, routing or limits: the floor under pulse-relay's ingest, not a relay.
Run as `python -m bench.minimal PORT SECRET DB_PATH [--log-line]`.

With `--log-line` it also writes the one JSON line per accepted webhook that
docs/metrics.md (logs) asks of the relay, through the relay's own logging set-up: how much of
the gap to the relay that line alone accounts for.
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

from aiohttp import web

from pulse_relay.logs import configure_logging, get_logger

log = get_logger("pulse_relay.server")

Pending = tuple[str, bytes, asyncio.Future[bool], asyncio.AbstractEventLoop]


def _writer(path: str, jobs: queue.SimpleQueue[Pending]) -> None:
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA synchronous = FULL")
    db.execute("CREATE TABLE IF NOT EXISTS events (id TEXT PRIMARY KEY, body BLOB)")
    while True:
        batch = [jobs.get()]
        while not jobs.empty():
            batch.append(jobs.get_nowait())
        db.execute("BEGIN IMMEDIATE")
        done = [
            db.execute("INSERT OR IGNORE INTO events VALUES (?, ?)", item[:2]).rowcount == 1
            for item in batch
        ]
        db.execute("COMMIT")
        # One wake-up of the event loop per transaction, not one per event.
        batch[0][3].call_soon_threadsafe(_resolve, [item[2] for item in batch], done)


def _resolve(futures: list[asyncio.Future[bool]], inserted: list[bool]) -> None:
    for future, was_inserted in zip(futures, inserted, strict=True):
        future.set_result(was_inserted)


async def _healthz(_: web.Request) -> web.Response:
    return web.Response(text="ok")


def make_app(secret: str, path: str, *, log_line: bool = False) -> web.Application:
    key = base64.b64decode(secret.removeprefix("whsec_"))
    jobs: queue.SimpleQueue[Pending] = queue.SimpleQueue()
    threading.Thread(target=_writer, args=(path, jobs), daemon=True).start()

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
        payload = json.loads(body)
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        jobs.put((webhook_id, body, future, asyncio.get_running_loop()))
        inserted = await future
        answer = {"status": "accepted" if inserted else "duplicate", "id": webhook_id}
        answer["type"] = payload.get("type")
        if log_line and inserted:
            log.info(
                "webhook accepted",
                sinks=0,
                webhook_id=webhook_id,
                type=answer["type"],
                job_id=payload.get("data", {}).get("job_id"),
                client_address=request.remote,
            )
        return web.json_response(answer, status=202 if inserted else 200)

    app = web.Application()
    app.router.add_post("/webhooks/pulse", handle)
    app.router.add_get("/healthz", _healthz)
    return app


if __name__ == "__main__":
    port, secret, db_path = sys.argv[1], sys.argv[2], sys.argv[3]
    with_line = "--log-line" in sys.argv[4:]
    if with_line:
        configure_logging(format="json", level="info")
    web.run_app(
        make_app(secret, db_path, log_line=with_line),
        host="127.0.0.1",
        port=int(port),
        print=None,
        access_log=None,
    )
