"""The least work the fan-out scenario asks for per event, with no store and no relay.

Run as `python -m bench.fanout_floor BASE_URL API_KEY PREFIX COUNT HTTP_PORT DIRECTORY [SINKS]`;
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
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
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

        async def deliver(work: Awaitable[None]) -> None:
            nonlocal waiting
            async with slots:
                waiting -= 1
                await work

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
                deliveries.append(asyncio.create_task(deliver(work)))

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
    cpu_before = time.process_time()
    seconds = asyncio.run(
        _run(base_url, api_key, prefix, int(count), int(http_port), Path(directory), sinks)
    )
    cpu = time.process_time() - cpu_before
    print(json.dumps({"events": int(count), "seconds": seconds, "cpu_seconds": cpu}))


if __name__ == "__main__":
    main()
