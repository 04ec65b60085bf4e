"""The Pulse API client against the emulator and plain servers on loopback."""

from __future__ import annotations

import asyncio
import email.utils
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from pytest_aiohttp import AiohttpServer

from pulse_relay.emulator import Fault, PulseEmulator, sample_result
from pulse_relay.events import is_terminal
from pulse_relay.pulse import (
    AUTH_RETRY_SECONDS,
    MAX_REASON_CHARS,
    NOT_FOUND_MAX_ATTEMPTS,
    ErrorVerdict,
    PulseAuthError,
    PulseClient,
    PulseError,
    PulseNotFoundError,
    PulsePermanentError,
    PulseRetryableError,
    judge_error,
)
from pulse_relay.redaction import REDACTED
from tests.helpers import wait_for

API_KEY = "pk_test_0123456789abcdefSECRET"

MakeClient = Callable[..., PulseClient]


@pytest.fixture
async def emulator() -> AsyncIterator[PulseEmulator]:
    async with PulseEmulator(api_key=API_KEY) as emu:
        yield emu


@pytest.fixture
async def make_client(emulator: PulseEmulator) -> AsyncIterator[MakeClient]:
    clients: list[PulseClient] = []

    def make(base_url: str | None = None, api_key: str = API_KEY, **options: Any) -> PulseClient:
        client = PulseClient(base_url or emulator.base_url, api_key, **options)
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.close()


@pytest.fixture
def client(make_client: MakeClient) -> PulseClient:
    return make_client()


def _paths(emulator: PulseEmulator, prefix: str) -> list[str]:
    return [r.path for r in emulator.requests if r.path.startswith(prefix)]


# -- construction -------------------------------------------------------------


def test_base_url_must_be_http() -> None:
    with pytest.raises(ValueError, match="http"):
        PulseClient("ftp://example.com", API_KEY)


# -- GET /job -----------------------------------------------------------------


async def test_get_job_returns_the_documented_shape(
    emulator: PulseEmulator, client: PulseClient
) -> None:
    emulator.add_job("job-1")

    job = await client.get_job("job-1")

    assert set(job) == {"job_id", "status", "created_at", "updated_at", "result", "error"}
    assert job["job_id"] == "job-1"
    assert job["status"] == "completed"
    assert job["result"] == sample_result("job-1")
    assert job["error"] is None


async def test_fetch_job_with_inline_result_downloads_nothing(
    emulator: PulseEmulator, client: PulseClient
) -> None:
    emulator.add_job("job-1")

    fetched = await client.fetch_job("job-1")

    assert fetched.result_url is None
    assert fetched.job["result"]["extraction_id"].startswith("ext_")
    assert emulator.downloads == 0


async def test_api_key_is_sent(emulator: PulseEmulator, client: PulseClient) -> None:
    emulator.add_job("job-1")

    await client.get_job("job-1")

    (request,) = emulator.requests
    assert request.path == "/job/job-1"
    assert request.headers["x-api-key"] == API_KEY


async def test_job_id_is_quoted_into_the_path(emulator: PulseEmulator, client: PulseClient) -> None:
    with pytest.raises(PulseNotFoundError):
        await client.get_job("a b?c")

    (request,) = emulator.requests
    assert request.path == "/job/a b?c"  # decoded by the server: it arrived as one segment
    assert emulator.get_count("a b?c") == 1


async def test_wrong_key_is_an_auth_error(emulator: PulseEmulator, make_client: MakeClient) -> None:
    emulator.add_job("job-1")
    client = make_client(api_key="wrong-key")

    with pytest.raises(PulseAuthError) as caught:
        await client.get_job("job-1")

    assert caught.value.status_code == 401
    assert "401" in caught.value.reason


async def test_unknown_job_is_not_found(client: PulseClient) -> None:
    with pytest.raises(PulseNotFoundError) as caught:
        await client.get_job("nope")

    assert caught.value.status_code == 404


