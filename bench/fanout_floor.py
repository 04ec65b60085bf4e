"""The least work the fan-out scenario asks for per event, with no store and no relay.

Run as `python -m bench.fanout_floor BASE_URL API_KEY PREFIX COUNT HTTP_PORT DIRECTORY
[SINKS [OUTCOMES_DB]]`; prints `{"events": N, "seconds": S}` as JSON. SINKS picks the
sinks, any of `f` (file), `h` (HTTP) and `c` (command), all three by default; "" fetches only.

Per event: one GET of the job from the emulator, then the three sinks at once: a file
written to a temporary name, fsynced, renamed and its directory fsynced (in a thread:
two fsyncs per event, none shared); a POST of the envelope to the receiver;
`/bin/true` started with the envelope on its stdin and waited for (asyncio's
create_subprocess_exec, on the loop's thread). No queue, no lease, no outcome
recorded, no log line, no metric: what is left is the fetch and the sinks' own work
on this machine, the ceiling any relay on this stack can reach. The relay does the
same work in a cheaper way where it can (writes into one directory share its fsync;
commands start on a worker thread): the floor stays this plain version, the least
the same work takes when written the obvious way.

With OUTCOMES_DB, each delivery also counts as done only once its outcome (the
delivery row marked delivered, an attempt row added) is committed to SQLite with
`journal_mode = WAL` and `synchronous = FULL`, by one writer thread that commits
whatever has queued up in one transaction (group commit), as the relay's store does:
a measured lower bound on what recording outcomes costs, with nothing else of the relay.
"""

from __future__ import annotations

import asyncio
import contextlib
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

# The relay's settings in the scenario: 8 job fetches and 16 deliveries in flight.
FETCHES_IN_FLIGHT = 8
DELIVERIES_IN_FLIGHT = 16


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


class OutcomeWriter:
    """Delivery outcomes group-committed to SQLite (WAL, synchronous = FULL) on one thread."""

    def __init__(self, path: Path, count: int, sinks: str) -> None:
        self._connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._connection.execute("PRAGMA journal_mode = WAL")
        self._connection.execute("PRAGMA synchronous = FULL")
        self._connection.executescript(
            "CREATE TABLE deliveries (event INTEGER, sink TEXT, state TEXT, attempts INTEGER,"
            " updated_at REAL, PRIMARY KEY (event, sink)) WITHOUT ROWID;"
            "CREATE TABLE attempts (id INTEGER PRIMARY KEY, event INTEGER, sink TEXT,"
            " outcome TEXT, finished_at REAL);"
        )
        # The queue as the relay holds it before the drain: every delivery pending.
        with self._connection:
            self._connection.executemany(
                "INSERT INTO deliveries VALUES (?, ?, 'pending', 0, 0)",
                ((number, sink) for number in range(count) for sink in sinks),
            )
        self._waiting: queue.SimpleQueue[tuple[int, str, asyncio.Future[None]] | None] = (
            queue.SimpleQueue()
        )
        self._thread = threading.Thread(target=self._commit_forever, name="outcomes")
        self._thread.start()

    async def record(self, number: int, sink: str) -> None:
        """Return once the outcome of `number`'s delivery to `sink` is committed."""
        done = asyncio.get_running_loop().create_future()
        self._waiting.put((number, sink, done))
        await done

    def close(self) -> None:
        self._waiting.put(None)
        self._thread.join()
        self._connection.close()

    def _commit_forever(self) -> None:
        is_open = True
        while is_open:
            batch = [self._waiting.get()]
            with contextlib.suppress(queue.Empty):
                while True:
                    batch.append(self._waiting.get_nowait())
            is_open = None not in batch
            outcomes = [item for item in batch if item is not None]
            if outcomes:
                self._commit(outcomes)

    def _commit(self, outcomes: list[tuple[int, str, asyncio.Future[None]]]) -> None:
        now = time.time()
        with self._connection:
            for number, sink, _ in outcomes:
                self._connection.execute(
                    "UPDATE deliveries SET state = 'delivered', attempts = attempts + 1,"
                    " updated_at = ? WHERE event = ? AND sink = ?",
                    (now, number, sink),
                )
                self._connection.execute(
                    "INSERT INTO attempts (event, sink, outcome, finished_at)"
                    " VALUES (?, ?, 'delivered', ?)",
                    (number, sink, now),
                )
        for _, _, done in outcomes:
            done.get_loop().call_soon_threadsafe(_settle, done)


def _settle(done: asyncio.Future[None]) -> None:
    if not done.done():
        done.set_result(None)


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
    outcomes: OutcomeWriter | None,
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

        async def deliver(work: Awaitable[None], number: int, kind: str) -> None:
            nonlocal waiting
            async with slots:
                waiting -= 1
                await work
                if outcomes is not None:
                    await outcomes.record(number, kind)

        async def fetch(number: int) -> None:
            nonlocal waiting
            url = f"{base_url}/job/{prefix}{number}"
            async with session.get(url, headers={"x-api-key": api_key}) as answer:
                # A floor made of "not found" answers would measure nothing.
                answer.raise_for_status()
                job = await answer.json()
            body = json.dumps({"id": f"evt-{number}", "job": job}).encode()
            name = f"{number}.json"
            for kind in sinks:
                work = {"f": write, "h": post, "c": _command}[kind](name, body)
                waiting += 1
                deliveries.append(asyncio.create_task(deliver(work, number, kind)))

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
        seconds = time.monotonic() - started
    files.shutdown()
    return seconds


def main() -> None:
    base_url, api_key, prefix, count, http_port, directory = sys.argv[1:7]
    sinks = sys.argv[7] if len(sys.argv) > 7 else "fhc"
    outcomes = OutcomeWriter(Path(sys.argv[8]), int(count), sinks) if len(sys.argv) > 8 else None
    try:
        seconds = asyncio.run(
            _run(
                base_url,
                api_key,
                prefix,
                int(count),
                int(http_port),
                Path(directory),
                sinks,
                outcomes,
            )
        )
    finally:
        if outcomes is not None:
            outcomes.close()
    print(json.dumps({"events": int(count), "seconds": seconds}))


if __name__ == "__main__":
    main()
