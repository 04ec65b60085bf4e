"""`pulse-relay demo`: the whole pipeline in a temporary folder, against the built-in emulator.

Signed webhooks go through the real ingress, a large result is downloaded once,
an HTTP sink fails twice before it recovers, a command sink runs, an app uses
the relay's Pulse API pass-through as the Pulse SDK does — it extracts a
document, then applies a schema to that extraction asynchronously, and with no
webhook and no `watch` call both jobs are delivered — and one job is watched by
hand; then the demo shows what every sink received.
"""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import aiohttp
from aiohttp import web

from pulse_relay.app import Relay
from pulse_relay.config import Settings
from pulse_relay.emulator import PulseEmulator
from pulse_relay.store import EventView

DEADLINE_SECONDS = 30.0
RESULTS_FOLDER = "results"
COMMAND_OUT_FOLDER = "command-out"
# The polled events the demo waits for: the extraction, the schema applied to it, the watched job.
POLLED_EVENTS = 3
EVENT_ID_WIDTH = 36
_DOCUMENT = b"%PDF-1.7\n% an invoice, as an app would upload it\n" * 200
# What the app asks of the extracted invoice: `client.schema(schema_config=...)`.
_INVOICE_SCHEMA = {
    "input_schema": {
        "type": "object",
        "properties": {"invoice_number": {"type": "string"}, "total": {"type": "number"}},
    }
}
# How often the app polls its extraction, as an SDK user would with `jobs.get_job`.
_APP_POLL_SECONDS = 0.05
# Copies stdin to a file named after the event: the command sink's observable effect.
_COMMAND = (
    "import json, pathlib, sys\n"
    "data = sys.stdin.buffer.read()\n"
    "event = json.loads(data)\n"
    "name = event['id'].replace(':', '_') + '.json'\n"
    "(pathlib.Path(sys.argv[1]) / name).write_bytes(data)\n"
    "print('stored', event['type'], event['job_id'])\n"
)


@dataclass
class _FlakyApp:
    """The operator's app behind the HTTP sink: down for its first two requests."""

    failures_left: int = 2
    received: list[dict[str, Any]] = field(default_factory=list)
    refused: int = 0

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        if self.failures_left > 0:
            self.failures_left -= 1
            self.refused += 1
            return web.json_response({"error": "warming up"}, status=503)
        self.received.append(json.loads(body))
        return web.json_response({"ok": True})


async def run_demo(out: TextIO, *, workdir: Path | None = None) -> bool:
    """Run the demo, print what happened to `out`; True when every delivery arrived."""
    if workdir is not None:
        return await _run(out, workdir)
    with tempfile.TemporaryDirectory(prefix="pulse-relay-demo-") as folder:
        return await _run(out, Path(folder))


async def _run(out: TextIO, folder: Path) -> bool:
    secret = "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()
    files = folder / RESULTS_FOLDER
    command_out = folder / COMMAND_OUT_FOLDER
    command_out.mkdir(parents=True, exist_ok=True)
    app = _FlakyApp()
    app_runner, app_url = await _start_app(app)

    emulator = PulseEmulator(api_key="demo-" + secrets.token_hex(8))
    emulator.add_job("job-invoice-001")
    emulator.add_job("job-scan-large", large_result=True)
    emulator.add_job("job-watched", statuses=["pending", "processing", "completed"])
    await emulator.start()
    settings = _settings(folder, secret, emulator.base_url, emulator.api_key, app_url)
    relay = Relay(settings)
    await relay.start()
    started = time.monotonic()
    try:
        out.write(f"pulse-relay demo in {folder}\n")
        out.write(f"  relay     {relay.webhook_url}\n  emulator  {emulator.base_url}\n")
        out.write(f"  pulse API {relay.admin_url}/pulse (the relay's pass-through)\n")
        out.write(f"  app       {app_url} (answers 503 to its first two requests)\n\n")
        await _send_webhooks(out, emulator, relay.webhook_url, secret)
        await _submit_like_the_sdk(out, f"{relay.admin_url}/pulse", emulator.api_key)
        await relay.store.add_watches(
            ["job-watched"],
            metadata={"user": "demo@example.com", "source_file": "watched.pdf"},
            interval_seconds=settings.poll.interval_seconds,
        )
        assert relay.poller is not None
        relay.poller.notify()
        out.write("watching job-watched (polled: pending → processing → completed)\n\n")
        views = await _wait_until_settled(relay)
    finally:
        await relay.stop()
        await emulator.stop()
        await app_runner.cleanup()
    elapsed = time.monotonic() - started
    return _report(out, views, app, emulator, files, command_out, elapsed)


