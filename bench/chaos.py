"""Reliability proof: kill `pulse-relay serve` at chosen moments, inject faults, count every event.

    python -m bench.chaos            # long: 24 kill rounds, 10 000 events; writes RELIABILITY.md
    python -m bench.chaos --quick      # a short version of the same run (what CI runs, in pytest)

One run: a Pulse emulator and an HTTP receiver run in this process, the relay runs
as a subprocess with a jsonl file sink, an HTTP sink and a command sink. Several
concurrent senders POST signed events while the relay is SIGKILLed — at a moment
chosen to fall during ingest, a job fetch, a sink delivery or a large-result
download — and restarted, round after round. The emulator, the receiver and the
command inject transient faults (500, 429 with Retry-After, timeouts, connection
resets, truncated JSON, slow bodies, failing and hanging commands) at a configured
rate, and some events carry a permanent fault. Then the relay drains and every
event is accounted for: see `Outcome` for what is counted and `check` for the
contract each count is held to. The hostile-input part (fuzzing, slow clients,
duplicate ids, disk full) is `run_hostile`. tests/reliability/ runs both, smaller.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import random
import signal
import socket
import sqlite3
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.typedefs import Handler

from pulse_relay.emulator import Fault, PulseEmulator
from pulse_relay.signature import sign_headers

SECRET = "whsec_" + base64.b64encode(b"pulse-relay-chaos-secret-32bytes").decode()
API_KEY = "chaos-api-key"
SINKS = ("files", "app", "cmd")
REPO = Path(__file__).resolve().parent.parent

# Permanent faults, carried in the event id so every party can see them.
PERMANENT = {
    "p404": "the job does not exist (GET /job answers 404)",
    "pbad": "GET /job answers a JSON array, not an object",
    "h400": "the HTTP receiver answers 400",
    "cdead": "the command always exits 3",
}
# At most this many transient faults per (event, party), so max_attempts always suffices.
MAX_TRANSIENT_PER_EVENT = 2

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


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# -- the plan -----------------------------------------------------------------


@dataclass(frozen=True)
class PlannedEvent:
    """One event the senders will send, and what each sink must end with."""

    event_id: str
    event_type: str
    job_id: str
    large: bool
    permanent: str | None

    @property
    def needs_fetch(self) -> bool:
        return self.event_type in ("job.completed", "job.failed")

    def expected(self, sink: str) -> str:
        """`delivered` or `dead` for this sink once the relay has drained."""
        if self.permanent in ("p404", "pbad"):
            return "dead"
        if (self.permanent, sink) in (("h400", "app"), ("cdead", "cmd")):
            return "dead"
        return "delivered"


@dataclass
class ChaosConfig:
    """Knobs of one run; the defaults are the long version."""

    events: int = 10_000
    senders: int = 8
    kill_rounds: int = 24
    send_rate_per_second: float = 120.0
    fault_rate: float = 0.08
    permanent_rate: float = 0.01
    large_rate: float = 0.1
    sender_retry_probability: float = 0.7
    drain_timeout_seconds: float = 600.0
    seed: int = 20261123
    workdir: Path = field(default_factory=lambda: Path("/tmp/pulse-relay-chaos"))


def make_plan(config: ChaosConfig, rng: random.Random) -> list[PlannedEvent]:
    """The events of a run: mostly completed jobs, some failed, some without a fetch."""
    plan: list[PlannedEvent] = []
    for n in range(config.events):
        roll = rng.random()
        event_type = (
            "job.completed" if roll < 0.7 else "job.failed" if roll < 0.8 else "job.processing"
        )
        permanent: str | None = None
        if rng.random() < config.permanent_rate:
            kinds = ["h400", "cdead"]
            if event_type != "job.processing":
                kinds += ["p404", "pbad"]
            permanent = rng.choice(kinds)
        large = event_type == "job.completed" and rng.random() < config.large_rate
        suffix = f"-{permanent}" if permanent else ""
        plan.append(
            PlannedEvent(f"evt{n:05d}{suffix}", event_type, f"job{n:05d}{suffix}", large, permanent)
        )
    return plan


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


def script_emulator(
    emulator: PulseEmulator, plan: list[PlannedEvent], config: ChaosConfig, rng: random.Random
) -> dict[str, list[str]]:
    """Add every planned job and queue its faults; returns the fault kinds queued per job."""
    queued: dict[str, list[str]] = {}
    for event in plan:
        if event.permanent == "p404":
            continue
        status = {"job.failed": "failed", "job.processing": "processing"}.get(
            event.event_type, "completed"
        )
        emulator.add_job(event.job_id, status=status, large_result=event.large)
        if event.permanent == "pbad":
            # Persistent: a kill that eats one answer must not turn it into a success.
            emulator.fail_next(event.job_id, *[Fault.raw(b"[1]")] * 200)
            continue
        if not event.needs_fetch:
            continue
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
        queued[event.job_id] = kinds
    return queued


# -- the receiving HTTP app ----------------------------------------------------


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
            kind = self.rng.choice(["500", "429", "timeout", "reset", "slow-body"])
            self.faults[f"http-{kind}"] += 1
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
        self.received[event_id] += 1
        return web.json_response({"ok": True})


# -- the relay subprocess ------------------------------------------------------


def write_relay_config(
    workdir: Path, port: int, emulator_url: str, receiver_url: str, fault_per_mille: int
) -> Path:
    """The TOML configuration of the relay under test."""
    script = workdir / "command-sink.sh"
    script.write_text(COMMAND_SCRIPT)
    for sub in ("run", "got", "faults"):
        (workdir / "cmd" / sub).mkdir(parents=True, exist_ok=True)
    retry = "max_attempts = 10\nretry_initial_seconds = 0.05\nretry_max_seconds = 1.0\n"
    config = workdir / "relay.toml"
    config.write_text(
        f"""
[server]
host = "127.0.0.1"
port = {port}
read_timeout_seconds = 5.0
shutdown_grace_seconds = 5.0

[admin]
port = 0

[verify]
secrets = ["{SECRET}"]

[store]
path = "{workdir / "relay.db"}"

[pulse]
base_url = "{emulator_url}"
api_key = "{API_KEY}"
timeout_seconds = 1.0

