"""The Pulse API emulator, spoken to with a plain aiohttp client and the official SDK."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import aiohttp
import pulse
import pytest
import structlog
from aiohttp import web
from pulse import types as sdk
from pytest_aiohttp import AiohttpServer
from standardwebhooks.webhooks import Webhook

from pulse_relay.emulator import (
    DEFAULT_API_KEY,
    Fault,
    PulseEmulator,
    UploadedFile,
    batch_progress,
    new_message_id,
    run_emulator,
    sample_result,
)
from tests.helpers import async_sdk_client, sdk_client, sdk_strictly, wait_for

API_KEY = "emulator-test-key"
_JSON_TYPE = "application/json"
SECRET = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()
KEY_HEADERS = {"x-api-key": API_KEY}


@pytest.fixture
async def emulator() -> AsyncIterator[PulseEmulator]:
    async with PulseEmulator(api_key=API_KEY) as emu:
        yield emu


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def _get(
    http: aiohttp.ClientSession, url: str, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    async with http.get(url, headers=KEY_HEADERS if headers is None else headers) as response:
        return response.status, dict(response.headers), await response.read()


async def _job(
    http: aiohttp.ClientSession, emulator: PulseEmulator, job_id: str
) -> tuple[int, Any]:
    status, _, body = await _get(http, f"{emulator.base_url}/job/{job_id}")
    return status, json.loads(body)


def _is_utc_iso(value: str) -> bool:
    offset = datetime.fromisoformat(value.replace("Z", "+00:00")).utcoffset()
    return value.endswith("Z") and offset is not None and offset.total_seconds() == 0


# -- lifecycle ---------------------------------------------------------------------


async def test_start_returns_the_base_url() -> None:
    emulator = PulseEmulator()
    with pytest.raises(RuntimeError):
        _ = emulator.base_url
    base_url = await emulator.start()
    try:
        assert base_url == emulator.base_url
        assert base_url.startswith("http://127.0.0.1:")
        assert int(base_url.rsplit(":", 1)[1]) > 0
        assert emulator.api_key == DEFAULT_API_KEY
        with pytest.raises(RuntimeError):
            await emulator.start()
    finally:
        await emulator.stop()
    await emulator.stop()  # a second stop is harmless


# -- GET /job ----------------------------------------------------------------------


@pytest.mark.parametrize("headers", [{}, {"x-api-key": "wrong"}, {"x-api-key": ""}])
async def test_missing_or_wrong_key_is_401(
    emulator: PulseEmulator, http: aiohttp.ClientSession, headers: dict[str, str]
) -> None:
    emulator.add_job("job-1")

    status, response_headers, body = await _get(http, f"{emulator.base_url}/job/job-1", headers)

    assert status == 401
    assert response_headers["Content-Type"].startswith("application/json")
    assert "error" in json.loads(body)


async def test_unknown_job_is_404(emulator: PulseEmulator, http: aiohttp.ClientSession) -> None:
    status, body = await _job(http, emulator, "missing")

    assert status == 404
    assert body == {"error": "Job not found"}


async def test_completed_job_shape(emulator: PulseEmulator, http: aiohttp.ClientSession) -> None:
    emulator.add_job("job-1")

    status, job = await _job(http, emulator, "job-1")

    assert status == 200
    assert job["job_id"] == "job-1"
    assert job["status"] == "completed"
    assert _is_utc_iso(job["created_at"])
    assert _is_utc_iso(job["updated_at"])
    assert job["error"] is None
    assert job["result"]["extraction_id"].startswith("ext_")
    assert job["result"]["markdown"].startswith("# Document job-1")
    # Stable per job id, different between jobs.
    assert job["result"] == sample_result("job-1")
    assert sample_result("job-1")["extraction_id"] != sample_result("job-2")["extraction_id"]


async def test_given_result_is_served(emulator: PulseEmulator, http: aiohttp.ClientSession) -> None:
    emulator.add_job("job-1", result={"extraction_id": "ext_1", "content": "hello"})

    _, job = await _job(http, emulator, "job-1")

    assert job["result"] == {"extraction_id": "ext_1", "content": "hello"}


@pytest.mark.parametrize(
    ("status", "error"),
    [
        ("failed", "Document could not be processed"),
        ("pending", None),
        ("processing", None),
        ("canceled", None),
        ("expired", None),
    ],
)
async def test_non_completed_jobs_have_no_result(
    emulator: PulseEmulator, http: aiohttp.ClientSession, status: str, error: str | None
) -> None:
    emulator.add_job("job-1", status=status)

    _, job = await _job(http, emulator, "job-1")

    assert job["status"] == status
    assert job["result"] is None
    assert job["error"] == error


async def test_failed_job_carries_its_error(
    emulator: PulseEmulator, http: aiohttp.ClientSession
) -> None:
    emulator.add_job("job-1", status="failed", error="password protected")

    _, job = await _job(http, emulator, "job-1")

    assert job["error"] == "password protected"


async def test_statuses_progress_one_step_per_get(
    emulator: PulseEmulator, http: aiohttp.ClientSession
) -> None:
    emulator.add_job("job-1", statuses=["pending", "processing", "completed"])

    jobs = [(await _job(http, emulator, "job-1"))[1] for _ in range(4)]

    assert [job["status"] for job in jobs] == ["pending", "processing", "completed", "completed"]
    assert [job["result"] is None for job in jobs] == [True, True, False, False]
    assert len({job["created_at"] for job in jobs}) == 1
    assert emulator.get_count("job-1") == 4


async def test_requests_are_recorded(emulator: PulseEmulator, http: aiohttp.ClientSession) -> None:
    emulator.add_job("job-1")

    await _get(http, f"{emulator.base_url}/job/job-1", {"x-api-key": API_KEY, "x-trace": "t1"})
    await _get(http, f"{emulator.base_url}/elsewhere", {})

    first, second = emulator.requests
    assert (first.method, first.path) == ("GET", "/job/job-1")
    assert first.headers["x-trace"] == "t1"
    assert first.headers["x-api-key"] == API_KEY
    assert second.path == "/elsewhere"
    assert emulator.get_count("job-1") == 1
    assert emulator.get_count("other") == 0


# -- faults ------------------------------------------------------------------------


async def test_faults_are_consumed_in_order_before_normal_answers(
    emulator: PulseEmulator, http: aiohttp.ClientSession
) -> None:
    emulator.add_job("job-1")
    emulator.fail_next("job-1", 500, Fault.http(429, retry_after="3"), Fault.http(404))

    answers = [await _get(http, f"{emulator.base_url}/job/job-1") for _ in range(4)]

    assert [status for status, _, _ in answers] == [500, 429, 404, 200]
    assert answers[1][1]["Retry-After"] == "3"
    assert "Retry-After" not in answers[0][1]
    assert json.loads(answers[0][2]) == {"error": "Scripted HTTP 500"}


async def test_faults_are_per_job(emulator: PulseEmulator, http: aiohttp.ClientSession) -> None:
    emulator.add_job("job-1")
    emulator.add_job("job-2")
    emulator.fail_next("job-1", 503)

    assert (await _job(http, emulator, "job-2"))[0] == 200
    assert (await _job(http, emulator, "job-1"))[0] == 503


async def test_fault_does_not_advance_progression(
    emulator: PulseEmulator, http: aiohttp.ClientSession
) -> None:
    emulator.add_job("job-1", statuses=["pending", "completed"])
    emulator.fail_next("job-1", 500)

    await _job(http, emulator, "job-1")

    assert (await _job(http, emulator, "job-1"))[1]["status"] == "pending"


async def test_truncated_body_is_invalid_json(
    emulator: PulseEmulator, http: aiohttp.ClientSession
) -> None:
    emulator.add_job("job-1")
    emulator.fail_next("job-1", Fault.truncated())

    status, headers, body = await _get(http, f"{emulator.base_url}/job/job-1")

    assert status == 200
    assert headers["Content-Type"].startswith("application/json")
    assert body.startswith(b'{"job_id": "job-1"')
    with pytest.raises(ValueError):
        json.loads(body)


async def test_raw_body_is_sent_as_is(emulator: PulseEmulator, http: aiohttp.ClientSession) -> None:
    emulator.fail_next("job-1", Fault.raw(b"[1, 2]"), Fault.raw(b"oops", status=502))

    first_status, _, first_body = await _get(http, f"{emulator.base_url}/job/job-1")
    second_status, _, second_body = await _get(http, f"{emulator.base_url}/job/job-1")

    assert (first_status, first_body) == (200, b"[1, 2]")
    assert (second_status, second_body) == (502, b"oops")


async def test_slow_fault_then_normal_answer(
    emulator: PulseEmulator, http: aiohttp.ClientSession
) -> None:
    emulator.add_job("job-1")
    emulator.fail_next("job-1", Fault.slow(0.01))

    status, job = await _job(http, emulator, "job-1")

    assert status == 200
    assert job["status"] == "completed"


async def test_reset_closes_the_connection(
    emulator: PulseEmulator, http: aiohttp.ClientSession
) -> None:
    emulator.add_job("job-1")
    # aiohttp retries an idempotent request once on a dropped connection.
    emulator.fail_next("job-1", Fault.reset(), Fault.reset())

    with pytest.raises(aiohttp.ClientConnectionError):
        await _get(http, f"{emulator.base_url}/job/job-1")

    assert emulator.get_count("job-1") == 2
    assert (await _job(http, emulator, "job-1"))[0] == 200


async def test_client_timeout_on_a_slow_fault_frees_the_handler(
    emulator: PulseEmulator, http: aiohttp.ClientSession
) -> None:
    emulator.add_job("job-1")
    emulator.fail_next("job-1", Fault.slow(3600))

    with pytest.raises(TimeoutError):
        async with http.get(
            f"{emulator.base_url}/job/job-1",
            headers=KEY_HEADERS,
            timeout=aiohttp.ClientTimeout(total=0.2),
        ) as response:
            await response.read()

    await wait_for(lambda: emulator.in_flight == 0)


async def test_stop_ends_held_and_slow_requests(http: aiohttp.ClientSession) -> None:
    emulator = PulseEmulator(api_key=API_KEY)
    await emulator.start()
    emulator.add_job("slow")
    emulator.add_job("held")
    emulator.fail_next("slow", Fault.slow(3600))

    slow = asyncio.create_task(_get(http, f"{emulator.base_url}/job/slow"))
    await wait_for(lambda: emulator.in_flight == 1)
    emulator.hold_requests()
    held = asyncio.create_task(_get(http, f"{emulator.base_url}/job/held"))
    await wait_for(lambda: emulator.in_flight == 2)

    # Would wait out the delay (and the per-test timeout) if stop did not wake them.
    await emulator.stop()

    for task in (slow, held):
        status, _, _ = await task
        assert status == 503
    assert emulator.in_flight == 0


async def test_max_in_flight_counts_concurrent_gets(
    emulator: PulseEmulator, http: aiohttp.ClientSession
) -> None:
    for n in range(3):
        emulator.add_job(f"job-{n}")
    emulator.hold_requests()

    tasks = [asyncio.create_task(_job(http, emulator, f"job-{n}")) for n in range(3)]
    await wait_for(lambda: emulator.in_flight == 3)
    emulator.release_requests()
    answers = await asyncio.gather(*tasks)

    assert [status for status, _ in answers] == [200, 200, 200]
    assert emulator.max_in_flight == 3
    assert emulator.in_flight == 0

    # One at a time afterwards does not raise the high-water mark.
    await _job(http, emulator, "job-0")
    assert emulator.max_in_flight == 3


# -- large results -----------------------------------------------------------------


async def test_large_result_pointer_is_single_use(
    emulator: PulseEmulator, http: aiohttp.ClientSession
) -> None:
    document = sample_result("job-1", pages=10)
    emulator.add_job("job-1", large_result=True, result=document)

    _, job = await _job(http, emulator, "job-1")
    pointer = job["result"]
    assert set(pointer) == {"is_url", "url"}
    assert pointer["is_url"] is True
    assert pointer["url"].startswith(f"{emulator.base_url}/results/")
    token = pointer["url"].rsplit("/", 1)[1]

    first = await _get(http, pointer["url"], {})
    second = await _get(http, pointer["url"], {})

    assert first[0] == 200
    assert json.loads(first[2]) == document
    assert second[0] == 410
    assert emulator.downloads == 1
    assert emulator.download_count(token) == 2

    _, again = await _job(http, emulator, "job-1")
    assert again["result"]["url"] != pointer["url"]
    status, _, body = await _get(http, again["result"]["url"], {})
    assert (status, json.loads(body)) == (200, document)
    assert emulator.downloads == 2


async def test_unknown_result_token_is_404(
    emulator: PulseEmulator, http: aiohttp.ClientSession
) -> None:
    status, _, _ = await _get(http, f"{emulator.base_url}/results/nope", {})

    assert status == 404
    assert emulator.download_count("nope") == 0


async def test_download_faults(emulator: PulseEmulator, http: aiohttp.ClientSession) -> None:
    emulator.add_job("job-1", large_result=True)
    emulator.fail_next_download("job-1", Fault.http(503, retry_after="5"), Fault.truncated())
    _, job = await _job(http, emulator, "job-1")
    url = job["result"]["url"]

    unavailable = await _get(http, url, {})
    truncated = await _get(http, url, {})
    served = await _get(http, url, {})

    assert (unavailable[0], unavailable[1]["Retry-After"]) == (503, "5")
    assert truncated[0] == 200
    with pytest.raises(ValueError):
        json.loads(truncated[2])
    # Faults do not use the URL up: the document is still served once.
    assert json.loads(served[2]) == sample_result("job-1")
    assert emulator.downloads == 1


# -- webhooks ----------------------------------------------------------------------


class _Receiver:
    def __init__(self, status: int = 202, answer: bytes | None = None) -> None:
        self.status = status
        self.answer = answer
        self.received: list[tuple[dict[str, str], bytes]] = []
        self.app = web.Application()
        self.app.router.add_post("/hook", self._hook)

    async def _hook(self, request: web.Request) -> web.Response:
        self.received.append((dict(request.headers), await request.read()))
        if self.answer is not None:
            return web.Response(status=self.status, body=self.answer)
        return web.json_response({"status": "accepted"}, status=self.status)


async def _receiver(aiohttp_server: AiohttpServer, receiver: _Receiver) -> str:
    server = await aiohttp_server(receiver.app)
    return str(server.make_url("/hook"))


async def test_send_webhook_is_verified_by_standardwebhooks(
    emulator: PulseEmulator, aiohttp_server: AiohttpServer
) -> None:
    receiver = _Receiver()
    url = await _receiver(aiohttp_server, receiver)

    status, answer = await emulator.send_webhook(url, SECRET, "job.completed", "job-1")

    assert (status, answer) == (202, {"status": "accepted"})
    ((headers, body),) = receiver.received
    payload = Webhook(SECRET).verify(body, headers)
    assert payload["type"] == "job.completed"
    assert payload["data"] == {"job_id": "job-1", "status": "completed"}
    assert _is_utc_iso(payload["timestamp"])
    assert headers["webhook-id"].startswith("msg_")
    assert headers["Content-Type"] == "application/json"


async def test_send_webhook_payload_options(
    emulator: PulseEmulator, aiohttp_server: AiohttpServer
) -> None:
    receiver = _Receiver()
    url = await _receiver(aiohttp_server, receiver)

    async with aiohttp.ClientSession() as session:
        await emulator.send_webhook(
            url, SECRET, "job.cancelled", "job-2", webhook_id="msg_fixed", session=session
        )
        await emulator.send_webhook(
            url, SECRET, "credits.low_balance", None, data={"balance": 3}, session=session
        )
        await emulator.send_webhook(
            url, SECRET, "job.completed", "job-3", data={"status": "failed", "extra": True}
        )
        assert not session.closed

    payloads = [json.loads(body) for _, body in receiver.received]
    assert receiver.received[0][0]["webhook-id"] == "msg_fixed"
    assert payloads[0]["data"] == {"job_id": "job-2", "status": "canceled"}
    assert payloads[1]["data"] == {"balance": 3}
    assert payloads[2]["data"] == {"job_id": "job-3", "status": "failed", "extra": True}
    for headers, body in receiver.received:
        Webhook(SECRET).verify(body, headers)


async def test_send_webhook_to_a_signature_checker_with_another_secret_fails(
    emulator: PulseEmulator, aiohttp_server: AiohttpServer
) -> None:
    receiver = _Receiver()
    url = await _receiver(aiohttp_server, receiver)
    other = "whsec_" + base64.b64encode(b"another-secret-of-32-bytes-long!").decode()

    await emulator.send_webhook(url, SECRET, "job.completed", "job-1")

    ((headers, body),) = receiver.received
    with pytest.raises(Exception, match="signature"):
        Webhook(other).verify(body, headers)


@pytest.mark.parametrize("answer", [b"not json", b"[1]", b""])
async def test_send_webhook_answer_that_is_not_an_object_is_empty(
    emulator: PulseEmulator, aiohttp_server: AiohttpServer, answer: bytes
) -> None:
    receiver = _Receiver(status=401, answer=answer)
    url = await _receiver(aiohttp_server, receiver)

    assert await emulator.send_webhook(url, SECRET, "job.completed", "job-1") == (401, {})


def test_message_ids_look_like_svix_ids() -> None:
    ids = {new_message_id() for _ in range(100)}

    assert len(ids) == 100
    for message_id in ids:
        assert message_id.startswith("msg_")
        assert len(message_id) == 31
        assert message_id[4:].isalnum()


# -- extract (submissions), spoken to with the official SDK ----------------------------


async def test_sdk_async_extract_with_a_file_becomes_a_job_that_advances(
    emulator: PulseEmulator,
) -> None:
    document = b"%PDF-1.7 an invoice" * 100

    def submit_and_poll() -> tuple[Any, list[Any]]:
        with sdk_client(emulator.base_url, API_KEY) as client:
            answer = client.extract(
                file=("invoice.pdf", io.BytesIO(document), "application/pdf"),
                async_=True,
                pages="1-2",
            )
            polls = [client.jobs.get_job(job_id=answer.job_id) for _ in range(4)]
            return answer, polls

    answer, polls = await asyncio.to_thread(submit_and_poll)

    assert answer.status == "pending"
    assert answer.message
    assert [poll.status for poll in polls] == ["pending", "processing", "completed", "completed"]
    assert polls[0].result is None
    assert polls[-1].result == sample_result(answer.job_id)
    (submission,) = emulator.submissions
    assert submission.job_id == answer.job_id
    assert submission.path == "/extract"
    assert submission.is_async
    assert submission.fields == {"pages": "1-2", "async": "true"}
    assert submission.files == [
        UploadedFile("file", "invoice.pdf", len(document), hashlib.sha256(document).hexdigest())
    ]
    assert submission.headers["x-api-key"] == API_KEY


async def test_sdk_sync_extract_answers_the_result_and_its_job_is_completed(
    emulator: PulseEmulator,
) -> None:
    async with async_sdk_client(emulator.base_url, API_KEY) as client:
        result = await client.extract(file_url="https://example.com/report.pdf")
        job = await client.jobs.get_job(job_id=result.job_id or "")

    assert result.job_id
    assert result.extraction_id == sample_result(result.job_id)["extraction_id"]
    assert result.markdown
    assert job.status == "completed"
    assert job.result == sample_result(result.job_id)
    (submission,) = emulator.submissions
    assert not submission.is_async
    assert submission.fields == {"fileUrl": "https://example.com/report.pdf"}
    assert submission.files == []


async def test_sdk_deprecated_extract_async_follows_a_planned_failure(
    emulator: PulseEmulator,
) -> None:
    emulator.plan_next_job("processing", "failed", error="The document is password protected")
    async with async_sdk_client(emulator.base_url, API_KEY) as client:
        answer = await client.extract_async(
            file_url="https://example.com/locked.pdf", extraction_config_id="cfg-7"
        )
        polls = [await client.jobs.get_job(job_id=answer.job_id) for _ in range(2)]
        second = await client.extract_async(file_url="https://example.com/other.pdf")
        after = await client.jobs.get_job(job_id=second.job_id)

    assert answer.status == "pending"
    assert [poll.status for poll in polls] == ["processing", "failed"]
    assert polls[1].error == "The document is password protected"
    assert after.status == "pending"  # the plan was used once
    assert emulator.submissions[0].path == "/extract_async"
    assert emulator.submissions[0].fields["extractionConfigId"] == "cfg-7"


async def test_a_job_planned_completed_is_completed_at_its_first_poll(
    emulator: PulseEmulator, http: aiohttp.ClientSession
) -> None:
    emulator.plan_next_job("completed", result={"markdown": "done"})
    async with http.post(
        f"{emulator.base_url}/extract",
        json={"file_url": "https://example.com/a.pdf", "async": True},
        headers=KEY_HEADERS,
    ) as response:
        assert response.status == 200
        answer = await response.json()

    status, job = await _job(http, emulator, answer["job_id"])

    assert status == 200
    assert job["status"] == "completed"
    assert job["result"] == {"markdown": "done"}
    assert emulator.submissions[0].fields == {
        "file_url": "https://example.com/a.pdf",
        "async": True,
    }


@pytest.mark.parametrize(
    ("kwargs", "status", "message"),
    [
        ({"json": {"async": True}}, 400, "file or file_url is required"),
        ({"json": ["https://example.com/a.pdf"]}, 400, "must be an object"),
        ({"data": b"file_url=x", "headers": {"content-type": "text/plain"}}, 400, "expected"),
        ({"data": b"{not json", "headers": {"content-type": _JSON_TYPE}}, 400, "unreadable"),
        ({"data": {"fileUrl": "https://example.com/a.pdf"}}, 200, None),
    ],
)
async def test_submissions_the_api_would_refuse_are_400_naming_the_problem(
    emulator: PulseEmulator,
    http: aiohttp.ClientSession,
    kwargs: dict[str, Any],
    status: int,
    message: str | None,
) -> None:
    headers = {**KEY_HEADERS, **kwargs.pop("headers", {})}
    async with http.post(f"{emulator.base_url}/extract", headers=headers, **kwargs) as response:
        body = await response.json()

    assert response.status == status
    if message is not None:
        assert message in body["error"]
        assert emulator.submissions == []


async def test_submission_without_the_key_is_401_and_faults_come_first(
    emulator: PulseEmulator, http: aiohttp.ClientSession
) -> None:
    emulator.fail_next_submission(429)
    form = {"file_url": "https://example.com/a.pdf"}
    async with http.post(f"{emulator.base_url}/extract", data=form, headers=KEY_HEADERS) as first:
        assert first.status == 429
    async with http.post(f"{emulator.base_url}/extract_async", data=form) as second:
        assert second.status == 401
    assert emulator.submissions == []


# -- split, schema, tables, pipeline, batches, cancel, large results: the SDK's calls ----

TOPICS = sdk.SplitConfig(
    split_input=[sdk.TopicDefinition(name="invoice"), sdk.TopicDefinition(name="terms")]
)
TOTAL_SCHEMA = sdk.SchemaConfig(
    input_schema={"type": "object", "properties": {"total": {"type": "number"}}}
)
NOWHERE = sdk.BatchOutputDestination(local_path="/tmp/batch-results")


async def test_sdk_split_schema_tables_and_pipeline_answer_synchronously(
    emulator: PulseEmulator,
) -> None:
    async with async_sdk_client(emulator.base_url, API_KEY) as client:
        extracted = await client.extract(file_url="https://example.com/contract.pdf")
        extraction_id = extracted.extraction_id or ""
        split = await client.split(extraction_id=extraction_id, split_config=TOPICS)
        schema = await client.schema(extraction_id=extraction_id, schema_config=TOTAL_SCHEMA)
        by_topic = await client.schema(
            split_id=split.split_id,
            split_schema_config={"invoice": sdk.TopicSchemaConfig(schema_config_id="cfg-1")},
        )
        tables = await client.tables(extraction_id=extraction_id)
        piped = await client.pipeline.execute(
            file_url="https://example.com/contract.pdf",
            steps=sdk.PipelineSteps(extract=sdk.ExtractOptions(), split=TOPICS, tables={}),
        )
        answers = [extracted, split, schema, by_topic, tables, piped]
        jobs = [await client.jobs.get_job(job_id=_extra_job_id(a)) for a in answers]

    sdk_strictly(sdk.ExtractResponse, extracted)
    sdk_strictly(sdk.SplitResponse, split)
    sdk_strictly(sdk.SingleSchemaResponse, schema)
    sdk_strictly(sdk.SplitSchemaResponse, by_topic)
    sdk_strictly(sdk.TablesResponse, tables)
    sdk_strictly(sdk.PipelineExecuteResponse, piped)
    assert split.split_output is not None
    assert split.split_output.splits == {"invoice": [1], "terms": [2]}
    assert isinstance(schema, sdk.SingleSchemaResponse)
    assert schema.extraction_ids == [extraction_id]
    assert schema.schema_output.values == {"total": "total (emulated)"}
    assert isinstance(by_topic, sdk.SplitSchemaResponse)
    assert list(by_topic.results) == ["invoice"]
    assert tables.tables_output.tables
    assert piped.status == "completed"
    assert piped.results.extract is not None and piped.results.extract.markdown
    assert piped.results.split is not None and piped.results.tables is not None
    assert piped.results.schema_ is None
    # Every synchronous answer is also a completed job carrying that answer.
    for answer, job in zip(answers, jobs, strict=True):
        assert job.status == "completed"
        assert job.result == {k: v for k, v in answer.dict().items() if k != "job_id"}
    paths = [s.path for s in emulator.submissions]
    assert paths == ["/extract", "/split", "/schema", "/schema", "/tables", "/pipeline/execute"]
    assert emulator.submissions[1].fields == {
        "extraction_id": extraction_id,
        "split_config": {"split_input": [{"name": "invoice"}, {"name": "terms"}]},
    }
    assert not any(s.is_async for s in emulator.submissions)


def _extra_job_id(answer: Any) -> str:
    """The `job_id` every emulated answer carries (an extra field for most SDK models)."""
    job_id = answer.dict()["job_id"]
    assert isinstance(job_id, str)
    return job_id


async def test_sdk_async_split_schema_tables_and_pipeline_are_jobs_with_those_results(
    emulator: PulseEmulator,
) -> None:
    def submit_and_poll() -> list[tuple[Any, list[Any]]]:
        with sdk_client(emulator.base_url, API_KEY) as client:
            answers = [
                client.split(extraction_id="ext_1", split_config_id="split-cfg", async_=True),
                client.schema(extraction_ids=["ext_1", "ext_2"], schema_config_id="s", async_=True),
                client.tables(extraction_id="ext_1", async_=True),
                client.pipeline.execute(
                    file_url="https://example.com/a.pdf",
                    steps=sdk.PipelineSteps(extract=sdk.ExtractOptions(), schema_=TOTAL_SCHEMA),
                    async_=True,
                ),
            ]
            return [
                (answer, [client.jobs.get_job(job_id=_extra_job_id(answer)) for _ in range(3)])
                for answer in answers
            ]

    polled = await asyncio.to_thread(submit_and_poll)

    for (answer, polls), model in zip(
        polled,
        (
            sdk.SplitResponse,
            sdk.SingleSchemaResponse,
            sdk.TablesResponse,
            sdk.PipelineExecuteResponse,
        ),
        strict=True,
    ):
        raw = answer.dict()
        assert raw["status"] == "pending"
        sdk_strictly(sdk.AsyncSubmissionResponse, raw)
        assert [poll.status for poll in polls] == ["pending", "processing", "completed"]
        sdk_strictly(model, polls[-1].result)
    tables_answer = polled[2][0]
    assert tables_answer.tables_id == _extra_job_id(tables_answer)  # polled by its tables_id
    assert polled[1][1][-1].result["extraction_ids"] == ["ext_1", "ext_2"]
    assert polled[3][1][-1].result["results"]["schema"]["schema_output"]["values"] == {
        "total": "total (emulated)"
    }
    assert all(s.is_async for s in emulator.submissions)
    assert emulator.submissions[3].fields["steps"] == {
        "extract": {},
        "schema": {"input_schema": {"type": "object", "properties": {"total": {"type": "number"}}}},
    }


async def test_sdk_batches_report_progress_then_one_result_per_item(
    emulator: PulseEmulator,
) -> None:
    async with async_sdk_client(emulator.base_url, API_KEY) as client:
        started = await client.batch.extract(
            input=sdk.BatchInputSource(
                file_urls=["https://example.com/1.pdf", "https://example.com/2.pdf"],
                files=[sdk.BatchFileUpload(filename="3.pdf", content="JVBERi0=")],
            ),
            output=NOWHERE,
        )
        polls = [await client.jobs.get_job(job_id=started.batch_job_id) for _ in range(3)]
        split = await client.batch.split(
            batch_extract_id=started.batch_job_id, split_config=TOPICS, output=NOWHERE
        )
        tables = await client.batch.tables(extraction_ids=["ext_a", "ext_b"], output=NOWHERE)
        split_polls = [await client.jobs.get_job(job_id=split.batch_job_id) for _ in range(3)]
        schema = await client.batch.schema(
            batch_split_id=split.batch_job_id, schema_config=TOTAL_SCHEMA, output=NOWHERE
        )
        from_s3 = await client.batch.extract(
            input=sdk.BatchInputSource(s_3_prefix="s3://bucket/in/"), output=NOWHERE
        )

    for answer, model in (
        (started, sdk.BatchExtractResponse),
        (split, sdk.BatchSplitResponse),
        (tables, sdk.BatchTablesResponse),
        (schema, sdk.BatchSchemaResponse),
    ):
        sdk_strictly(model, answer)
        assert answer.status == "processing"
    assert started.total_files == 3
    assert from_s3.total_files == 3
    assert (split.total_extractions, tables.total_extractions) == (3, 2)
    assert (schema.total_splits, schema.total_extractions) == (3, None)
    for poll in polls:
        sdk_strictly(sdk.JobStatusResponse, poll)
    assert [(p.status, p.dict()["progress"]["completed"]) for p in polls] == [
        ("processing", 1),
        ("processing", 2),
        ("completed", 3),
    ]
    assert polls[0].result is None
    assert polls[-1].result is not None
    items = polls[-1].result["results"]
    assert [item["input"] for item in items] == [
        "https://example.com/1.pdf",
        "https://example.com/2.pdf",
        "3.pdf",
    ]
    assert all(item["status"] == "completed" for item in items)
    # The split batch works on what the extract batch produced.
    assert split_polls[-1].result is not None
    split_items = split_polls[-1].result["results"]
    assert [i["input"] for i in split_items] == [i["extraction_id"] for i in items]
    assert all(i["split_id"].startswith("split_") for i in split_items)


def test_batch_progress_grows_with_each_processing_answer() -> None:
    statuses = ["pending", "processing", "processing", "processing", "completed"]
    done = [batch_progress(statuses, n, 8)["completed"] for n in range(len(statuses))]
    assert done == [0, 2, 4, 6, 8]
    assert batch_progress(["processing", "failed"], 1, 4) == {
        "total": 4,
        "completed": 2,
        "failed": 0,
    }


async def test_sdk_cancel_job_then_the_job_reports_canceled(emulator: PulseEmulator) -> None:
    emulator.plan_next_job("processing")
    async with async_sdk_client(emulator.base_url, API_KEY) as client:
        job_id = (await client.extract(file_url="https://example.com/a.pdf", async_=True)).job_id
        assert job_id is not None
        before = await client.jobs.get_job(job_id=job_id)
        canceled = await client.jobs.cancel_job(job_id=job_id)
        after = [await client.jobs.get_job(job_id=job_id) for _ in range(2)]
        done = await client.extract(file_url="https://example.com/b.pdf")
        kept = await client.jobs.cancel_job(job_id=done.job_id or "")
        still = await client.jobs.get_job(job_id=done.job_id or "")
        with pytest.raises(pulse.core.api_error.ApiError) as unknown:
            await client.jobs.cancel_job(job_id="no-such-job")

    sdk_strictly(sdk.JobCancellationResponse, canceled)
    assert canceled.job_id == job_id
    assert before.status == "processing"
    assert [job.status for job in after] == ["canceled", "canceled"]
    assert "already completed" in kept.message
    assert still.status == "completed"
    assert unknown.value.status_code == 404


@pytest.mark.parametrize("final", ["expired", "canceled", "failed"])
async def test_every_final_status_can_be_scripted(emulator: PulseEmulator, final: str) -> None:
    emulator.plan_next_job("pending", "processing", final)
    async with async_sdk_client(emulator.base_url, API_KEY) as client:
        job_id = (await client.extract(file_url="https://example.com/a.pdf", async_=True)).job_id
        polls = [await client.jobs.get_job(job_id=job_id or "") for _ in range(4)]

    assert [p.status for p in polls] == ["pending", "processing", final, final]
    for poll in polls:
        sdk_strictly(sdk.JobStatusResponse, poll)
        assert poll.result is None


async def test_sdk_large_results_are_downloaded_once(emulator: PulseEmulator) -> None:
    document = sample_result("big", pages=80)
    emulator.plan_next_job("completed", result=document, large_result=True)
    async with async_sdk_client(emulator.base_url, API_KEY) as client:
        job_id = (await client.extract(file_url="https://example.com/a.pdf", async_=True)).job_id
        assert job_id is not None
        pointer = await client.jobs.get_job(job_id=job_id)
        downloaded = await client.large_results.get_large_result(job_id=job_id)
        with pytest.raises(pulse.core.api_error.ApiError) as again:
            await client.large_results.get_large_result(job_id=job_id)
        small = await client.extract(file_url="https://example.com/b.pdf")
        with pytest.raises(pulse.core.api_error.ApiError) as not_large:
            await client.large_results.get_large_result(job_id=small.job_id or "")

    assert pointer.result is not None and pointer.result["is_url"] is True
    sdk_strictly(sdk.ExtractResultCore, downloaded)
    assert downloaded.dict() == document
    assert again.value.status_code == 410
    assert not_large.value.status_code == 404
    assert emulator.downloads == 0  # the pointer URL itself was never fetched


async def test_cancel_and_large_results_need_the_key(
    emulator: PulseEmulator, http: aiohttp.ClientSession
) -> None:
    emulator.add_job("job-1", status="processing")
    emulator.add_job("job-2", large_result=True)
    async with http.delete(f"{emulator.base_url}/job/job-1") as cancel:
        assert cancel.status == 401
    status, _, _ = await _get(http, f"{emulator.base_url}/large_results/job-2", headers={})
    assert status == 401
    assert (await _job(http, emulator, "job-1"))[1]["status"] == "processing"
    status, _, _ = await _get(http, f"{emulator.base_url}/large_results/job-2")
    assert status == 200


@pytest.mark.parametrize(
    ("path", "body", "message"),
    [
        ("/split", {"async": True}, "extraction_id is required"),
        ("/split", {"extraction_id": "e"}, "split_config or split_config_id is required"),
        ("/split", {"extraction_id": "e", "split_config": {"split_input": "x"}}, "split_input"),
        ("/split", {"extraction_id": 7, "split_config_id": "c"}, "extraction_id must be"),
        ("/schema", {"schema_config_id": "c"}, "extraction_id, extraction_ids or split_id"),
        ("/schema", {"extraction_id": "e"}, "schema_config or schema_config_id is required"),
        ("/schema", {"split_id": "s"}, "split_schema_config is required with split_id"),
        ("/schema", {"extraction_ids": "e", "schema_config_id": "c"}, "extraction_ids must be"),
        ("/tables", {"tables_config": {}}, "extraction_id is required"),
        ("/tables", {"extraction_id": "e", "tables_config": []}, "tables_config must be"),
        ("/pipeline/execute", {"file_url": "u"}, "steps is required"),
        ("/pipeline/execute", {"file_url": "u", "steps": {"ocr": {}}}, "unknown step 'ocr'"),
        ("/pipeline/execute", {"steps": {"extract": {}}}, "file or file_url is required"),
        ("/pipeline/execute", {"file_url": "u", "steps": {"split": {}}}, "steps.split"),
        ("/batch/extract", {"input": {"file_urls": ["u"]}}, "output is required"),
        ("/batch/extract", {"output": {}, "input": {}}, "input lists nothing to process"),
        ("/batch/extract", {"output": {}, "input": {"file_urls": "u"}}, "input.file_urls"),
        ("/batch/extract", {"output": {}, "input": {"files": [{}]}}, "input.files"),
        ("/batch/split", {"output": {}, "extraction_ids": ["e"]}, "split_config is required"),
        ("/batch/tables", {"output": {}}, "one of extraction_ids, batch_extract_id"),
        ("/batch/tables", {"output": {}, "batch_extract_id": "b"}, "names no batch job"),
        ("/batch/schema", {"output": {}, "split_ids": []}, "split_ids lists nothing"),
    ],
)
async def test_calls_the_api_would_refuse_are_400_naming_the_field(
    emulator: PulseEmulator,
    http: aiohttp.ClientSession,
    path: str,
    body: dict[str, Any],
    message: str,
) -> None:
    async with http.post(f"{emulator.base_url}{path}", json=body, headers=KEY_HEADERS) as answer:
        refused = await answer.json()

    assert answer.status == 400
    assert message in refused["error"]
    assert emulator.submissions == []


# -- run_emulator ------------------------------------------------------------------


async def test_run_emulator_serves_demo_jobs_until_cancelled(
    http: aiohttp.ClientSession,
) -> None:
    with structlog.testing.capture_logs() as logs:
        task = asyncio.create_task(run_emulator("127.0.0.1", 0, API_KEY))
        await wait_for(lambda: any(e["event"] == "emulator_listening" for e in logs))
    (listening,) = [e for e in logs if e["event"] == "emulator_listening"]
    base_url = listening["base_url"]
    try:
        for job_id in listening["jobs"]:
            status, _, _ = await _get(http, f"{base_url}/job/{job_id}")
            assert status == 200
        status, _, body = await _get(http, f"{base_url}/job/demo-failed")
        assert json.loads(body)["status"] == "failed"
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    with pytest.raises(aiohttp.ClientConnectionError):
        await _get(http, f"{base_url}/job/demo-completed")