@pytest.mark.parametrize(
    ("status", "error_class"),
    [
        (408, PulseRetryableError),
        (425, PulseRetryableError),
        (429, PulseRetryableError),
        (500, PulseRetryableError),
        (502, PulseRetryableError),
        (503, PulseRetryableError),
        (504, PulseRetryableError),
        (401, PulseAuthError),
        (403, PulseAuthError),
        (404, PulseNotFoundError),
        (400, PulsePermanentError),
        (409, PulsePermanentError),
        (422, PulsePermanentError),
    ],
)
async def test_status_codes_are_classified(
    emulator: PulseEmulator, client: PulseClient, status: int, error_class: type[PulseError]
) -> None:
    emulator.add_job("job-1")
    emulator.fail_next("job-1", status)

    with pytest.raises(PulseError) as caught:
        await client.get_job("job-1")

    assert type(caught.value) is error_class
    assert caught.value.status_code == status
    assert caught.value.retry_after_seconds is None
    # The fault was one answer only: the job is readable again.
    assert (await client.get_job("job-1"))["status"] == "completed"


async def test_429_retry_after_seconds(emulator: PulseEmulator, client: PulseClient) -> None:
    emulator.add_job("job-1")
    emulator.fail_next("job-1", Fault.http(429, retry_after="7"))

    with pytest.raises(PulseRetryableError) as caught:
        await client.get_job("job-1")

    assert caught.value.status_code == 429
    assert caught.value.retry_after_seconds == 7.0


async def test_503_retry_after_http_date(emulator: PulseEmulator, client: PulseClient) -> None:
    emulator.add_job("job-1")
    when = email.utils.formatdate(time.time() + 3600, usegmt=True)
    emulator.fail_next("job-1", Fault.http(503, retry_after=when))

    with pytest.raises(PulseRetryableError) as caught:
        await client.get_job("job-1")

    assert caught.value.status_code == 503
    assert caught.value.retry_after_seconds is not None
    assert 3000 < caught.value.retry_after_seconds <= 3600


async def test_slow_answer_past_the_timeout_is_retryable(
    emulator: PulseEmulator, make_client: MakeClient
) -> None:
    emulator.add_job("job-1")
    emulator.fail_next("job-1", Fault.slow(3600))
    client = make_client(timeout_seconds=0.2)

    with pytest.raises(PulseRetryableError, match="timed out") as caught:
        await client.get_job("job-1")

    assert caught.value.status_code is None
    # The client gave up and the emulator saw it go.
    await wait_for(lambda: emulator.in_flight == 0)


async def test_connection_reset_is_retryable(emulator: PulseEmulator, client: PulseClient) -> None:
    emulator.add_job("job-1")
    # aiohttp retries an idempotent request once on a dropped connection.
    emulator.fail_next("job-1", Fault.reset(), Fault.reset())

    with pytest.raises(PulseRetryableError) as caught:
        await client.get_job("job-1")

    assert caught.value.status_code is None
    assert emulator.get_count("job-1") == 2
    assert (await client.get_job("job-1"))["status"] == "completed"


async def test_connection_refused_is_retryable(
    emulator: PulseEmulator, make_client: MakeClient
) -> None:
    base_url = emulator.base_url
    await emulator.stop()
    client = make_client(base_url)

    with pytest.raises(PulseRetryableError):
        await client.get_job("job-1")


async def test_truncated_json_is_retryable(emulator: PulseEmulator, client: PulseClient) -> None:
    emulator.add_job("job-1")
    emulator.fail_next("job-1", Fault.truncated())

    with pytest.raises(PulseRetryableError, match="JSON"):
        await client.get_job("job-1")


@pytest.mark.parametrize("body", [b"[1, 2]", b'"completed"', b"null", b"42"])
async def test_json_that_is_not_an_object_is_permanent(
    emulator: PulseEmulator, client: PulseClient, body: bytes
) -> None:
    emulator.add_job("job-1")
    emulator.fail_next("job-1", Fault.raw(body))

    with pytest.raises(PulsePermanentError, match="not a JSON object"):
        await client.get_job("job-1")