[delivery]
lease_seconds = 2.0

[log]
format = "json"
level = "warning"

[[sinks]]
name = "files"
type = "file"
format = "jsonl"
directory = "{workdir / "files"}"
{retry}
[[sinks]]
name = "app"
type = "http"
url = "{receiver_url}"
timeout_seconds = 1.0
{retry}
[[sinks]]
name = "cmd"
type = "command"
argv = ["/bin/sh", "{script}", "{workdir / "cmd"}", "{fault_per_mille}"]
timeout_seconds = 1.0
{retry}"""
    )
    return config


class RelayProcess:
    """`pulse-relay serve` as a subprocess that can be killed and started again."""

    def __init__(self, config: Path, port: int, log_path: Path) -> None:
        self.config = config
        self.port = port
        self.log_path = log_path
        self.process: asyncio.subprocess.Process | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/webhooks/pulse"

    async def start(self, *, timeout_seconds: float = 30.0) -> None:
        with self.log_path.open("ab") as log:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "pulse_relay",
                "--config",
                str(self.config),
                "serve",
                stdout=log,
                stderr=log,
            )
        self.starts += 1
        deadline = time.monotonic() + timeout_seconds
        while True:
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", self.port)
                writer.close()
                return
            except OSError:
                if self.process.returncode is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"relay did not start; see {self.log_path}") from None
                await asyncio.sleep(0.02)

    async def kill(self) -> None:
        """SIGKILL: no shutdown code runs at all."""
        if self.process is not None and self.process.returncode is None:
            self.process.send_signal(signal.SIGKILL)
            await self.process.wait()

    async def terminate(self, *, timeout_seconds: float = 30.0) -> int | None:
        """SIGTERM and wait for the orderly shutdown; SIGKILL past the timeout."""
        if self.process is None or self.process.returncode is not None:
            return None if self.process is None else self.process.returncode
        self.process.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(timeout_seconds):
                return await self.process.wait()
        except TimeoutError:
            await self.kill()
            return None


# -- senders -------------------------------------------------------------------


@dataclass
class SendLog:
    """What the senders know: which events got a 2xx, which were given up."""

    acked: set[str] = field(default_factory=set)
    abandoned: set[str] = field(default_factory=set)
    statuses: Counter[int] = field(default_factory=Counter)
    connection_errors: int = 0
    in_flight: int = 0
    done: bool = False


async def send_all(
    plan: list[PlannedEvent],
    relay: RelayProcess,
    emulator: PulseEmulator,
    config: ChaosConfig,
    rng: random.Random,
    sent: SendLog,
) -> None:
    """Concurrent senders; each failed attempt is retried (as Svix does) or abandoned."""
    queue: asyncio.Queue[PlannedEvent] = asyncio.Queue()
    for event in plan:
        queue.put_nowait(event)
    interval_seconds = config.senders / config.send_rate_per_second
    timeout = aiohttp.ClientTimeout(total=10)

    async def one(session: aiohttp.ClientSession, event: PlannedEvent) -> None:
        body = json.dumps(emulator.webhook_payload(event.event_type, event.job_id)).encode()
        for _ in range(8):
            # Signed afresh on every attempt, as Svix does.
            headers = {**sign_headers(SECRET, event.event_id, body), "content-type": "x/json"}
            headers["content-type"] = "application/json"
            sent.in_flight += 1
            try:
                async with session.post(relay.url, data=body, headers=headers) as response:
                    await response.read()
                    status = response.status
            except (aiohttp.ClientError, TimeoutError):
                status = 0
                sent.connection_errors += 1
            finally:
                sent.in_flight -= 1
            sent.statuses[status] += 1
            if status in (200, 202):
                sent.acked.add(event.event_id)
                return
            if status not in (0, 503):
                raise AssertionError(f"{event.event_id}: unexpected HTTP {status}")
            if rng.random() > config.sender_retry_probability:
                break
            await asyncio.sleep(rng.uniform(0.2, 0.6))
        sent.abandoned.add(event.event_id)

    async def worker() -> None:
        connector = aiohttp.TCPConnector(limit=1, force_close=False)
        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
            while not queue.empty():
                event = queue.get_nowait()
                began = time.monotonic()
                await one(session, event)
                await asyncio.sleep(max(0.0, interval_seconds - (time.monotonic() - began)))

    await asyncio.gather(*(worker() for _ in range(config.senders)))
    sent.done = True


# -- reading the outcome -------------------------------------------------------


def read_store(db_path: Path) -> tuple[dict[str, dict[str, Any]], dict[tuple[str, str], Any]]:
    """Events and deliveries as the store holds them (plain SQL, read only)."""
    db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=30)
    db.row_factory = sqlite3.Row
    try:
        events = {row["id"]: dict(row) for row in db.execute("SELECT id, state FROM events")}
        deliveries = {
            (row["event_id"], row["sink"]): dict(row)
            for row in db.execute(
                "SELECT event_id, sink, state, attempts, last_error FROM deliveries"
            )
        }
    finally:
        db.close()
    return events, deliveries


def integrity(db_path: Path) -> str:
    """`PRAGMA integrity_check` of the store: "ok" or the first problem."""
    db = sqlite3.connect(str(db_path), timeout=30)
    try:
        return str(db.execute("PRAGMA integrity_check").fetchone()[0])
    finally:
        db.close()


def pending_work(db_path: Path) -> int:
    """Deliveries still pending plus fetches still pending."""
    db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=30)
    try:
        deliveries = db.execute("SELECT count(*) FROM deliveries WHERE state = 'pending'")
        fetches = db.execute("SELECT count(*) FROM events WHERE fetch_state = 'pending'")
        return int(deliveries.fetchone()[0]) + int(fetches.fetchone()[0])
    finally:
        db.close()


def read_file_sink(workdir: Path) -> tuple[Counter[str], int]:
    """Envelope ids in the jsonl file, and the number of lines that do not parse."""
    seen: Counter[str] = Counter()
    torn = 0
    path = workdir / "files" / "events.jsonl"
    if not path.exists():
        return seen, 0
    for line in path.read_bytes().splitlines():
        try:
            seen[json.loads(line)["id"]] += 1
        except (ValueError, KeyError, TypeError):
            torn += 1
    return seen, torn


def read_command_sink(workdir: Path) -> tuple[Counter[str], int, Counter[str]]:
    """Envelope ids the command received in full, bad files, and the faults it injected."""
    seen: Counter[str] = Counter()
    bad = 0
    for path in (workdir / "cmd" / "got").iterdir():
        event_id = path.name.split(".", 1)[0]
        try:
            same = json.loads(path.read_bytes())["id"] == event_id
        except (ValueError, KeyError, TypeError):
            same = False
        if same:
            seen[event_id] += 1
        else:
            bad += 1
    faults: Counter[str] = Counter()
    for path in (workdir / "cmd" / "faults").iterdir():
        if path.suffix in (".fail", ".hang"):
            faults["command-" + path.suffix[1:]] += 1
    return seen, bad, faults


@dataclass
class Outcome:
    """Every figure of a run; `problems` lists each breach of the contract."""

    events_planned: int = 0
    acknowledged: int = 0
    abandoned_absent: int = 0
    abandoned_delivered: int = 0
    delivered: dict[str, int] = field(default_factory=dict)
    dead_expected: dict[str, int] = field(default_factory=dict)
    duplicates: dict[str, int] = field(default_factory=dict)
    lost: int = 0
    command_cut_short: int = 0
    kill_rounds: int = 0
    kill_phases: Counter[str] = field(default_factory=Counter)
    faults: Counter[str] = field(default_factory=Counter)
    permanent: Counter[str] = field(default_factory=Counter)
    http_statuses: Counter[int] = field(default_factory=Counter)
    integrity_after_kills: Counter[str] = field(default_factory=Counter)
    integrity_final: str = ""
    drain_seconds: float = 0.0
    total_seconds: float = 0.0
    problems: list[str] = field(default_factory=list)

    @property
    def five_xx_other_than_503(self) -> int:
        return sum(n for status, n in self.http_statuses.items() if status >= 500 and status != 503)


def check(
    plan: list[PlannedEvent],
    sent: SendLog,
    workdir: Path,
    receiver: ChaosReceiver,
    outcome: Outcome,
) -> None:
    """Hold the final state to the contract and fill in the figures."""
    events, deliveries = read_store(workdir / "relay.db")
    seen_by = {"app": receiver.received}
    seen_by["files"], torn = read_file_sink(workdir)
    seen_by["cmd"], bad_files, _ = read_command_sink(workdir)
    if torn:
        outcome.problems.append(f"{torn} torn or unreadable lines in the jsonl sink")
    # A command whose relay is killed while writing its stdin sees a short envelope and
    # may exit 0; the relay never recorded that run, so it runs the command again.
    outcome.command_cut_short = bad_files
    if receiver.bad_bodies:
        outcome.problems.append(f"{receiver.bad_bodies} unreadable bodies at the HTTP receiver")
    known = {event.event_id for event in plan}
    for sink, seen in seen_by.items():
        phantom = set(seen) - known
        if phantom:
            outcome.problems.append(f"{sink}: {len(phantom)} ids never sent, e.g. {min(phantom)}")
    lost: set[str] = set()
    for event in plan:
        acked = event.event_id in sent.acked
        stored = event.event_id in events
        if event.permanent:
            outcome.permanent[event.permanent] += acked
        if not acked and not stored:
            if any(seen[event.event_id] for seen in seen_by.values()):
                outcome.problems.append(f"{event.event_id}: delivered but never stored")
            outcome.abandoned_absent += 1
            continue
        if acked and not stored:
            lost.add(event.event_id)
            outcome.problems.append(f"{event.event_id}: acknowledged but not in the store")
            continue
        if not acked:
            outcome.abandoned_delivered += 1
        for sink in SINKS:
            row = deliveries.get((event.event_id, sink))
            expected = event.expected(sink)
            count = seen_by[sink][event.event_id]
            if row is None:
                # Event and deliveries are written in one transaction: never half-recorded.
                outcome.problems.append(f"{event.event_id}: stored without its {sink} delivery")
                lost.add(event.event_id)
                continue
            if row["state"] != expected:
                outcome.problems.append(
                    f"{event.event_id}/{sink}: {row['state']}, expected {expected}"
                    f" ({row['last_error']})"
                )
            if expected == "delivered":
                if count == 0:
                    lost.add(event.event_id)
                    outcome.problems.append(f"{event.event_id}: never reached {sink}")
                outcome.delivered[sink] = outcome.delivered.get(sink, 0) + (count > 0)
                outcome.duplicates[sink] = outcome.duplicates.get(sink, 0) + max(0, count - 1)
            else:
                outcome.dead_expected[sink] = outcome.dead_expected.get(sink, 0) + 1
                if not row["last_error"]:
                    outcome.problems.append(f"{event.event_id}/{sink}: dead without a reason")
                if count:
                    outcome.problems.append(f"{event.event_id}/{sink}: dead but was received")
    outcome.lost = len(lost)
    outcome.acknowledged = len(sent.acked)
    outcome.events_planned = len(plan)
    outcome.http_statuses = sent.statuses
    outcome.integrity_final = integrity(workdir / "relay.db")
    if outcome.integrity_final != "ok":
        outcome.problems.append(f"integrity_check: {outcome.integrity_final}")


# -- one run ---------------------------------------------------------------------

PHASES = ("ingest", "fetch", "delivery", "download")


async def run_chaos(config: ChaosConfig, *, say: Callable[[str], None] = print) -> Outcome:
    """Send, kill and restart, drain, check; returns the figures (problems listed, not raised)."""
    started = time.monotonic()
    rng = random.Random(config.seed)
    workdir = config.workdir
    if workdir.exists():
        import shutil

        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    plan = make_plan(config, rng)
    outcome = Outcome(kill_phases=Counter())
    emulator = ChaosEmulator()
    receiver = ChaosReceiver(fault_rate=config.fault_rate, rng=random.Random(config.seed + 1))
    await emulator.start()
    await receiver.start()
    queued = script_emulator(emulator, plan, config, random.Random(config.seed + 2))
    port = free_port()
    relay_config = write_relay_config(
        workdir, port, emulator.base_url, receiver.url, round(config.fault_rate * 1000)
    )
    relay = RelayProcess(relay_config, port, workdir / "relay.log")
    sent = SendLog()
    try:
        await relay.start()
        sending = asyncio.create_task(send_all(plan, relay, emulator, config, rng, sent))
        busy: dict[str, Callable[[], bool]] = {
            "ingest": lambda: sent.in_flight > 0,
            "fetch": lambda: emulator.in_flight > 0,
            "delivery": lambda: receiver.in_flight > 0 or any((workdir / "cmd" / "run").iterdir()),
            "download": lambda: emulator.downloads_in_flight > 0,
        }
        for round_number in range(config.kill_rounds):
            wanted = PHASES[round_number % len(PHASES)]
            # Spread the kills over the whole sending period, whatever its real pace.
            share = (round_number + 1) / (config.kill_rounds + 1)
            while not sent.done and len(sent.acked) + len(sent.abandoned) < share * len(plan):
                await asyncio.sleep(0.05)
            await asyncio.sleep(rng.uniform(0.2, 1.0))
            phase = await wait_for_phase(busy[wanted], timeout_seconds=5.0)
            outcome.kill_phases[wanted if phase else "timer"] += 1
            await relay.kill()
            outcome.kill_rounds += 1
            outcome.integrity_after_kills[integrity(workdir / "relay.db")] += 1
            await relay.start()
            say(
                f"kill {round_number + 1}/{config.kill_rounds} during "
                f"{wanted if phase else 'timer (' + wanted + ' not seen)'}; "
                f"acked {len(sent.acked)}/{len(plan)}"
            )
        await sending
        drain_began = time.monotonic()
        deadline = drain_began + config.drain_timeout_seconds
        while pending_work(workdir / "relay.db") and time.monotonic() < deadline:
            await asyncio.sleep(0.25)
        outcome.drain_seconds = time.monotonic() - drain_began
        left = pending_work(workdir / "relay.db")
        if left:
            outcome.problems.append(f"{left} items still pending after the drain timeout")
        code = await relay.terminate()
        if code != 0:
            outcome.problems.append(f"relay exited {code} on SIGTERM")
    finally:
        await relay.kill()
        await receiver.stop()
        await emulator.stop()
    for event in plan:
        for kind in queued.get(event.job_id, []):
            outcome.faults[kind] += 1
    outcome.faults.update(receiver.faults)
    outcome.faults.update(read_command_sink(workdir)[2])
    check(plan, sent, workdir, receiver, outcome)
    outcome.total_seconds = time.monotonic() - started
    return outcome


async def wait_for_phase(is_busy: Callable[[], bool], *, timeout_seconds: float) -> bool:
    """True as soon as `is_busy()` holds (polled every 2 ms), False at the deadline."""
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        if is_busy():
            return True
        await asyncio.sleep(0.002)
    return False


# -- hostile input ---------------------------------------------------------------------


class SyncRelay:
    """`pulse-relay serve` as a subprocess for the synchronous hostile-input probes."""

    def __init__(self, workdir: Path, *, store_path: Path | None = None, read_timeout: float = 1.0):
        import subprocess

        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        # /readyz lives on the admin listener.
        self.admin_port = free_port()
        self.store_path = store_path or workdir / "relay.db"
        config = workdir / "relay.toml"
        config.write_text(
            f"""
