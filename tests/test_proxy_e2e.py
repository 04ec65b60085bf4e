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
from pulse import types as sdk
from yarl import URL

from pulse_relay.emulator import Fault, PulseEmulator, Submission, UploadedFile
from tests.helpers import (
    Receiver,
    Served,
    async_sdk_client,
    deep_merge,
    free_port,
    make_body,
    recorder_argv,
    sdk_client,
    sdk_strictly,
    signed,
    wait_for,
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


TOPICS = sdk.SplitConfig(
    split_input=[sdk.TopicDefinition(name="invoice"), sdk.TopicDefinition(name="terms")]
)
TOTAL_SCHEMA = sdk.SchemaConfig(
    input_schema={"type": "object", "properties": {"total": {"type": "number"}}}
)
BATCH_OUTPUT = sdk.BatchOutputDestination(local_path="/tmp/batch-results")


def _job_id_of(answer: Any) -> str:
    """The job an SDK answer names: `batch_job_id` for batches, else `job_id`."""
    raw = answer.dict()
    job_id = raw.get("batch_job_id") or raw["job_id"]
    assert isinstance(job_id, str)
    return job_id


def _submission(emulator: PulseEmulator, job_id: str) -> Submission:
    return next(s for s in emulator.submissions if s.job_id == job_id)


async def test_every_sdk_job_call_through_the_pass_through_reaches_the_sinks(
    start_serve: Any, emulator: PulseEmulator, receiver: Receiver
) -> None:
    relay = start_serve()
    document = b"%PDF-1.7 a service contract " * 700
    meta = {"X-Pulse-Relay-Meta-User-Id": "u-7", "X-Pulse-Relay-Meta-Matter": "m/12"}

    def submit_every_kind() -> dict[str, Any]:
        with sdk_client(relay.pulse_url, emulator.api_key, headers=meta) as client:
            extracted = client.extract(
                file=("contract.pdf", io.BytesIO(document), "application/pdf"), pages="1-2"
            )
            extraction_id = extracted.extraction_id or ""
            batch = client.batch.extract(
                input=sdk.BatchInputSource(
                    file_urls=["https://example.com/1.pdf", "https://example.com/2.pdf"]
                ),
                output=BATCH_OUTPUT,
            )
            return {
                "/extract": extracted,
                "/extract_async": client.extract_async(file_url="https://example.com/old.pdf"),
                "/split": client.split(
                    extraction_id=extraction_id, split_config=TOPICS, async_=True
                ),
                "/schema": client.schema(
                    extraction_id=extraction_id, schema_config=TOTAL_SCHEMA, async_=True
                ),
                "/tables": client.tables(extraction_id=extraction_id),
                "/pipeline/execute": client.pipeline.execute(
                    file_url="https://example.com/p.pdf",
                    steps=sdk.PipelineSteps(extract=sdk.ExtractOptions(), split=TOPICS),
                    async_=True,
                ),
                "/batch/extract": batch,
                "/batch/split": client.batch.split(
                    batch_extract_id=batch.batch_job_id, split_config=TOPICS, output=BATCH_OUTPUT
                ),
                "/batch/schema": client.batch.schema(
                    extraction_ids=[extraction_id], schema_config=TOTAL_SCHEMA, output=BATCH_OUTPUT
                ),
                "/batch/tables": client.batch.tables(
                    batch_extract_id=batch.batch_job_id, output=BATCH_OUTPUT
                ),
            }

    answers = await asyncio.to_thread(submit_every_kind)
    jobs = {path: _job_id_of(answer) for path, answer in answers.items()}
    for job_id in jobs.values():
        await wait_for(
            lambda j=job_id: _delivered_everywhere(relay, receiver, j, "completed"),
            timeout_seconds=30,
        )

    for path, job_id in jobs.items():
        envelope = relay.envelope(job_id)
        assert envelope is not None
        assert (envelope["type"], envelope["source"]) == ("job.completed", "poll")
        metadata = envelope["relay"]["metadata"]
        assert (metadata["user_id"], metadata["matter"]) == ("u-7", "m/12"), path
        submitted = _submission(emulator, job_id)
        assert submitted.path == path
        assert "x-pulse-relay-meta-user-id" not in {k.lower() for k in submitted.headers}
        assert metadata["request"]["path"] == path
        assert metadata["request"]["method"] == "POST"
        # What the relay recorded is what the API received, field for field.
        assert metadata["request"]["fields"] == submitted.fields, path
        assert metadata["request"]["files"] == [vars(f) for f in submitted.files], path

    upload = relay.envelope(jobs["/extract"])
    assert upload is not None
    assert upload["relay"]["metadata"]["request"]["files"] == [
        {
            "field": "file",
            "filename": "contract.pdf",
            "size_bytes": len(document),
            "sha256": hashlib.sha256(document).hexdigest(),
        }
    ]
    assert upload["relay"]["metadata"]["request"]["fields"] == {"pages": "1-2"}
    # A synchronous answer and the delivered job carry the same result.
    extracted = answers["/extract"].dict()
    assert upload["job"]["result"] == {k: v for k, v in extracted.items() if k != "job_id"}
    tables = relay.envelope(jobs["/tables"])
    assert tables is not None
    assert tables["job"]["result"]["tables_id"] == answers["/tables"].tables_id
    split = relay.envelope(jobs["/split"])
    assert split is not None
    assert split["relay"]["metadata"]["request"]["fields"] == {
        "extraction_id": answers["/extract"].extraction_id,
        "split_config": {"split_input": [{"name": "invoice"}, {"name": "terms"}]},
        "async": True,
    }
    assert split["job"]["result"]["split_output"] == {"splits": {"invoice": [1], "terms": [2]}}
    batch = relay.envelope(jobs["/batch/extract"])
    assert batch is not None
    assert [item["input"] for item in batch["job"]["result"]["results"]] == [
        "https://example.com/1.pdf",
        "https://example.com/2.pdf",
    ]
    batch_split = relay.envelope(jobs["/batch/split"])
    assert batch_split is not None
    assert (
        batch_split["relay"]["metadata"]["request"]["fields"]["batch_extract_id"]
        == (jobs["/batch/extract"])
    )
    for answer, model in (
        (answers["/extract"], sdk.ExtractResponse),
        (answers["/extract_async"], sdk.AsyncSubmissionResponse),
        (answers["/tables"], sdk.TablesResponse),
        (answers["/batch/extract"], sdk.BatchExtractResponse),
        (answers["/batch/split"], sdk.BatchSplitResponse),
        (answers["/batch/schema"], sdk.BatchSchemaResponse),
        (answers["/batch/tables"], sdk.BatchTablesResponse),
    ):
        sdk_strictly(model, answer)
    assert sorted(relay.watched_job_ids()) == sorted(jobs.values())


async def test_canceled_expired_and_large_jobs_through_the_pass_through(
    start_serve: Any, emulator: PulseEmulator, receiver: Receiver
) -> None:
    relay = start_serve()
    document = {"extraction_id": "ext_big", "markdown": "# Big\n" + "page\n" * 5000}
    emulator.plan_next_job("processing")  # runs until canceled
    emulator.plan_next_job("pending", "expired")
    emulator.plan_next_job("processing", "completed", result=document, large_result=True)

    async with async_sdk_client(relay.pulse_url, emulator.api_key) as client:
        running = _job_id_of(
            await client.extract(file_url="https://example.com/long.pdf", async_=True)
        )
        stale = _job_id_of(await client.tables(extraction_id="ext_old", async_=True))
        large = _job_id_of(
            await client.extract(file_url="https://example.com/big.pdf", async_=True)
        )
        await wait_for(lambda: emulator.get_count(running) >= 1, timeout_seconds=30)
        canceled = await client.jobs.cancel_job(job_id=running)
        await wait_for(
            lambda: _delivered_everywhere(relay, receiver, large, "completed"),
            timeout_seconds=30,
        )
        # The app fetches the large result itself afterwards: the relay's own download
        # went through a pointer URL, so the single-use one is still there.
        pointer = await client.jobs.get_job(job_id=large)
        downloaded = await client.large_results.get_large_result(job_id=large)

    sdk_strictly(sdk.JobCancellationResponse, canceled)
    await wait_for(lambda: relay.envelope(running) is not None, timeout_seconds=30)
    await wait_for(lambda: relay.envelope(stale) is not None, timeout_seconds=30)
    for job_id, event_type, path in (
        (running, "job.canceled", "/extract"),
        (stale, "job.expired", "/tables"),
    ):
        envelope = relay.envelope(job_id)
        assert envelope is not None
        assert (envelope["type"], envelope["source"]) == (event_type, "poll")
        assert envelope["relay"]["metadata"]["request"]["path"] == path
        # A finished job of any kind is delivered with the job as the API last reported it.
        assert envelope["job"] is not None, event_type
        assert envelope["job"]["status"] == event_type.removeprefix("job.")
    large_envelope = relay.envelope(large)
    assert large_envelope is not None
    assert large_envelope["job"]["result"] == document
    assert emulator.downloads == 1  # the relay's own fetch, once for three sinks
    assert pointer.result is not None and pointer.result["is_url"] is True
    assert downloaded.dict() == document
    large_result_calls = [r for r in emulator.requests if r.path.startswith("/large_results/")]
    assert len(large_result_calls) == 1  # the app's, passed through; none by the relay


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
