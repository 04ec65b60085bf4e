"""The load the scenarios send: wrk over pre-signed requests, and Python senders (all at
once, or paced)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from bench.common import BENCH_DIR, SignedRequest

LUA_SCRIPT = BENCH_DIR / "signed_requests.lua"


# -- wrk ---------------------------------------------------------------------------


@dataclass(frozen=True)
class WrkResult:
    """One wrk run, from the Lua script's `done()` summary."""

    requests: int
    duration_seconds: float
    errors: int
    p50_ms: float
    p99_ms: float

    @property
    def rate(self) -> float:
        return self.requests / self.duration_seconds


def ensure_wrk() -> str:
    """The path of wrk, installing Debian's package when it is missing."""
    found = shutil.which("wrk")
    if found:
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        print("wrk not found: apt-get install -y wrk", file=sys.stderr)
        subprocess.run(
            ["apt-get", "install", "-y", "-q", "wrk"], check=False, stdout=subprocess.DEVNULL
        )
        found = shutil.which("wrk")
        if found:
            return found
    raise SystemExit("wrk is required: install it with `apt-get install wrk` (Debian package wrk)")


def run_wrk(
    url: str,
    requests_file: Path,
    *,
    connections: int,
    duration_seconds: float,
    threads: int = 2,
) -> WrkResult:
    """wrk over the pre-signed requests in `requests_file` (cycled per thread)."""
    env = dict(os.environ, BENCH_REQUESTS=str(requests_file), BENCH_THREADS=str(threads))
    argv = [
        ensure_wrk(),
        f"-t{threads}",
        f"-c{connections}",
        f"-d{max(1, round(duration_seconds))}s",
        "--timeout",
        "10s",
        "-s",
        str(LUA_SCRIPT),
        url,
    ]
    done = subprocess.run(
        argv, env=env, capture_output=True, text=True, timeout=duration_seconds + 60, check=False
    )
    match = re.search(r"^BENCH_JSON (.*)$", done.stdout, re.MULTILINE)
    if done.returncode != 0 or match is None:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stdout}\n{done.stderr}")
    data = json.loads(match.group(1))
    errors = sum(data[k] for k in ("status", "connect", "read", "write", "timeout"))
    return WrkResult(
        requests=int(data["requests"]),
        duration_seconds=data["duration_us"] / 1e6,
        errors=int(errors),
        p50_ms=data["p50_us"] / 1000,
        p99_ms=data["p99_us"] / 1000,
    )


# -- Python senders ------------------------------------------------------------------


async def send_all(
    url: str, requests: Sequence[SignedRequest], *, concurrency: int = 32
) -> dict[int, int]:
    """POST every request with `concurrency` workers; returns counts per HTTP status."""
    statuses: dict[int, int] = {}
    iterator = iter(requests)
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            for request in iterator:
                async with session.post(url, data=request.body, headers=request.headers) as answer:
                    await answer.read()
                    statuses[answer.status] = statuses.get(answer.status, 0) + 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return statuses


async def send_paced(
    url: str, requests: Sequence[SignedRequest], *, rate_per_second: float
) -> tuple[dict[str, int], dict[int, int]]:
    """POST the requests at a fixed rate (open loop); returns (send time ns per id, statuses)."""
    sent_at: dict[str, int] = {}
    statuses: dict[int, int] = {}
    connector = aiohttp.TCPConnector(limit=256)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one(request: SignedRequest) -> None:
            sent_at[request.webhook_id] = time.time_ns()
            async with session.post(url, data=request.body, headers=request.headers) as answer:
                await answer.read()
                statuses[answer.status] = statuses.get(answer.status, 0) + 1

        loop = asyncio.get_running_loop()
        started = loop.time()
        tasks = []
        for number, request in enumerate(requests):
            delay = started + number / rate_per_second - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(request)))
        await asyncio.gather(*tasks)
    return sent_at, statuses