[server]
host = "127.0.0.1"
port = {self.port}
read_timeout_seconds = {read_timeout}
max_body_bytes = 65536

[admin]
port = {self.admin_port}

[verify]
secrets = ["{SECRET}"]

[store]
path = "{self.store_path}"
busy_timeout_seconds = 1.0

[log]
format = "json"
level = "error"
"""
        )
        self._log = (workdir / "relay.log").open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "pulse_relay", "--config", str(config), "serve"],
            stdout=self._log,
            stderr=self._log,
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                # The admin listener is bound last: once it answers, both do.
                socket.create_connection(("127.0.0.1", self.admin_port), timeout=0.2).close()
                break
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(
                        f"relay did not start; see {workdir / 'relay.log'}"
                    ) from None
                time.sleep(0.02)

    path = "/webhooks/pulse"

    def stop(self) -> int | None:
        """SIGTERM, wait; returns the exit code (None if it had to be killed)."""
        code: int | None = self.process.poll()
        if code is None:
            self.process.terminate()
            try:
                code = self.process.wait(timeout=20)
            except Exception:
                self.process.kill()
                self.process.wait()
                code = None
        self._log.close()
        return code

    def is_alive(self) -> bool:
        return self.process.poll() is None

    def post(
        self, body: bytes, headers: dict[str, str], *, timeout: float = 10.0
    ) -> tuple[int, dict[str, Any]]:
        """One POST on a fresh connection; (status, JSON answer or {})."""
        import http.client

        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            connection.request("POST", self.path, body=body, headers=headers)
            response = connection.getresponse()
            raw = response.read()
        finally:
            connection.close()
        try:
            answer = json.loads(raw)
        except ValueError:
            answer = {}
        return response.status, answer if isinstance(answer, dict) else {}

    def stored_ids(self) -> set[str]:
        db = sqlite3.connect(f"file:{self.store_path}?mode=ro", uri=True, timeout=30)
        try:
            return {row[0] for row in db.execute("SELECT id FROM events")}
        finally:
            db.close()


def signed_post(relay: SyncRelay, event_id: str, *, job_id: str | None = None) -> int:
    """POST a validly signed job.completed event; returns the HTTP status."""
    body = json.dumps(
        {"type": "job.completed", "data": {"job_id": job_id or "job-x", "status": "completed"}}
    ).encode()
    headers = {**sign_headers(SECRET, event_id, body), "content-type": "application/json"}
    return relay.post(body, headers)[0]


def hostile_requests() -> Any:
    """A hypothesis strategy of (headers, body) pairs no genuine sender would produce."""
    from hypothesis import strategies as st

    header_text = st.text(
        st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=0, max_size=80
    )
    names = st.sampled_from(
        [
            "webhook-id",
            "webhook-timestamp",
            "webhook-signature",
            "svix-id",
            "svix-timestamp",
            "svix-signature",
            "content-type",
            "x-anything",
        ]
    )
    bodies = st.one_of(
        st.binary(max_size=2048),
        st.builds(
            lambda v: json.dumps(v).encode(),
            st.recursive(
                st.none() | st.booleans() | st.integers() | st.text(max_size=20),
                lambda inner: (
                    st.lists(inner, max_size=4)
                    | st.dictionaries(st.text(max_size=8), inner, max_size=4)
                ),
                max_leaves=12,
            ),
        ),
    )
    arbitrary = st.tuples(st.dictionaries(names, header_text, max_size=6), bodies)

    def tampered(args: tuple[bytes, str, str, int, bytes]) -> tuple[dict[str, str], bytes]:
        body, mode, event_id, skew, junk = args
        safe_id = "msg_" + "".join(c for c in event_id if c.isascii() and c.isalnum())[:40]
        if mode == "other-secret":
            other = "whsec_" + base64.b64encode(b"not-the-relay-secret-0123456789").decode()
            return sign_headers(other, safe_id, body), body
        if mode == "stale":
            return sign_headers(SECRET, safe_id, body, timestamp=int(time.time()) - skew), body
        headers = sign_headers(SECRET, safe_id, body)
        if mode == "body-changed":
            return headers, body + junk + b" "
        if mode == "id-changed":
            return {**headers, "webhook-id": safe_id + "x"}, body
        # Malformed entries beside a well-formed but wrong one (beside a matching one they
        # would be accepted, as the reference libraries accept them).
        wrong = "v1," + base64.b64encode(bytes(32)).decode()
        return {**headers, "webhook-signature": f"v1 v1,AAAA {wrong}"}, body

    forged = st.tuples(
        bodies,
        st.sampled_from(["other-secret", "stale", "body-changed", "id-changed", "malformed"]),
        st.text(min_size=1, max_size=30),
        st.integers(min_value=301, max_value=10**9),
        st.binary(max_size=8),
    ).map(tampered)
    return st.one_of(arbitrary, forged)


def fuzz(relay: SyncRelay, examples: int, statuses: Counter[int], *, seed: int = 0) -> None:
    """Send `examples` hostile requests; raise AssertionError at the first breach of contract."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import seed as hypothesis_seed

    @hypothesis_seed(seed)
    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(hostile_requests())
    def probe(request: tuple[dict[str, str], bytes]) -> None:
        headers, body = request
        status, _ = relay.post(body, headers)
        statuses[status] += 1
        assert status < 500 or status == 503, f"HTTP {status} for {headers!r}"
        assert not 200 <= status < 300, f"accepted without a valid signature: {headers!r}"
        assert relay.is_alive(), "the relay died"

    probe()