async def test_deeply_nested_json_is_permanent(
    emulator: PulseEmulator, client: PulseClient
) -> None:
    emulator.add_job("job-1")
    emulator.fail_next("job-1", Fault.raw(b"[" * 100_000 + b"]" * 100_000))

    with pytest.raises(PulsePermanentError, match="nested"):
        await client.get_job("job-1")


async def test_job_body_over_the_cap_is_permanent(
    emulator: PulseEmulator, make_client: MakeClient
) -> None:
    emulator.add_job("job-1", result=sample_result("job-1", pages=50))
    client = make_client(max_result_bytes=2048)

    with pytest.raises(PulsePermanentError, match="limit"):
        await client.get_job("job-1")


@pytest.mark.parametrize(
    "body",
    [
        b'{"error": "invalid key pk_test_0123456789abcdefSECRET for this account"}',
        b"<html>" + b"x" * 200_000 + b"pk_test_0123456789abcdefSECRET</html>",
        b"pk_test_0123456789abcdefSECRET",
        b"\xff\xfe\x00 not text \n\n\t at all",
        b"",
    ],
)
async def test_error_reason_is_short_and_never_holds_the_key(
    emulator: PulseEmulator, client: PulseClient, body: bytes
) -> None:
    emulator.add_job("job-1")
    emulator.fail_next("job-1", Fault.http(500, body=body))

    with pytest.raises(PulseRetryableError) as caught:
        await client.get_job("job-1")

    reason = caught.value.reason
    assert reason.startswith("GET /job: HTTP 500")
    assert len(reason) <= MAX_REASON_CHARS
    assert API_KEY not in reason
    assert API_KEY not in str(caught.value)
    assert "\n" not in reason


async def test_error_message_is_taken_from_a_json_body(
    emulator: PulseEmulator, client: PulseClient
) -> None:
    emulator.add_job("job-1")
    emulator.fail_next("job-1", Fault.http(422, body=b'{"detail": "job_id is malformed"}'))

    with pytest.raises(PulsePermanentError) as caught:
        await client.get_job("job-1")

    assert caught.value.reason == "GET /job: HTTP 422: job_id is malformed"


async def test_nested_error_message_is_used(emulator: PulseEmulator, client: PulseClient) -> None:
    emulator.add_job("job-1")
    body = b'{"error": {"code": "rate_limited", "message": "slow down"}}'
    emulator.fail_next("job-1", Fault.http(429, body=body))

    with pytest.raises(PulseRetryableError) as caught:
        await client.get_job("job-1")

    assert caught.value.reason == "GET /job: HTTP 429: slow down"


async def test_an_error_message_echoing_the_api_key_is_masked_with_the_one_marker(
    emulator: PulseEmulator, client: PulseClient
) -> None:
    emulator.add_job("job-1")
    body = json.dumps({"error": f"key {API_KEY} is over quota"}).encode()
    emulator.fail_next("job-1", Fault.http(400, body=body))

    with pytest.raises(PulsePermanentError) as caught:
        await client.get_job("job-1")

    assert caught.value.reason == f"GET /job: HTTP 400: key {REDACTED} is over quota"


async def test_a_lone_surrogate_in_an_error_message_is_replaced(
    emulator: PulseEmulator, client: PulseClient
) -> None:
    emulator.add_job("job-1")
    emulator.fail_next("job-1", Fault.http(503, body=b'{"error": "busy \\ud800"}'))

    with pytest.raises(PulseRetryableError) as caught:
        await client.get_job("job-1")

    # The reason is stored with the attempt: it must be text the store can write.
    assert caught.value.reason == "GET /job: HTTP 503: busy \ufffd"


