"""The pass-through end to end: the official SDK, a real `pulse-relay serve`, the emulator.

The app only points its SDK at the relay's admin listener (`/pulse`); nobody calls
`watch`. Every job it submits must reach the file, HTTP and command sinks as a
polled event carrying the metadata captured from the submission.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import json
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pulse
import pytest
from yarl import URL

from pulse_relay.emulator import Fault, PulseEmulator, UploadedFile
from tests.conftest import make_body, signed, wait_for
from tests.helpers import (
    Receiver,
    Served,
    async_sdk_client,
    deep_merge,
    free_port,
    recorder_argv,
    sdk_client,
    write_config,
)

ADMIN_TOKEN = "admin-token-for-tests"
MIB = 1024 * 1024


@dataclass
class Relay:
    """A running `serve` subprocess and where its sinks write."""

    served: Served
    port: int
    admin_port: int
    results: Path
    command_out: Path

    @property
    def pulse_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}/pulse"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    def envelope(self, job_id: str) -> dict[str, Any] | None:
        path = self.results / f"{job_id}.json"
        return json.loads(path.read_bytes()) if path.exists() else None

    def commanded(self, event_id: str) -> dict[str, Any] | None:
        path = self.command_out / (event_id.replace(":", "_") + ".json")
        return json.loads(path.read_bytes()) if path.exists() else None

    def watched_job_ids(self) -> list[str]:
        with contextlib.closing(sqlite3.connect(self.results.parent / "relay.db")) as db:
            return [row[0] for row in db.execute("SELECT job_id FROM watches")]

    def memory_kib(self, field: str) -> int:
        """VmRSS / VmHWM of the relay process, from /proc."""
        status = Path(f"/proc/{self.served.process.pid}/status").read_text()
        (line,) = [line for line in status.splitlines() if line.startswith(field + ":")]
        return int(line.split()[1])


@pytest.fixture
def start_serve(tmp_path: Path, emulator: PulseEmulator, receiver: Receiver) -> Iterator[Any]:
    started: list[Served] = []

    def start(**overrides: dict[str, Any]) -> Relay:
        port, admin_port = free_port(), free_port()
        argv, command_out = recorder_argv(tmp_path)
        results = tmp_path / "results"
        sections: dict[str, dict[str, Any]] = {
            "pulse": {"base_url": emulator.base_url, "api_key": emulator.api_key},
            "poll": {"interval_seconds": 0.1, "max_interval_seconds": 0.2},
        }
        sinks = [
            {"name": "files", "type": "file", "directory": str(results)},
            {"name": "app", "type": "http", "url": receiver.url},
            {"name": "script", "type": "command", "argv": argv},
        ]
        config = write_config(
            tmp_path, port, admin_port=admin_port, sinks=sinks, **deep_merge(sections, overrides)
        )
        served = Served.start(config, port, tmp_path / "serve.log")
        started.append(served)
        served.wait_listening(admin_port)
        return Relay(served, port, admin_port, results, command_out)

    yield start
    for served in started:
        if served.process.poll() is None:
            assert served.terminate() == 0, served.log()


def _delivered_everywhere(relay: Relay, receiver: Receiver, job_id: str, status: str) -> bool:
    event_id = f"poll:{job_id}:{status}"
    envelope = relay.envelope(job_id)
    return (
        envelope is not None
        and envelope["id"] == event_id
        and any(r.envelope["id"] == event_id for r in receiver.received)
        and relay.commanded(event_id) is not None
    )


async def test_sdk_jobs_reach_every_sink_with_their_metadata_and_no_watch_call(
    start_serve: Any, emulator: PulseEmulator, receiver: Receiver
) -> None:
    relay = start_serve()
    document = b"%PDF-1.7 quarterly report " * 2000
    emulator.plan_next_job()  # pending, processing, completed
    emulator.plan_next_job("completed")  # done before its first poll
    emulator.plan_next_job("processing", "failed", error="The document is password protected")
    meta = {"X-Pulse-Relay-Meta-User-Id": "u-42", "X-Pulse-Relay-Meta-Record": "crm/991"}

    def submit_with_the_sync_client() -> str:
        with sdk_client(relay.pulse_url, emulator.api_key, headers=meta) as client:
            answer = client.extract(
                file=("report.pdf", io.BytesIO(document), "application/pdf"),
                async_=True,
                pages="1-3",
            )
            return str(answer.job_id)

    uploaded = await asyncio.to_thread(submit_with_the_sync_client)
    async with async_sdk_client(relay.pulse_url, emulator.api_key) as client:
        early = (await client.extract_async(file_url="https://example.com/early.pdf")).job_id
        failed = (
            await client.extract(file_url="https://example.com/locked.pdf", async_=True)
        ).job_id

    assert failed is not None
    for job_id, status in ((uploaded, "completed"), (early, "completed"), (failed, "failed")):
        await wait_for(
            lambda j=job_id, s=status: _delivered_everywhere(relay, receiver, j, s),
            timeout_seconds=30,
        )

    envelope = relay.envelope(uploaded)
    assert envelope is not None
    assert envelope["source"] == "poll"
    assert envelope["type"] == "job.completed"
    assert envelope["job"]["status"] == "completed"
    metadata = envelope["relay"]["metadata"]
    assert metadata["user_id"] == "u-42"
    assert metadata["record"] == "crm/991"
    assert metadata["request"]["path"] == "/extract"
    assert metadata["request"]["fields"] == {"pages": "1-3", "async": "true"}
    assert metadata["request"]["files"] == [
        {
            "field": "file",
            "filename": "report.pdf",
            "size_bytes": len(document),
            "sha256": hashlib.sha256(document).hexdigest(),
        }
    ]
    by_http = [r.envelope for r in receiver.received if r.envelope["job_id"] == uploaded]
    by_command = relay.commanded(f"poll:{uploaded}:completed")
    assert by_http == [envelope]
    assert by_command == envelope

    failed_envelope = relay.envelope(failed)
    assert failed_envelope is not None
    assert failed_envelope["type"] == "job.failed"
    assert failed_envelope["job"]["error"] == "The document is password protected"
    early_envelope = relay.envelope(early)
    assert early_envelope is not None
    assert early_envelope["relay"]["metadata"]["request"]["path"] == "/extract_async"
    assert emulator.get_count(early) >= 1

    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{relay.admin_url}/api/events/poll:{uploaded}:completed") as shown,
    ):
        event = await shown.json()
    assert event["metadata"] == metadata
    metric = 'pulse_relay_proxy_requests_total{outcome="watched"} 3.0'
    async with aiohttp.ClientSession() as http, http.get(f"{relay.admin_url}/metrics") as scraped:
        assert metric in await scraped.text()


async def test_a_webhook_and_the_auto_watch_for_one_job_deliver_once(
    start_serve: Any, emulator: PulseEmulator, receiver: Receiver
) -> None:
    relay = start_serve()
    emulator.plan_next_job("completed")
    async with async_sdk_client(relay.pulse_url, emulator.api_key) as client:
        job_id = (await client.extract(file_url="https://example.com/a.pdf", async_=True)).job_id
    assert job_id is not None
    body = make_body("job.completed", job_id=job_id)
    webhook_url = f"http://127.0.0.1:{relay.port}/webhooks/pulse"
    async with (
        aiohttp.ClientSession() as http,
        http.post(webhook_url, data=body, headers=signed(body)) as answer,
    ):
        assert answer.status == 202

    async def both_events_settled() -> bool:
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"{relay.admin_url}/api/events", params={"job_id": job_id}) as listed,
        ):
            events = (await listed.json())["events"]
        sources = sorted(e["source"] for e in events)
        pending = any(d["state"] == "pending" for e in events for d in e["deliveries"].values())
        return sources == ["poll", "webhook"] and not pending

    await wait_for(both_events_settled, timeout_seconds=30)
    assert len([r for r in receiver.received if r.envelope["job_id"] == job_id]) == 1
    assert len(list(relay.command_out.glob("*.json"))) == 1
    assert relay.envelope(job_id) is not None


class GeneratedDocument(io.RawIOBase):
    """A large upload made on the fly: deterministic bytes, never all in memory."""

    def __init__(self, size_bytes: int) -> None:
        self.size_bytes = size_bytes
        self._position = 0
        self._block = hashlib.sha256(b"seed").digest() * 2048  # 64 KiB

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self.size_bytes}
        self._position = base[whence] + offset
        return self._position

    def readinto(self, buffer: Any) -> int:
        count = min(len(buffer), self.size_bytes - self._position)
        block_offset = self._position % len(self._block)
        for written in range(0, count, len(self._block)):
            piece = self._block[block_offset:][: count - written]
            buffer[written : written + len(piece)] = piece
            block_offset = 0
        self._position += count
        return count

    def sha256(self) -> str:
        digest = hashlib.sha256()
        self.seek(0)
        while chunk := self.read(1 * MIB):
            digest.update(chunk)
        self.seek(0)
        return digest.hexdigest()


def test_generated_document_is_what_it_claims() -> None:
    small = GeneratedDocument(200_000)
    data = small.read()
    assert len(data) == 200_000
    assert small.sha256() == hashlib.sha256(data).hexdigest()
    assert small.read(10) == data[:10]


async def test_a_50_mb_upload_streams_through_without_growing_the_relay(
    start_serve: Any, emulator: PulseEmulator
) -> None:
    relay = start_serve()
    async with async_sdk_client(relay.pulse_url, emulator.api_key) as client:
        # Warm-up: every code path of a proxied, watched submission is loaded before measuring.
        await client.extract(file=("warm.pdf", b"%PDF small", "application/pdf"), async_=True)
    rss_before_kib = relay.memory_kib("VmRSS")
    upload = GeneratedDocument(50 * MIB)
    expected_sha256 = upload.sha256()

    def submit() -> str:
        with sdk_client(relay.pulse_url, emulator.api_key) as client:
            answer = client.extract(file=("big.pdf", upload, "application/pdf"), async_=True)
            return str(answer.job_id)

    job_id = await asyncio.to_thread(submit)
    peak_kib = relay.memory_kib("VmHWM")

    assert peak_kib - rss_before_kib < 20 * 1024, (rss_before_kib, peak_kib)
    submission = next(s for s in emulator.submissions if s.job_id == job_id)
    assert submission.files == [UploadedFile("file", "big.pdf", 50 * MIB, expected_sha256)]
    await wait_for(lambda: relay.envelope(job_id) is not None, timeout_seconds=30)
    envelope = relay.envelope(job_id)
    assert envelope is not None
    (captured,) = envelope["relay"]["metadata"]["request"]["files"]
    assert (captured["size_bytes"], captured["sha256"]) == (50 * MIB, expected_sha256)


async def test_refusals_failures_and_pass_through_with_an_admin_token(
    start_serve: Any, emulator: PulseEmulator
) -> None:
    relay = start_serve(admin={"token": ADMIN_TOKEN}, proxy={"timeout_seconds": 1.0})
    form = {"fileUrl": "https://example.com/a.pdf", "async": "true"}

    async with aiohttp.ClientSession() as http:
        async with http.post(f"{relay.pulse_url}/extract", data=form) as no_key:
            assert no_key.status == 401
            assert (await no_key.json())["error"] == "unauthorized"
            assert no_key.headers["X-Content-Type-Options"] == "nosniff"
            assert no_key.headers["Content-Security-Policy"] == "sandbox"
        async with http.post(
            f"{relay.admin_url}/extract", data=form, headers={"x-api-key": "k"}
        ) as outside:
            assert outside.status == 403
    assert emulator.submissions == []
    assert not any(r.path == "/extract" for r in emulator.requests)

    async with async_sdk_client(relay.pulse_url, "a-wrong-key") as client:
        with pytest.raises(pulse.UnauthorizedError) as refused:
            await client.extract(file_url="https://example.com/a.pdf", async_=True)
    assert refused.value.status_code == 401
    assert refused.value.body == {"error": "Invalid or missing API key"}

    emulator.fail_next_submission(Fault.slow(30))
    async with async_sdk_client(relay.pulse_url, emulator.api_key) as client:
        with pytest.raises(pulse.core.api_error.ApiError) as hung:
            # The SDK resubmits after a 5xx by default; one answer is what is checked here.
            await client.extract(
                file_url="https://example.com/a.pdf",
                async_=True,
                request_options={"max_retries": 0},
            )
    assert hung.value.status_code == 504
    assert hung.value.body["error"] == "upstream_timeout"

    assert relay.watched_job_ids() == []


async def test_an_api_key_opens_the_pass_through_and_nothing_else(start_serve: Any) -> None:
    relay = start_serve(admin={"token": ADMIN_TOKEN})
    key = {"x-api-key": "any-key"}
    elsewhere = [
        "/api/events",
        "/api/watches",
        "/pulse",
        "/pulse/../api/events",
        "/pulse/%2e%2e/api/events",
        "/pulse%2F../api/events",
        "/static/../api/events",
    ]
    async with aiohttp.ClientSession() as http:
        for path in elsewhere:
            url = URL(relay.admin_url + path, encoded=True)
            async with http.get(url, headers=key, allow_redirects=False) as answer:
                body = await answer.read()
            assert answer.status in (303, 401, 404), (path, answer.status)
            assert b'"events"' not in body and b'"watches"' not in body, path
        async with http.get(relay.admin_url + "/", headers=key, allow_redirects=False) as inspector:
            assert inspector.status == 303  # to the login form


async def test_a_webhooks_job_is_delivered_promptly_while_110_proxied_requests_hang(
    start_serve: Any, emulator: PulseEmulator, receiver: Receiver
) -> None:
    relay = start_serve()  # the default proxy.concurrency (16)
    hanging, concurrency = 110, 16
    emulator.fail_next_submission(*[Fault.slow(60)] * hanging)
    form = {"fileUrl": "https://example.com/a.pdf", "async": "true"}
    key = {"x-api-key": emulator.api_key}

    def reached_pulse() -> int:
        return len([r for r in emulator.requests if r.path == "/extract"])

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:

        async def submit() -> int:
            async with http.post(f"{relay.pulse_url}/extract", data=form, headers=key) as answer:
                await answer.read()
                return answer.status

        submitted = [asyncio.create_task(submit()) for _ in range(hanging)]
        try:
            await wait_for(
                lambda: (
                    sum(task.done() for task in submitted) == hanging - concurrency
                    and reached_pulse() == concurrency
                )
            )
            assert [task.result() for task in submitted if task.done()] == [503] * (
                hanging - concurrency
            )

            emulator.add_job("job-while-hanging", status="completed")
            body = make_body("job.completed", job_id="job-while-hanging")
            webhook_url = f"http://127.0.0.1:{relay.port}/webhooks/pulse"
            async with http.post(webhook_url, data=body, headers=signed(body)) as answer:
                assert answer.status == 202
            await wait_for(
                lambda: (
                    relay.envelope("job-while-hanging") is not None
                    and any(r.envelope["job_id"] == "job-while-hanging" for r in receiver.received)
                ),
                timeout_seconds=5,
            )
        finally:
            for task in submitted:
                task.cancel()
            await asyncio.gather(*submitted, return_exceptions=True)