def trickle(
    port: int, data: bytes, *, prefix: bytes = b"", delay_seconds: float, limit_seconds: float
) -> tuple[float, bytes]:
    """Send `prefix` at once, then `data` one byte at a time; (seconds until the server
    answered or closed the connection, what it answered)."""
    began = time.monotonic()
    answer = b""
    with socket.create_connection(("127.0.0.1", port), timeout=limit_seconds) as sock:
        if prefix:
            sock.sendall(prefix)
        sock.setblocking(False)
        for byte in data:
            if time.monotonic() - began > limit_seconds:
                break
            try:
                sock.send(bytes([byte]))
                time.sleep(delay_seconds)
                chunk = sock.recv(4096)
            except BlockingIOError:
                continue
            except OSError:
                return time.monotonic() - began, answer
            # An answer, or b"" when the server closed the connection.
            return time.monotonic() - began, chunk
        sock.setblocking(True)
        sock.settimeout(max(0.1, limit_seconds - (time.monotonic() - began)))
        with contextlib.suppress(OSError):
            answer = sock.recv(4096)
    return time.monotonic() - began, answer


@dataclass
class SlowClientFigures:
    """How slow clients were cut off while others were served."""

    header_cutoff_seconds: list[float] = field(default_factory=list)
    body_cutoff_seconds: list[float] = field(default_factory=list)
    body_statuses: Counter[str] = field(default_factory=Counter)
    header_answers: Counter[str] = field(default_factory=Counter)
    other_latencies_ms: list[float] = field(default_factory=list)
    other_statuses: Counter[int] = field(default_factory=Counter)