async def test_progression_through_statuses(emulator: PulseEmulator, client: PulseClient) -> None:
    emulator.add_job("job-1", statuses=["pending", "processing", "completed"])

    seen = [(await client.get_job("job-1"))["status"] for _ in range(4)]

    assert seen == ["pending", "processing", "completed", "completed"]
    assert [is_terminal(status) for status in seen] == [False, False, True, True]


async def test_concurrent_requests_are_counted(
    emulator: PulseEmulator, client: PulseClient
) -> None:
    for n in range(5):
        emulator.add_job(f"job-{n}")
    emulator.hold_requests()

    tasks = [asyncio.create_task(client.get_job(f"job-{n}")) for n in range(5)]
    await wait_for(lambda: emulator.in_flight == 5)
    emulator.release_requests()
    jobs = await asyncio.gather(*tasks)

    assert [job["job_id"] for job in jobs] == [f"job-{n}" for n in range(5)]
    assert emulator.max_in_flight == 5
    assert emulator.in_flight == 0


# -- large results --------------------------------------------------------------


async def test_large_result_is_downloaded_in_place(
    emulator: PulseEmulator, client: PulseClient
) -> None:
    document = sample_result("job-1", pages=20)
    emulator.add_job("job-1", large_result=True, result=document)

    fetched = await client.fetch_job("job-1")

    assert fetched.job["result"] == document
    assert fetched.job["status"] == "completed"
    assert fetched.result_url is not None
    assert fetched.result_url.startswith(f"{emulator.base_url}/results/")
    assert emulator.downloads == 1
    (download,) = [r for r in emulator.requests if r.path.startswith("/results/")]
    # Same scheme, host and port as the API: the key goes along.
    assert download.headers["x-api-key"] == API_KEY


async def test_used_result_url_is_refreshed_once(
    emulator: PulseEmulator, client: PulseClient
) -> None:
    emulator.add_job("job-1", large_result=True)
    emulator.fail_next_download("job-1", 410)

    fetched = await client.fetch_job("job-1")

    assert fetched.job["result"] == sample_result("job-1")
    first, second = _paths(emulator, "/results/")
    assert first != second
    assert fetched.result_url == f"{emulator.base_url}{second}"
    assert emulator.get_count("job-1") == 2
    assert emulator.downloads == 1


async def test_single_use_url_served_once_then_refetched(
    emulator: PulseEmulator, client: PulseClient
) -> None:
    emulator.add_job("job-1", large_result=True)
    first = await client.fetch_job("job-1")
    assert first.result_url is not None
    # Pin the job to the pointer already used, as an API handing out a stale URL would.
    emulator.add_job("job-1", result={"is_url": True, "url": first.result_url})

    with pytest.raises(PulseRetryableError) as caught:
        await client.fetch_job("job-1")

    assert caught.value.status_code == 410
    assert emulator.get_count("job-1") == 3  # the first fetch, then the fetch and one refresh
    assert _paths(emulator, "/results/") == [first.result_url.removeprefix(emulator.base_url)] * 3


async def test_second_410_is_retryable(emulator: PulseEmulator, client: PulseClient) -> None:
    emulator.add_job("job-1", large_result=True)
    emulator.fail_next_download("job-1", 410, 410)

    with pytest.raises(PulseRetryableError) as caught:
        await client.fetch_job("job-1")

    assert caught.value.status_code == 410
    assert emulator.get_count("job-1") == 2
    assert emulator.downloads == 0


async def test_refresh_may_return_an_inline_result(
    emulator: PulseEmulator, client: PulseClient
) -> None:
    stale = {
        "job_id": "job-1",
        "status": "completed",
        "result": {"is_url": True, "url": f"{emulator.base_url}/results/unknown-token"},
    }
    inline = {"job_id": "job-1", "status": "completed", "result": {"markdown": "# inline"}}
    emulator.fail_next(
        "job-1", Fault.raw(json.dumps(stale).encode()), Fault.raw(json.dumps(inline).encode())
    )

    fetched = await client.fetch_job("job-1")

    # The unknown token answered 404, which also asks for a fresh pointer.
    assert fetched.result_url is None
    assert fetched.job == inline
    assert emulator.get_count("job-1") == 2


