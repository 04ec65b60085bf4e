"""Everyone the relay talks to in a chaos run, each injecting faults, and the relay itself."""

from __future__ import annotations

import asyncio
import json
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler

from bench.chaos.plan import MAX_TRANSIENT_PER_EVENT, ChaosConfig, PlannedEvent
from bench.common import API_KEY, PYTHON, SECRET, WEBHOOK_PATH, Process, write_toml
from pulse_relay.emulator import Fault, PulseEmulator

COMMAND_SCRIPT = r"""#!/bin/sh
# Command sink of the chaos run. $1: output folder; $2: transient fault rate in per mille.
# Fails (exit 1) or hangs (past the sink's timeout) at random, at most twice per event;
# an event id containing "-cdead" always fails. A success leaves one file per run.
out="$1"; rate="$2"; id="$PULSE_EVENT_ID"
tmp="$out/run/$id.$$"
cat > "$tmp" || exit 1
case "$id" in *-cdead*) rm -f "$tmp"; echo "refused on purpose: $id" >&2; exit 3;; esac
r=$(od -An -N2 -tu2 /dev/urandom | tr -d ' ')
if [ $((r % 1000)) -lt "$rate" ] && [ ! -e "$out/faults/$id.2" ]; then
  if [ -e "$out/faults/$id.1" ]; then n=2; else n=1; fi
  rm -f "$tmp"
  if [ $((r % 2)) -eq 0 ]; then
    : > "$out/faults/$id.$n.fail"; : > "$out/faults/$id.$n"
    echo "transient failure on purpose" >&2; exit 1
  fi
  : > "$out/faults/$id.$n.hang"; : > "$out/faults/$id.$n"
  exec sleep 3
fi
mv "$tmp" "$out/got/$id.$$.json"
"""

# -- the Pulse emulator, with download tracking ----------------------------------