def slow_clients(
    relay: SyncRelay, *, clients: int, others: int, read_timeout: float
) -> SlowClientFigures:
    """Trickle headers and bodies on `clients` connections each while `others` requests run."""
    from concurrent.futures import ThreadPoolExecutor

    figures = SlowClientFigures()
    body = json.dumps({"type": "job.completed", "data": {"job_id": "slow"}}).encode()
    head = (
        f"POST {relay.path} HTTP/1.1\r\nHost: 127.0.0.1\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\n"
    ).encode()
    limit = read_timeout * 4 + 2
    with ThreadPoolExecutor(max_workers=2 * clients + 1) as pool:
        header_jobs = [
            pool.submit(
                trickle,
                relay.port,
                head + b"x-pad: " + b"a" * 400,
                delay_seconds=0.05,
                limit_seconds=limit,
            )
            for _ in range(clients)
        ]
        body_jobs = [pool.submit(_trickle_body, relay, head, body, limit) for _ in range(clients)]
        time.sleep(0.2)
        for n in range(others):
            began = time.perf_counter()
            status = signed_post(relay, f"msg_other_{n}_{time.time_ns()}")
            figures.other_latencies_ms.append((time.perf_counter() - began) * 1000)
            figures.other_statuses[status] += 1
            time.sleep(0.02)
        for job in header_jobs:
            seconds, answer = job.result()
            figures.header_cutoff_seconds.append(seconds)
            figures.header_answers[
                "closed" if not answer else answer.split(b" ", 2)[1].decode()
            ] += 1
        for job in body_jobs:
            seconds, answer = job.result()
            figures.body_cutoff_seconds.append(seconds)
            figures.body_statuses[answer.split(b" ", 2)[1].decode() if answer else "closed"] += 1
    return figures


def _trickle_body(relay: SyncRelay, head: bytes, body: bytes, limit: float) -> tuple[float, bytes]:
    headers = sign_headers(SECRET, f"msg_slow_{time.time_ns()}", body)
    full_head = head + "".join(f"{k}: {v}\r\n" for k, v in headers.items()).encode() + b"\r\n"
    return trickle(relay.port, body, prefix=full_head, delay_seconds=0.05, limit_seconds=limit)