async def test_download_errors_are_classified(emulator: PulseEmulator, client: PulseClient) -> None:
    emulator.add_job("job-1", large_result=True)
    emulator.fail_next_download("job-1", Fault.http(503, retry_after="12"))

    with pytest.raises(PulseRetryableError) as caught:
        await client.fetch_job("job-1")

    assert caught.value.status_code == 503
    assert caught.value.retry_after_seconds == 12.0
    assert caught.value.reason.startswith("result download: HTTP 503")


async def test_truncated_download_is_retryable(
    emulator: PulseEmulator, client: PulseClient
) -> None:
    emulator.add_job("job-1", large_result=True)
    emulator.fail_next_download("job-1", Fault.truncated())

    with pytest.raises(PulseRetryableError, match="JSON"):
        await client.fetch_job("job-1")


async def test_pointer_without_url_is_permanent(
    emulator: PulseEmulator, client: PulseClient
) -> None:
    emulator.add_job("job-1", result={"is_url": True})

    with pytest.raises(PulsePermanentError, match="url"):
        await client.fetch_job("job-1")


async def test_pointer_to_a_non_http_url_is_permanent(
    emulator: PulseEmulator, client: PulseClient
) -> None:
    emulator.add_job("job-1", result={"is_url": True, "url": "file:///etc/passwd"})

    with pytest.raises(PulsePermanentError, match="http"):
        await client.fetch_job("job-1")


async def test_result_over_the_cap_is_permanent_content_length(
    emulator: PulseEmulator, make_client: MakeClient
) -> None:
    emulator.add_job("job-1", large_result=True, result=sample_result("job-1", pages=50))
    client = make_client(max_result_bytes=4096)

    with pytest.raises(PulsePermanentError, match=r"\d+ bytes exceeds the 4096-byte limit"):
        await client.fetch_job("job-1")


class _PlainServer:
    """A foreign host: records headers, serves a document, redirects, streams."""

    def __init__(self, document: dict[str, Any]) -> None:
        self.document = document
        self.seen: list[tuple[str, dict[str, str]]] = []
        self.app = web.Application()
        self.app.router.add_get("/doc", self._doc)
        self.app.router.add_get("/hop", self._hop)
        self.app.router.add_get("/stream", self._stream)
        self.app.router.add_get("/loop", self._loop)
        self.app.router.add_get("/nowhere", self._nowhere)
        self.app.router.add_get("/ftp", self._ftp)

    def _note(self, request: web.Request) -> None:
        self.seen.append((request.path, dict(request.headers)))

    async def _doc(self, request: web.Request) -> web.Response:
        self._note(request)
        return web.json_response(self.document)

    async def _hop(self, request: web.Request) -> web.Response:
        self._note(request)
        raise web.HTTPFound("/doc")

    async def _loop(self, request: web.Request) -> web.Response:
        self._note(request)
        raise web.HTTPFound("/loop")

    async def _nowhere(self, request: web.Request) -> web.Response:
        self._note(request)
        return web.Response(status=302)

    async def _ftp(self, request: web.Request) -> web.Response:
        self._note(request)
        raise web.HTTPFound("ftp://files.example/doc.json")

    async def _stream(self, request: web.Request) -> web.StreamResponse:
        self._note(request)
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        payload = json.dumps(self.document).encode()
        for start in range(0, len(payload), 1024):
            await response.write(payload[start : start + 1024])
        await response.write_eof()
        return response


@pytest.fixture
async def foreign(aiohttp_server: AiohttpServer) -> tuple[_PlainServer, str]:
    plain = _PlainServer(sample_result("foreign", pages=30))
    server = await aiohttp_server(plain.app)
    return plain, str(server.make_url("")).rstrip("/")