class ChaosEmulator(PulseEmulator):
    """The project's emulator, also counting large-result downloads in flight."""

    def __init__(self) -> None:
        super().__init__(api_key=API_KEY)
        self.downloads_in_flight = 0

    @web.middleware
    async def _record(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        is_download = request.path.startswith("/results/")
        self.downloads_in_flight += is_download
        try:
            return await super()._record(request, handler)
        finally:
            self.downloads_in_flight -= is_download


PULSE_FAULTS: dict[str, Callable[[], list[Fault]]] = {
    "pulse-500": lambda: [Fault.http(500)],
    "pulse-429": lambda: [Fault.http(429, retry_after="1")],
    "pulse-timeout": lambda: [Fault.slow(2.0)],
    "pulse-reset": lambda: [Fault.reset(), Fault.reset()],
    "pulse-truncated": lambda: [Fault.truncated()],
}
DOWNLOAD_FAULTS: dict[str, Callable[[], list[Fault]]] = {
    "download-500": lambda: [Fault.http(500)],
    "download-truncated": lambda: [Fault.truncated()],
    "download-reset": lambda: [Fault.reset(), Fault.reset()],
    "download-timeout": lambda: [Fault.slow(2.0)],
}
JOB_STATUS_OF_TYPE = {"job.failed": "failed", "job.processing": "processing"}


def script_emulator(
    emulator: PulseEmulator, plan: list[PlannedEvent], config: ChaosConfig, rng: random.Random
) -> dict[str, list[str]]:
    """Add every planned job and queue its faults; returns the fault kinds queued per job."""
    queued: dict[str, list[str]] = {}
    for event in plan:
        if event.permanent == "p404":
            continue
        status = JOB_STATUS_OF_TYPE.get(event.event_type, "completed")
        emulator.add_job(event.job_id, status=status, large_result=event.large)
        if event.permanent == "pbad":
            # Persistent: a kill that eats one answer must not turn it into a success.
            emulator.fail_next(event.job_id, *[Fault.raw(b"[1]")] * 200)
            continue
        if event.needs_fetch:
            queued[event.job_id] = _queue_transient_faults(emulator, event, config, rng)
    return queued


def _queue_transient_faults(
    emulator: PulseEmulator, event: PlannedEvent, config: ChaosConfig, rng: random.Random
) -> list[str]:
    kinds: list[str] = []
    for _ in range(MAX_TRANSIENT_PER_EVENT):
        if rng.random() < config.fault_rate:
            kind = rng.choice(sorted(PULSE_FAULTS))
            emulator.fail_next(event.job_id, *PULSE_FAULTS[kind]())
            kinds.append(kind)
    if event.large:
        download: list[Fault] = []
        if rng.random() < config.fault_rate:
            kind = rng.choice(sorted(DOWNLOAD_FAULTS))
            download += DOWNLOAD_FAULTS[kind]()
            kinds.append(kind)
        # Slow enough that a kill can land during the download.
        download += [Fault.slow(0.3)] * 3
        emulator.fail_next_download(event.job_id, *download)
    return kinds


# -- the receiving HTTP app ----------------------------------------------------

RECEIVER_FAULTS = ("500", "429", "timeout", "reset", "slow-body")


@dataclass
class ChaosReceiver:
    """The operator's app: records envelope ids it answered 2xx, injects faults at a rate."""

    fault_rate: float
    rng: random.Random
    received: Counter[str] = field(default_factory=Counter)
    faults: Counter[str] = field(default_factory=Counter)
    faults_per_event: Counter[str] = field(default_factory=Counter)
    bad_bodies: int = 0
    in_flight: int = 0
    url: str = ""
    _runner: web.AppRunner | None = None

    async def start(self) -> str:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/hook", self._handle)
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}/hook"
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.in_flight += 1
        try:
            return await self._answer(request)
        finally:
            self.in_flight -= 1

    async def _answer(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        try:
            event_id = json.loads(body)["id"]
        except (ValueError, KeyError, TypeError):
            self.bad_bodies += 1
            return web.json_response({"error": "bad envelope"}, status=422)
        if "-h400" in event_id:
            return web.json_response({"error": "refused on purpose"}, status=400)
        if (
            self.faults_per_event[event_id] < MAX_TRANSIENT_PER_EVENT
            and self.rng.random() < self.fault_rate
        ):
            self.faults_per_event[event_id] += 1
            kind = self.rng.choice(RECEIVER_FAULTS)
            self.faults[f"http-{kind}"] += 1
            return await self._fault(kind, request, event_id)
        self.received[event_id] += 1
        return web.json_response({"ok": True})

    async def _fault(self, kind: str, request: web.Request, event_id: str) -> web.StreamResponse:
        if kind == "500":
            return web.json_response({"error": "scripted"}, status=500)
        if kind == "429":
            return web.json_response(
                {"error": "slow down"}, status=429, headers={"Retry-After": "1"}
            )
        if kind == "timeout":
            await asyncio.sleep(2.0)
            return web.json_response({"ok": True})
        if kind == "reset":
            if request.transport is not None:
                request.transport.abort()
            raise asyncio.CancelledError
        # A 2xx whose body trickles in: counted as received, the relay may still time out.
        self.received[event_id] += 1
        response = web.StreamResponse(status=200)
        await response.prepare(request)
        for byte in b'{"ok": true}':
            await response.write(bytes([byte]))
            await asyncio.sleep(0.15)
        await response.write_eof()
        return response


# -- the relay subprocess ------------------------------------------------------

SINK_RETRY = {"max_attempts": 10, "retry_initial_seconds": 0.05, "retry_max_seconds": 1.0}
# A restart takes up the work a killed process had claimed within this many seconds.
LEASE_SECONDS = 2.0


def write_relay_config(
    workdir: Path, port: int, emulator_url: str, receiver_url: str, fault_per_mille: int
) -> Path:
    """The TOML configuration of the relay under test, and the command sink's folders."""
    script = workdir / "command-sink.sh"
    script.write_text(COMMAND_SCRIPT)
    for sub in ("run", "got", "faults"):
        (workdir / "cmd" / sub).mkdir(parents=True, exist_ok=True)
    sinks: list[dict[str, Any]] = [
        {"name": "files", "type": "file", "format": "jsonl", "directory": workdir / "files"},
        {"name": "app", "type": "http", "url": receiver_url, "timeout_seconds": 1.0},
        {
            "name": "cmd",
            "type": "command",
            "argv": ["/bin/sh", script, workdir / "cmd", str(fault_per_mille)],
            "timeout_seconds": 1.0,
        },
    ]
    document = {
        "server": {
            "host": "127.0.0.1",
            "port": port,
            "read_timeout_seconds": 5.0,
            "shutdown_grace_seconds": 5.0,
        },
        "admin": {"port": 0},
        "verify": {"secrets": [SECRET]},
        "store": {"path": workdir / "relay.db"},
        "pulse": {"base_url": emulator_url, "api_key": API_KEY, "timeout_seconds": 1.0},
        "delivery": {"lease_seconds": LEASE_SECONDS},
        "log": {"format": "json", "level": "warning"},
        "sinks": [{**sink, **SINK_RETRY} for sink in sinks],
    }
    return write_toml(workdir / "relay.toml", document)


class ChaosRelay:
    """`pulse-relay serve` as a subprocess that can be killed and started again."""

    def __init__(self, config: Path, port: int, log_path: Path) -> None:
        self.url = f"http://127.0.0.1:{port}{WEBHOOK_PATH}"
        self.starts = 0
        self._process = Process(
            [PYTHON, "-m", "pulse_relay", "--config", str(config), "serve"],
            log_path=log_path,
            health_url=f"http://127.0.0.1:{port}/healthz",
            start_timeout_seconds=30.0,
        )

    async def start(self) -> None:
        """Start it and return once it answers; the senders keep running meanwhile."""
        await asyncio.to_thread(self._process.start)
        self.starts += 1

    async def kill(self) -> None:
        """SIGKILL: no shutdown code runs at all."""
        await asyncio.to_thread(self._process.kill)

    async def terminate(self, *, timeout_seconds: float = 30.0) -> int | None:
        """SIGTERM and wait for the orderly shutdown; SIGKILL past the timeout."""
        return await asyncio.to_thread(self._process.stop, timeout_seconds=timeout_seconds)