@dataclass
class DuplicateFigures:
    """Requests sent with repeated ids, and what was stored."""

    requests: int = 0
    unique_ids: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    stored: int = 0
    seconds: float = 0.0


def duplicate_ids(
    relay: SyncRelay, *, requests: int, duplicate_rate: float, threads: int = 8, seed: int = 0
) -> DuplicateFigures:
    """`requests` signed POSTs with random ids, `duplicate_rate` of them repeating an id."""
    import http.client
    import threading
    import uuid

    rng = random.Random(seed)
    duplicates = round(requests * duplicate_rate)
    unique = [
        f"msg_{uuid.UUID(int=rng.getrandbits(128)).hex}" for _ in range(requests - duplicates)
    ]
    ids = unique + [rng.choice(unique) for _ in range(duplicates)]
    rng.shuffle(ids)
    figures = DuplicateFigures(requests=requests, unique_ids=len(unique))
    lock = threading.Lock()
    before = len(relay.stored_ids())

    def worker(share: list[str]) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", relay.port, timeout=30)
        try:
            for n, event_id in enumerate(share):
                body = json.dumps(
                    {"type": "job.completed", "data": {"job_id": f"dup-{event_id[-12:]}-{n}"}}
                ).encode()
                headers = {**sign_headers(SECRET, event_id, body), "content-type": "x/json"}
                connection.request("POST", relay.path, body=body, headers=headers)
                response = connection.getresponse()
                response.read()
                with lock:
                    figures.statuses[response.status] += 1
        finally:
            connection.close()

    began = time.monotonic()
    workers = [threading.Thread(target=worker, args=(ids[n::threads],)) for n in range(threads)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join()
    figures.seconds = time.monotonic() - began
    figures.stored = len(relay.stored_ids()) - before
    return figures


@dataclass
class DiskFullFigures:
    """The disk-full probe: what the relay answered while full and after space returned."""

    method: str = ""
    acked_before: int = 0
    accepted_while_filling: int = 0
    unavailable: int = 0
    readyz_while_full: int = 0
    acked_after: int = 0
    statuses_after: Counter[int] = field(default_factory=Counter)
    lost: int = 0
    integrity: str = ""
    exit_code: int | None = None


def disk_full(workdir: Path, *, size_kib: int = 2048) -> DiskFullFigures | None:
    """A store on a small tmpfs: fill it, expect 503, free it, expect 202; None without mount."""
    import subprocess
    import urllib.error
    import urllib.request

    mount_point = workdir / "small-fs"
    mount_point.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_kib}k", "tmpfs", str(mount_point)],
        capture_output=True,
        check=False,
    )
    if mounted.returncode != 0:
        return None
    figures = DiskFullFigures(method=f"tmpfs of {size_kib} KiB")
    acked: set[str] = set()
    refused: list[str] = []
    relay = SyncRelay(workdir / "relay", store_path=mount_point / "relay.db")
    try:
        for n in range(20):
            if signed_post(relay, f"msg_before_{n}", job_id=f"full-{n}") == 202:
                acked.add(f"msg_before_{n}")
        figures.acked_before = len(acked)
        filler = mount_point / "filler"
        with filler.open("wb") as stream, contextlib.suppress(OSError):
            while True:
                stream.write(b"\0" * 65536)
                stream.flush()
        with contextlib.suppress(OSError), filler.open("ab") as stream:
            while True:
                stream.write(b"\0" * 512)
                stream.flush()
        for n in range(2000):
            event_id = f"msg_full_{n}"
            status = signed_post(relay, event_id, job_id=f"full-x{n}")
            if status == 202:
                acked.add(event_id)
                figures.accepted_while_filling += 1
            elif status == 503:
                refused.append(event_id)
                if len(refused) >= 20:
                    break
            else:
                raise AssertionError(f"HTTP {status} while the disk fills")
        figures.unavailable = len(refused)
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{relay.admin_port}/readyz", timeout=10):
                figures.readyz_while_full = 200
        except urllib.error.HTTPError as error:
            figures.readyz_while_full = error.code
        filler.unlink()
        # The sender retries what was refused, then sends new events.
        for event_id in [*refused, *(f"msg_after_{n}" for n in range(20))]:
            status = signed_post(relay, event_id, job_id=f"after-{event_id}")
            figures.statuses_after[status] += 1
            if status == 202:
                acked.add(event_id)
                figures.acked_after += 1
        figures.exit_code = relay.stop()
        stored = relay.stored_ids()
        figures.lost = len(acked - stored)
        figures.integrity = integrity(mount_point / "relay.db")
    finally:
        relay.stop()
        subprocess.run(["umount", str(mount_point)], check=False)
    return figures


# -- the report --------------------------------------------------------------------


@dataclass
class HostileFigures:
    """Everything `run_hostile` measured."""

    fuzz_examples: int = 0
    fuzz_statuses: Counter[int] = field(default_factory=Counter)
    fuzz_stored: int = 0
    slow: SlowClientFigures | None = None
    duplicates: DuplicateFigures | None = None
    disk: DiskFullFigures | None = None
    problems: list[str] = field(default_factory=list)


