"""The least work the fan-out scenario asks for per event, with no store and no relay.

Run as `python -m bench.fanout_floor BASE_URL API_KEY PREFIX COUNT HTTP_PORT DIRECTORY [SINKS]
[--record DB | --record-postgres URL]`;
prints `{"events": N, "seconds": S, "cpu_seconds": C}` as JSON (C: this process's CPU
time, every thread, its children's aside, as the relay's is counted). SINKS picks the sinks, any of
`f` (file), `h` (HTTP) and `c` (command), all three by default; "" fetches only.

Per event: one GET of the job from the emulator, then the three sinks at once: a file
written to a temporary name, fsynced, renamed and its directory fsynced (in a thread:
two fsyncs per event, as the relay's file sink does); a POST of the envelope to the receiver;
`/bin/true` started with the envelope on its stdin and waited for (asyncio's
create_subprocess_exec, on the loop's thread). No queue, no lease, no outcome
recorded, no log line, no metric: what is left is the fetch and the sinks' own work
on this machine, the ceiling any relay on this stack can reach when it does that work
the plain way. The relay starts its commands on a worker thread instead, which
frees the loop while the child is forked; the floor stays this plain version, so
drain ÷ floor can pass 1.

With `--record DB` it is the lower bound under the relay's drain instead: the same
work, plus what the relay must keep of it, in the least code. Before the clock starts,
DB (a SQLite file, the relay's schema, WAL, synchronous = FULL) holds each event and
its three deliveries as the relay's ingest leaves them. Then each fetched job is
stored with its attempt, and each delivery's outcome with its attempt, by one writer
thread committing whatever is queued in one transaction (a group commit, as the
relay's writer does); a delivery's slot is free once its sink is done, and the run
ends once the last outcome is committed. What it leaves out: claims and leases (one
process that redoes what is pending when it starts needs none), retries, the
envelope's metadata, logs, metrics and the change feed. With `--record-postgres URL`
the same rows go to that PostgreSQL database instead (the relay's schema; a group's
statements, one executemany per kind, and its COMMIT in one pipeline).
"""

from __future__ import annotations

import asyncio
import json
import os
import queue
import sqlite3
import sys
import threading
import time
from collections.abc import Awaitable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import aiohttp

from bench.minimal_pg import pg_connect
from pulse_relay.store.rows import INSERT_ATTEMPT
from pulse_relay.store.sqlite.schema import migrate

# The relay's settings in the scenario: 8 job fetches and 16 deliveries in flight.
FETCHES_IN_FLIGHT = 8
DELIVERIES_IN_FLIGHT = 16


# The sinks' names in the relay's configuration (bench/delivery_scenarios.fanout_sinks).
SINK_NAMES = {"f": "files", "h": "app", "c": "script"}
# The rows the relay's ingest leaves: an event whose job is still to fetch, its deliveries.
EVENT_INSERT = (
    "INSERT INTO events (id, received_at, source, type, job_id, job_key, state, headers, "
    "body, fetch_state, next_fetch_at) VALUES (?, ?, 'webhook', 'job.completed', ?, ?, "
    "'accepted', '{}', ?, 'pending', ?)"
)
DELIVERY_INSERT = (
    "INSERT INTO deliveries (event_id, sink, state, next_attempt_at, updated_at) "
    "VALUES (?, ?, 'pending', ?, ?)"
)
FETCHED = (
    "UPDATE events SET fetch_state = 'done', job = ?, fetched_at = ?, "
    "fetch_attempts = fetch_attempts + 1 WHERE id = ?"
)
DELIVERED = (
    "UPDATE deliveries SET state = 'delivered', attempts = attempts + 1, updated_at = ? "
    "WHERE event_id = ? AND sink = ?"
)
Statements = list[tuple[str, tuple[object, ...]]]


class SQLiteRows:
    """The kept rows in a SQLite file: WAL, synchronous = FULL, one transaction a group."""

    def __init__(self, path: str) -> None:
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode = WAL")
        self._db.execute("PRAGMA synchronous = FULL")
        migrate(self._db, Path(path))

    def commit(self, statements: Statements) -> None:
        self._db.execute("BEGIN IMMEDIATE")
        for sql, params in statements:
            self._db.execute(sql, params)
        self._db.execute("COMMIT")

    def close(self) -> None:
        self._db.close()


class PostgresRows:
    """The kept rows on PostgreSQL (the relay's schema): a group's statements, one
    executemany per kind, and its COMMIT sent in one pipeline."""

    def __init__(self, url: str) -> None:
        self._conn = pg_connect(url)

    def commit(self, statements: Statements) -> None:
        grouped: dict[str, list[tuple[object, ...]]] = {}
        for sql, params in statements:
            grouped.setdefault(sql, []).append(params)
        with self._conn.pipeline(), self._conn.transaction():
            for sql, rows in grouped.items():
                self._conn.cursor().executemany(sql.replace("?", "%s"), rows)

    def close(self) -> None:
        self._conn.close()