async def test_key_is_not_sent_to_another_host(
    emulator: PulseEmulator, client: PulseClient, foreign: tuple[_PlainServer, str]
) -> None:
    plain, foreign_url = foreign
    emulator.add_job("job-1", result={"is_url": True, "url": f"{foreign_url}/hop"})

    fetched = await client.fetch_job("job-1")

    assert fetched.job["result"] == plain.document
    assert fetched.result_url == f"{foreign_url}/hop"
    assert [path for path, _ in plain.seen] == ["/hop", "/doc"]
    for _, headers in plain.seen:
        assert "x-api-key" not in {name.lower() for name in headers}
        assert API_KEY not in json.dumps(headers)


async def test_redirect_from_the_api_host_drops_the_key(
    aiohttp_server: AiohttpServer, make_client: MakeClient, foreign: tuple[_PlainServer, str]
) -> None:
    plain, foreign_url = foreign
    api_seen: list[tuple[str, str | None]] = []

    async def job(request: web.Request) -> web.Response:
        api_seen.append((request.path, request.headers.get("x-api-key")))
        return web.json_response(
            {"job_id": "job-1", "status": "completed", "result": {"is_url": True, "url": "/big"}}
        )

    async def big(request: web.Request) -> web.Response:
        api_seen.append((request.path, request.headers.get("x-api-key")))
        raise web.HTTPTemporaryRedirect(f"{foreign_url}/doc")

    app = web.Application()
    app.router.add_get("/job/{job_id}", job)
    app.router.add_get("/big", big)
    api = await aiohttp_server(app)
    base_url = str(api.make_url("")).rstrip("/")
    client = make_client(base_url)

    fetched = await client.fetch_job("job-1")

    assert fetched.job["result"] == plain.document
    assert fetched.result_url == f"{base_url}/big"
    assert api_seen == [("/job/job-1", API_KEY), ("/big", API_KEY)]
    ((path, headers),) = plain.seen
    assert path == "/doc"
    assert "x-api-key" not in {name.lower() for name in headers}


async def test_streamed_result_over_the_cap_is_permanent(
    emulator: PulseEmulator, make_client: MakeClient, foreign: tuple[_PlainServer, str]
) -> None:
    plain, foreign_url = foreign
    emulator.add_job("job-1", result={"is_url": True, "url": f"{foreign_url}/stream"})
    size = len(json.dumps(plain.document).encode())

    capped = make_client(max_result_bytes=size - 1)
    with pytest.raises(PulsePermanentError, match="limit"):
        await capped.fetch_job("job-1")

    # Exactly at the cap is still fine: the check is not off by one.
    roomy = make_client(max_result_bytes=size)
    fetched = await roomy.fetch_job("job-1")
    assert fetched.job["result"] == plain.document


async def test_redirect_loop_is_permanent(
    emulator: PulseEmulator, client: PulseClient, foreign: tuple[_PlainServer, str]
) -> None:
    _, foreign_url = foreign
    emulator.add_job("job-1", result={"is_url": True, "url": f"{foreign_url}/loop"})

    with pytest.raises(PulsePermanentError, match="redirects"):
        await client.fetch_job("job-1")


@pytest.mark.parametrize(
    ("path", "message"), [("/nowhere", "without Location"), ("/ftp", "non-http")]
)
async def test_unusable_redirects_are_permanent(
    emulator: PulseEmulator,
    client: PulseClient,
    foreign: tuple[_PlainServer, str],
    path: str,
    message: str,
) -> None:
    _, foreign_url = foreign
    emulator.add_job("job-1", result={"is_url": True, "url": f"{foreign_url}{path}"})

    with pytest.raises(PulsePermanentError, match=message) as caught:
        await client.fetch_job("job-1")

    assert caught.value.status_code == 302