def run_hostile(
    workdir: Path, *, fuzz_examples: int, duplicate_requests: int, slow_clients_each: int
) -> HostileFigures:
    """Fuzz, slow clients, duplicate ids and disk full against fresh relays; figures + problems."""
    figures = HostileFigures(fuzz_examples=fuzz_examples)
    # A store left by an earlier run would count its events as stored by this one.
    if workdir.exists():
        import shutil

        shutil.rmtree(workdir)
    read_timeout = 1.0
    relay = SyncRelay(workdir / "fuzz", read_timeout=read_timeout)
    try:
        try:
            fuzz(relay, fuzz_examples, figures.fuzz_statuses)
        except AssertionError as error:
            figures.problems.append(f"fuzz: {error}")
        figures.fuzz_stored = len(relay.stored_ids())
        if figures.fuzz_stored:
            figures.problems.append(f"fuzz: {figures.fuzz_stored} forged events stored")
        slow = slow_clients(relay, clients=slow_clients_each, others=100, read_timeout=read_timeout)
        figures.slow = slow
        if max(slow.header_cutoff_seconds + slow.body_cutoff_seconds) > read_timeout + 1.0:
            figures.problems.append("a slow client was not cut off at the read timeout")
        if set(slow.other_statuses) != {202} or set(slow.body_statuses) != {"408"}:
            figures.problems.append(f"slow clients: {slow.other_statuses} {slow.body_statuses}")
        if not relay.is_alive():
            figures.problems.append("the relay died")
    finally:
        relay.stop()
    relay = SyncRelay(workdir / "duplicates", read_timeout=5.0)
    try:
        dup = duplicate_ids(relay, requests=duplicate_requests, duplicate_rate=0.1)
        figures.duplicates = dup
        if dup.stored != dup.unique_ids or dup.statuses[202] != dup.unique_ids:
            figures.problems.append(f"duplicates: stored {dup.stored} of {dup.unique_ids}")
    finally:
        relay.stop()
    figures.disk = disk_full(workdir / "disk")
    if figures.disk is not None and (
        figures.disk.lost or not figures.disk.unavailable or figures.disk.integrity != "ok"
    ):
        figures.problems.append(f"disk full: {figures.disk}")
    return figures


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] if ordered else 0.0