class Recorder:
    """What the relay keeps, written by one thread that commits whatever is queued."""

    def __init__(
        self, rows: SQLiteRows | PostgresRows, prefix: str, count: int, sinks: str
    ) -> None:
        now = time.time()
        events = [(f"evt-{n}", f"{prefix}{n}") for n in range(count)]
        stored: Statements = [
            (EVENT_INSERT, (i, now, job, f"{job}:completed", b"{}", now)) for i, job in events
        ]
        stored += [
            (DELIVERY_INSERT, (i, SINK_NAMES[kind], now, now)) for i, _ in events for kind in sinks
        ]
        rows.commit(stored)
        self._rows = rows
        self._queue: queue.SimpleQueue[Statements | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._write, name="recorder")
        self._thread.start()

    def fetched(self, event_id: str, job: object, started: float) -> None:
        finished = time.time()
        self._queue.put(
            [
                (FETCHED, (json.dumps(job), finished, event_id)),
                (INSERT_ATTEMPT, _attempt(event_id, None, started, finished, "fetched")),
            ]
        )

    def delivered(self, event_id: str, kind: str, started: float) -> None:
        finished = time.time()
        sink = SINK_NAMES[kind]
        self._queue.put(
            [
                (DELIVERED, (finished, event_id, sink)),
                (INSERT_ATTEMPT, _attempt(event_id, sink, started, finished, "delivered")),
            ]
        )

    def close(self) -> None:
        """Returns once everything queued is committed."""
        self._queue.put(None)
        self._thread.join()
        self._rows.close()

    def _write(self) -> None:
        while True:
            batch = [self._queue.get()]
            while not self._queue.empty():
                batch.append(self._queue.get_nowait())
            self._rows.commit([statement for item in batch for statement in item or ()])
            if None in batch:
                return


def _attempt(
    event_id: str, sink: str | None, started: float, finished: float, outcome: str
) -> tuple[object, ...]:
    duration_ms = (finished - started) * 1000
    return (event_id, sink, 1, started, duration_ms, outcome, 200, None, None, None)


def _write_file(directory: Path, name: str, body: bytes) -> None:
    temporary = directory / f".{name}.tmp"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, body)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temporary, directory / name)
    directory_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(directory_fd)
    finally:
        os.close(directory_fd)


async def _command(_name: str, body: bytes) -> None:
    process = await asyncio.create_subprocess_exec(
        "/bin/true",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
    )
    await process.communicate(body)


async def _run(
    base_url: str,
    api_key: str,
    prefix: str,
    count: int,
    http_port: int,
    directory: Path,
    sinks: str,
    recorder: Recorder | None,
) -> float:
    loop = asyncio.get_running_loop()
    files = ThreadPoolExecutor(max_workers=8)
    numbers = iter(range(count))
    slots = asyncio.Semaphore(DELIVERIES_IN_FLIGHT)
    deliveries: list[asyncio.Task[None]] = []
    waiting = 0
    async with aiohttp.ClientSession() as session:

        async def post(_name: str, body: bytes) -> None:
            async with session.post(f"http://127.0.0.1:{http_port}/sink", data=body) as answer:
                answer.raise_for_status()
                await answer.read()

        async def write(name: str, body: bytes) -> None:
            await loop.run_in_executor(files, _write_file, directory, name, body)

        async def deliver(work: Awaitable[None], event_id: str, kind: str) -> None:
            nonlocal waiting
            async with slots:
                waiting -= 1
                started = time.time()
                await work
            if recorder is not None:
                recorder.delivered(event_id, kind, started)

        async def fetch(number: int) -> None:
            nonlocal waiting
            url = f"{base_url}/job/{prefix}{number}"
            started = time.time()
            async with session.get(url, headers={"x-api-key": api_key}) as answer:
                # A floor made of "not found" answers would measure nothing.
                answer.raise_for_status()
                job = await answer.json()
            event_id = f"evt-{number}"
            if recorder is not None:
                recorder.fetched(event_id, job, started)
            body = json.dumps({"id": event_id, "job": job}).encode()
            name = f"{number}.json"
            for kind in sinks:
                work = {"f": write, "h": post, "c": _command}[kind](name, body)
                waiting += 1
                deliveries.append(asyncio.create_task(deliver(work, event_id, kind)))

        async def fetcher() -> None:
            for number in numbers:
                # No fetch while deliveries queue for a slot: the relay fetches ahead
                # only as far as its claims allow, and the floor must not run ahead either.
                while waiting >= DELIVERIES_IN_FLIGHT:
                    await asyncio.sleep(0.001)
                await fetch(number)

        started = time.monotonic()
        await asyncio.gather(*(fetcher() for _ in range(FETCHES_IN_FLIGHT)))
        await asyncio.gather(*deliveries)
        if recorder is not None:
            recorder.close()
        seconds = time.monotonic() - started
    files.shutdown()
    return seconds


def main() -> None:
    base_url, api_key, prefix, count, http_port, directory = sys.argv[1:7]
    options = sys.argv[7:]
    rows: SQLiteRows | PostgresRows | None = None
    for option, backend in (("--record", SQLiteRows), ("--record-postgres", PostgresRows)):
        if option in options:
            at = options.index(option)
            rows = backend(options[at + 1])
            del options[at : at + 2]
    sinks = options[0] if options else "fhc"
    # The rows the relay's ingest would have left are in place before the clock starts.
    recorder = None if rows is None else Recorder(rows, prefix, int(count), sinks)
    cpu_before = time.process_time()
    seconds = asyncio.run(
        _run(
            base_url, api_key, prefix, int(count), int(http_port), Path(directory), sinks, recorder
        )
    )
    cpu = time.process_time() - cpu_before
    print(json.dumps({"events": int(count), "seconds": seconds, "cpu_seconds": cpu}))


if __name__ == "__main__":
    main()