async def test_403_from_a_foreign_host_asks_for_a_fresh_pointer(
    aiohttp_server: AiohttpServer, emulator: PulseEmulator, client: PulseClient
) -> None:
    answers = [web.json_response({"error": "Request has expired"}, status=403)]

    async def presigned(request: web.Request) -> web.Response:
        return answers.pop(0) if answers else web.json_response({"markdown": "# ok"})

    app = web.Application()
    app.router.add_get("/presigned", presigned)
    server = await aiohttp_server(app)
    emulator.add_job("job-1", result={"is_url": True, "url": str(server.make_url("/presigned"))})

    fetched = await client.fetch_job("job-1")

    assert fetched.job["result"] == {"markdown": "# ok"}
    assert emulator.get_count("job-1") == 2


# -- session ownership ------------------------------------------------------------


async def test_client_owns_and_closes_its_session(emulator: PulseEmulator) -> None:
    emulator.add_job("job-1")
    async with PulseClient(emulator.base_url, API_KEY) as client:
        assert (await client.get_job("job-1"))["job_id"] == "job-1"
    await client.close()  # a second close is harmless


async def test_given_session_is_left_open(emulator: PulseEmulator) -> None:
    emulator.add_job("job-1")
    async with aiohttp.ClientSession() as session:
        client = PulseClient(emulator.base_url, API_KEY, session=session)
        await client.get_job("job-1")
        await client.close()

        assert not session.closed
        assert (await client.get_job("job-1"))["job_id"] == "job-1"


# -- the one policy for failed calls ------------------------------------------------

LAST_404 = NOT_FOUND_MAX_ATTEMPTS
JUDGED: list[tuple[PulseError, int, ErrorVerdict]] = [
    (PulseRetryableError("HTTP 503", 503), 1, ErrorVerdict("retry")),
    (PulseRetryableError("HTTP 503", 503), 1000, ErrorVerdict("retry")),
    (PulseRetryableError("timed out"), LAST_404, ErrorVerdict("retry")),
    (PulseRetryableError("HTTP 429", 429, 30.0), 1, ErrorVerdict("retry", 30.0)),
    (PulseAuthError("HTTP 401", 401), 1, ErrorVerdict("auth_error")),
    (PulseAuthError("HTTP 403", 403, 900.0), 1000, ErrorVerdict("auth_error", 900.0)),
    (PulseNotFoundError("HTTP 404", 404), 1, ErrorVerdict("not_found")),
    (PulseNotFoundError("HTTP 404", 404, 2.0), LAST_404 - 1, ErrorVerdict("not_found", 2.0)),
    (PulseNotFoundError("HTTP 404", 404), LAST_404, ErrorVerdict("dead")),
    (PulsePermanentError("HTTP 400", 400), 1, ErrorVerdict("dead")),
    (PulsePermanentError("response is not a JSON object"), 3, ErrorVerdict("dead")),
]


@pytest.mark.parametrize(("error", "attempt", "expected"), JUDGED)
def test_one_verdict_for_every_pulse_error(
    error: PulseError, attempt: int, expected: ErrorVerdict
) -> None:
    verdict = judge_error(error, attempt=attempt)
    assert verdict == expected
    assert verdict.gives_up == (expected.outcome == "dead")


def test_a_retry_waits_the_callers_backoff_but_never_less_than_retry_after() -> None:
    assert ErrorVerdict("retry").delay_seconds(4.0) == 4.0
    assert ErrorVerdict("retry", 30.0).delay_seconds(4.0) == 30.0
    assert ErrorVerdict("not_found", 2.0).delay_seconds(4.0) == 4.0


def test_a_rejected_key_waits_the_slow_schedule_whatever_the_backoff() -> None:
    assert ErrorVerdict("auth_error").delay_seconds(0.1) == AUTH_RETRY_SECONDS
    assert ErrorVerdict("auth_error").delay_seconds(900.0) == AUTH_RETRY_SECONDS
    assert ErrorVerdict("auth_error", 900.0).delay_seconds(1.0) == 900.0