def render(config: ChaosConfig, outcome: Outcome, hostile: HostileFigures, command: str) -> str:
    """RELIABILITY.md."""
    rows = [
        ("events sent (distinct webhook ids)", f"{outcome.events_planned:,}"),
        ("POST attempts (with sender retries)", f"{sum(outcome.http_statuses.values()):,}"),
        ("acknowledged (2xx)", f"{outcome.acknowledged:,}"),
        (
            "never acknowledged: absent / delivered",
            f"{outcome.abandoned_absent} / {outcome.abandoned_delivered}",
        ),
    ]
    for sink in SINKS:
        rows.append(
            (
                f"delivered to `{sink}` (+ dead as planned)",
                f"{outcome.delivered.get(sink, 0):,} (+ {outcome.dead_expected.get(sink, 0)})",
            )
        )
    rows += [
        ("**lost**", f"**{outcome.lost}**"),
        (
            "duplicate deliveries files / app / cmd",
            " / ".join(str(outcome.duplicates.get(s, 0)) for s in SINKS),
        ),
        ("command runs cut short by a kill (redone in full)", str(outcome.command_cut_short)),
        (
            "kill rounds (SIGKILL) by moment",
            f"{outcome.kill_rounds}: "
            + ", ".join(f"{k} {v}" for k, v in sorted(outcome.kill_phases.items())),
        ),
        (
            "`integrity_check` after each kill / at the end",
            f"{dict(outcome.integrity_after_kills)} / {outcome.integrity_final}",
        ),
        ("transient faults injected", f"{sum(outcome.faults.values()):,}"),
        ("permanent faults (acknowledged events)", f"{sum(outcome.permanent.values())}"),
        ("hostile requests tried (fuzz)", f"{hostile.fuzz_examples:,}"),
        (
            "fuzz answers",
            ", ".join(f"{k}: {v}" for k, v in sorted(hostile.fuzz_statuses.items())),
        ),
        ("forged events stored", str(hostile.fuzz_stored)),
        (
            "5xx other than 503 (chaos + fuzz)",
            str(
                outcome.five_xx_other_than_503
                + sum(n for s, n in hostile.fuzz_statuses.items() if s >= 500 and s != 503)
            ),
        ),
    ]
    slow = hostile.slow
    if slow is not None:
        rows += [
            (
                "slow clients: headers trickled → closed after",
                f"{len(slow.header_cutoff_seconds)} x max {max(slow.header_cutoff_seconds):.2f} s "
                f"({dict(slow.header_answers)})",
            ),
            (
                "slow clients: body trickled → answered after",
                f"{len(slow.body_cutoff_seconds)} x max {max(slow.body_cutoff_seconds):.2f} s "
                f"({dict(slow.body_statuses)})",
            ),
            (
                "other clients meanwhile: answers, p50 / p99 / max",
                f"{dict(slow.other_statuses)}, {percentile(slow.other_latencies_ms, 0.5):.1f} / "
                f"{percentile(slow.other_latencies_ms, 0.99):.1f} / "
                f"{max(slow.other_latencies_ms):.1f} ms (target < 100 ms)",
            ),
        ]
    dup = hostile.duplicates
    if dup is not None:
        rows.append(
            (
                "random ids, 10 % duplicates: sent / distinct / stored",
                f"{dup.requests:,} / {dup.unique_ids:,} / {dup.stored:,} "
                f"(answers {dict(sorted(dup.statuses.items()))})",
            )
        )
    disk = hostile.disk
    if disk is None:
        rows.append(("disk full", "not run: cannot mount a tmpfs here (needs CAP_SYS_ADMIN)"))
    else:
        rows.append(
            (
                f"disk full ({disk.method}): 503s / then accepted / lost",
                f"{disk.unavailable} / {disk.acked_after} / {disk.lost} "
                f"(integrity {disk.integrity}; /readyz while full: {disk.readyz_while_full})",
            )
        )
    problems = outcome.problems + hostile.problems
    faults = ", ".join(f"{k} {v}" for k, v in sorted(outcome.faults.items()))
    permanent = ", ".join(f"{k} {v} ({PERMANENT[k]})" for k, v in sorted(outcome.permanent.items()))
    table = "\n".join(f"| {name} | {value} |" for name, value in rows)
    verdict = (
        "every figure as the contract says"
        if not problems
        else "PROBLEMS:\n\n" + "\n".join(f"- {p}" for p in problems[:50])
    )
    return f"""# Reliability

pulse-relay promises that a `2xx` means the event will reach every matching sink.
This file is the evidence: the relay is killed with `SIGKILL` again and again
while signed events pour in, faults are injected on every side, hostile input is
thrown at it, and every event is accounted for at the end. It is produced by one
command, from a fresh checkout, in a few minutes on a 2-core machine:

```sh
{command}
```

Result: **{verdict}**

| figure | value |
|---|---|
{table}

Run of {time.strftime("%Y-%m-%d", time.gmtime())}: {config.events:,} events from
{config.senders} concurrent senders at about {config.send_rate_per_second:.0f}/s, seed
{config.seed}; chaos part {outcome.total_seconds:.0f} s, of which {outcome.drain_seconds:.0f} s
draining after the last send.

## What happens in the run

- **Set-up.** The Pulse emulator and an HTTP receiver run in the test process; the
  relay runs as `pulse-relay serve` in a subprocess with three sinks: a jsonl file,
  the HTTP receiver and a command (`/bin/sh` script writing one file per run).
  `delivery.lease_seconds = 2`, so a restart takes up the work a killed process
  had claimed within two seconds.
- **Events.** 70 % `job.completed` (10 % of them with a large result served through a
  single-use URL), 10 % `job.failed`, 20 % `job.processing` (no fetch). Every event
  is for its own job.
- **Kills.** Each round waits a random time, then until the chosen moment is
  happening — a POST in flight (*ingest*), a `GET /job` in flight (*fetch*), a sink
  call in flight (*delivery*), a large-result download in flight (*download*) — and
  sends `SIGKILL`. `PRAGMA integrity_check` runs on the store while the relay is
  down, then the relay is started again. *timer* counts rounds whose moment did not
  occur within 5 s (killed anyway).
- **Senders.** A POST that fails (connection refused or reset, 503) is retried
  after 0.2-0.6 s with probability {config.sender_retry_probability}, as Svix would;
  otherwise the event is given up. Given-up events must be absent everywhere or
  delivered everywhere — never stored without their deliveries.
- **Transient faults** ({faults}): the emulator answers 500, 429 with
  `Retry-After: 1`, hangs past `pulse.timeout_seconds`, resets the connection or
  truncates the JSON, on `GET /job` and on downloads; the receiver answers 500,
  429 with `Retry-After`, hangs past the sink timeout, resets, or trickles a 2xx
  body; the command exits 1 or hangs past its timeout. Rate {config.fault_rate:.0%}
  per party per attempt, at most {MAX_TRANSIENT_PER_EVENT} per event and party: each
  must end `delivered`.
- **Permanent faults** ({permanent}): each must end `dead`, with a reason, on the
  sinks it concerns — and `delivered` on the others. No other outcome is accepted.
- **Counting.** Deliveries are identified by the envelope `id`: jsonl lines, POST
  bodies the receiver answered 2xx, complete envelopes the command saved. *lost*
  counts acknowledged events that some sink it matches never received. Duplicates
  (at-least-once delivery) come from work in flight at a kill and from sink calls
  that succeeded after the relay's timeout (the receiver's slow 2xx bodies).
- **Hostile input** (separate relays, `read_timeout_seconds = 1`): hypothesis
  generates arbitrary headers and bodies and forged requests (other secret, stale
  timestamp, body or id changed after signing, malformed signature lists); none may
  be accepted or stored, none may get a 5xx other than 503, the process must
  survive. Slow clients trickle headers or bodies byte by byte while other clients
  send signed events. Random ids with 10 % duplicates must store exactly the
  distinct ones. The store on a small tmpfs is filled up: the relay must answer
  503, then accept again once space returns, losing nothing.

## Versions

- **CI (every change):** `python -m pytest tests/reliability` runs the same code,
  smaller: a few hundred events, one kill per moment, fewer hypothesis examples,
  2 000 duplicate-id requests (about 90 s).
- **Long:** the command above (defaults: {ChaosConfig().kill_rounds} kill rounds,
  {ChaosConfig().events:,} events, {hostile.fuzz_examples:,} fuzz examples,
  {dup.requests if dup else 0:,} duplicate-id requests). `python -m bench.chaos --help`
  lists the knobs; the exit status is 1 when any figure breaks the contract.

## Notes

- Fetching the job uses a fixed retry policy (first retry within 1 s, doubling up to
  10 minutes); a job whose fetch fails many times in a row therefore drains slowly.
  The fault rates above keep that within seconds.
- `/readyz` stays 200 while the disk is full: its probe takes a write lock without
  writing, which succeeds on a full disk. Ingest answers 503 correctly meanwhile.
- After a `408`, aiohttp keeps reading (lingering) for up to 10 s before closing
  the connection; the answer itself is sent at the read timeout.
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.chaos", description=__doc__.split("\n")[0]
    )
    defaults = ChaosConfig()
    parser.add_argument("--events", type=int, default=defaults.events)
    parser.add_argument("--rounds", type=int, default=defaults.kill_rounds)
    parser.add_argument("--rate", type=float, default=defaults.send_rate_per_second)
    parser.add_argument("--fault-rate", type=float, default=defaults.fault_rate)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--fuzz", type=int, default=2000, help="hypothesis examples")
    parser.add_argument("--duplicates", type=int, default=10_000, help="duplicate-id requests")
    parser.add_argument("--workdir", type=Path, default=defaults.workdir)
    parser.add_argument("--output", type=Path, default=REPO / "RELIABILITY.md")
    parser.add_argument("--quick", action="store_true", help="300 events, 4 rounds, no file")
    args = parser.parse_args(argv)
    if args.quick:
        args.events, args.rounds, args.fuzz, args.duplicates = 300, 4, 200, 1000
    config = ChaosConfig(
        events=args.events,
        kill_rounds=args.rounds,
        send_rate_per_second=args.rate,
        fault_rate=args.fault_rate,
        seed=args.seed,
        workdir=args.workdir / "chaos",
    )
    outcome = asyncio.run(run_chaos(config))
    print(f"chaos: lost {outcome.lost}, problems {len(outcome.problems)}", flush=True)
    hostile = run_hostile(
        args.workdir / "hostile",
        fuzz_examples=args.fuzz,
        duplicate_requests=args.duplicates,
        slow_clients_each=10,
    )
    command = "python -m bench.chaos"
    report = render(config, outcome, hostile, command)
    if args.quick:
        print(report)
    else:
        args.output.write_text(report)
        print(f"wrote {args.output}")
    for problem in outcome.problems + hostile.problems:
        print("PROBLEM:", problem, file=sys.stderr)
    return 1 if outcome.problems or hostile.problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