async def _start_app(app: _FlakyApp) -> tuple[web.AppRunner, str]:
    """Serve `app` on a free loopback port; returns its runner and the URL of its endpoint."""
    web_app = web.Application()
    web_app.router.add_post("/events", app.handle)
    app_runner = web.AppRunner(web_app, access_log=None)
    await app_runner.setup()
    await web.TCPSite(app_runner, "127.0.0.1", 0).start()
    return app_runner, f"http://127.0.0.1:{app_runner.addresses[0][1]}/events"


async def _send_webhooks(
    out: TextIO, emulator: PulseEmulator, webhook_url: str, secret: str
) -> None:
    """Signed webhooks of each kind, then one signed with the wrong secret."""
    sent = [
        ("job.created", "job-invoice-001", None),
        ("job.completed", "job-invoice-001", None),
        ("job.completed", "job-scan-large", None),
        ("credits.low_balance", None, {"remaining_credits": 12}),
    ]
    for event_type, job_id, data in sent:
        status, answer = await emulator.send_webhook(
            webhook_url, secret, event_type, job_id, data=data
        )
        out.write(f"sent {event_type:<20} {job_id or '-':<16} → {status} {answer['status']}\n")
    forged, answer = await emulator.send_webhook(
        webhook_url,
        "whsec_" + base64.b64encode(b"x" * 24).decode(),
        "job.completed",
        "job-invoice-001",
    )
    out.write(f"sent a forged event (wrong secret)       → {forged} {answer['status']}\n")


def _settings(folder: Path, secret: str, pulse_url: str, api_key: str, app_url: str) -> Settings:
    """The demo relay: every sink type, fast polling, quiet logs, its files inside `folder`."""
    return Settings.model_validate(
        {
            "server": {"host": "127.0.0.1", "port": 0},
            "admin": {"host": "127.0.0.1", "port": 0},
            "verify": {"secrets": [secret]},
            "store": {"path": str(folder / "relay.db")},
            "pulse": {"base_url": pulse_url, "api_key": api_key},
            "poll": {"interval_seconds": 0.2, "max_interval_seconds": 0.5},
            "log": {"level": "error"},
            "sinks": [
                {"name": "files", "type": "file", "directory": str(folder / RESULTS_FOLDER)},
                {
                    "name": "app",
                    "type": "http",
                    "url": app_url,
                    "events": ["job.*", "credits.*"],
                    "retry_initial_seconds": 0.3,
                },
                {
                    "name": "script",
                    "type": "command",
                    "argv": [sys.executable, "-c", _COMMAND, str(folder / COMMAND_OUT_FOLDER)],
                    "events": ["job.completed"],
                },
            ],
        }
    )


async def _submit_like_the_sdk(out: TextIO, pulse_url: str, api_key: str) -> None:
    """An app's chained flow, sent byte for byte as `Pulse(base_url=pulse_url)` sends it.

    `client.extract(file=..., async_=True)`, `client.jobs.get_job(job_id)` until
    it is completed, then `client.schema(extraction_id=..., schema_config=...,
    async_=True)`. The official SDK is not a dependency of the relay, so the demo
    builds the same requests itself: the multipart form, the JSON bodies, the key.
    """
    headers = {"x-api-key": api_key, "X-Pulse-Relay-Meta-User-Id": "demo@example.com"}
    form = aiohttp.FormData()
    form.add_field("async", "true")
    form.add_field("file", _DOCUMENT, filename="invoice-042.pdf", content_type="application/pdf")
    async with aiohttp.ClientSession(headers=headers) as session:
        async with session.post(f"{pulse_url}/extract", data=form) as response:
            answer = await response.json()
        job_id = answer.get("job_id")
        out.write(
            f"app submitted invoice-042.pdf to {pulse_url}/extract (as the Pulse SDK does)"
            f" → {response.status}, job {job_id} {answer.get('status')}\n"
            "  no webhook, no watch call: the relay saw the job id and polls the job\n"
        )
        extraction_id = await _extraction_of(session, f"{pulse_url}/job/{job_id}")
        if extraction_id is None:
            out.write("  the extraction did not complete; no schema applied\n")
            return
        body = {"extraction_id": extraction_id, "schema_config": _INVOICE_SCHEMA, "async": True}
        async with session.post(f"{pulse_url}/schema", json=body) as response:
            answer = await response.json()
        out.write(
            f"app applied a schema to extraction {extraction_id} via {pulse_url}/schema"
            f" → {response.status}, job {answer.get('job_id')} {answer.get('status')}\n"
            "  delivered the same way: the relay watches that job too\n"
        )


async def _extraction_of(session: aiohttp.ClientSession, job_url: str) -> str | None:
    """Poll the job as the app would (`jobs.get_job`); its `extraction_id` once completed."""
    deadline = time.monotonic() + DEADLINE_SECONDS
    while time.monotonic() < deadline:
        async with session.get(job_url) as response:
            job = await response.json()
        if job.get("status") == "completed":
            result = job.get("result") or {}
            extraction_id = result.get("extraction_id")
            return extraction_id if isinstance(extraction_id, str) else None
        if job.get("status") not in {"pending", "processing"}:
            return None
        await asyncio.sleep(_APP_POLL_SECONDS)
    return None


async def _wait_until_settled(relay: Relay) -> list[EventView]:
    deadline = time.monotonic() + DEADLINE_SECONDS
    while True:
        views = await relay.store.list_events(limit=100)
        polled = sum(v.source == "poll" for v in views)
        pending = any(d.state == "pending" for v in views for d in v.deliveries.values())
        if (polled >= POLLED_EVENTS and not pending) or time.monotonic() > deadline:
            return views
        await asyncio.sleep(0.1)


def _short(event_id: str) -> str:
    """An id that fits its column, keeping both ends (`poll:<job id>:<status>`)."""
    if len(event_id) <= EVENT_ID_WIDTH:
        return event_id
    return event_id[:20] + "…" + event_id[-(EVENT_ID_WIDTH - 21) :]


def _describe_metadata(metadata: dict[str, Any]) -> str:
    """The metadata on one line: its keys, and the submission the pass-through saw."""
    parts = [f"{k}={v}" for k, v in metadata.items() if k != "request"]
    request = metadata.get("request")
    if isinstance(request, dict):
        files = ", ".join(
            f"{f['filename']} ({f['size_bytes']} bytes, sha256 {f['sha256'][:12]}…)"
            for f in request.get("files", [])
        )
        # A chained call names the extraction it works on: the chain shows in the audit trail.
        on = request.get("fields", {}).get("extraction_id")
        source = f"on {on}" if isinstance(on, str) else files
        parts.append(f"request {request['method']} {request['path']} {source}".rstrip())
    return "; ".join(parts)


def _report(
    out: TextIO,
    views: list[EventView],
    app: _FlakyApp,
    emulator: PulseEmulator,
    files: Path,
    command_out: Path,
    elapsed_seconds: float,
) -> bool:
    sinks = ["files", "app", "script"]
    header = f"{'EVENT':<36} {'TYPE':<20} {'SOURCE':<8}" + "".join(f" {s:<19}" for s in sinks)
    out.write(header + "\n")
    everything_arrived = True
    for view in sorted(views, key=lambda v: v.received_at):
        cells = []
        for sink in sinks:
            delivery = view.deliveries.get(sink)
            if delivery is None:
                cells.append("-")
                continue
            everything_arrived &= delivery.state == "delivered"
            tries = delivery.attempts
            cells.append(f"{delivery.state} ({tries} tr{'y' if tries == 1 else 'ies'})")
        out.write(
            f"{_short(view.id):<{EVENT_ID_WIDTH}} {view.type or '-':<20} {view.source:<8}"
            + "".join(f" {c:<19}" for c in cells)
            + "\n"
        )
    everything_arrived &= sum(v.source == "poll" for v in views) >= POLLED_EVENTS
    out.write("\nWhat the sinks received:\n")
    _report_files(out, files)
    out.write(
        f"  app     {len(app.received)} envelopes after {app.refused} refused requests "
        f"(retried with backoff)\n"
    )
    for path in sorted(command_out.glob("*.json")):
        envelope = json.loads(path.read_bytes())
        out.write(
            f"  script  {envelope['type']} for {envelope['job_id']} (source {envelope['source']})\n"
        )
    out.write(f"  large result downloaded {emulator.downloads} time(s) for 3 sinks\n")
    verdict = "everything arrived" if everything_arrived else "NOT everything arrived"
    out.write(f"\n{verdict} in {elapsed_seconds:.1f} s\n")
    return everything_arrived


def _report_files(out: TextIO, files: Path) -> None:
    for path in sorted(files.glob("*.json")):
        envelope = json.loads(path.read_bytes())
        job = envelope["job"] or {}
        line = f"  files   {path.name:<26} {envelope['type']:<15} job {job.get('status', '-')}"
        if job.get("result"):
            line += f", result {len(json.dumps(job['result']))} bytes"
        out.write(line + "\n")
        if envelope["relay"]["metadata"]:
            out.write(f"          metadata {_describe_metadata(envelope['relay']['metadata'])}\n")
