"""An emulator of the Pulse API on a real socket, for `pulse-relay demo` and the test suite.

It serves `GET /job/{job_id}` in the documented shape, accepts documents on
`POST /extract` (synchronous, or with `async` a job to poll) and the deprecated
`POST /extract_async` in the shapes of the official Python SDK, hands out
single-use large-result URLs, plays scripted faults (error statuses,
`Retry-After`, slow answers, truncated JSON, connection resets), counts what it
saw, and can send Svix-style signed webhooks the way Pulse does.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import secrets
import string
import uuid
from collections import defaultdict, deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Final

import aiohttp
import structlog
from aiohttp import web
from aiohttp.typedefs import Handler
from yarl import URL

from pulse_relay.signature import sign_headers

DEFAULT_API_KEY: Final = "emulator-key"

# What a `job.*` event says about the job's status at the time it was sent.
_EVENT_STATUS: Final = {
    "job.created": "pending",
    "job.processing": "processing",
    "job.completed": "completed",
    "job.failed": "failed",
    "job.cancelled": "canceled",
    "job.canceled": "canceled",
}
_ID_ALPHABET: Final = string.ascii_letters + string.digits
_JSON: Final = "application/json"
# What an accepted asynchronous job answers to its first polls, unless a plan says otherwise.
SUBMITTED_JOB_STATUSES: Final = ("pending", "processing", "completed")
_UPLOAD_CHUNK_BYTES: Final = 64 * 1024
_TRUE_WORDS: Final = frozenset({"true", "1", "yes", "on"})


@dataclass(frozen=True)
class Fault:
    """One scripted answer, used instead of the normal one.

    In order: wait `delay_seconds`; then `reset_connection` closes the socket
    without answering; else `body` (or, with `truncate_body`, the first half of
    the normal answer) is sent with `status` (200 if unset); else `status` is
    sent with a JSON error. A fault with only a delay is followed by the normal
    answer. Plain ints passed where faults are expected mean `Fault.http(n)`.
    """

    status: int | None = None
    retry_after: str | None = None
    delay_seconds: float = 0.0
    body: bytes | None = None
    truncate_body: bool = False
    reset_connection: bool = False

    @classmethod
    def http(
        cls, status: int, *, retry_after: str | None = None, body: bytes | None = None
    ) -> Fault:
        """Answer `status` (with `Retry-After` and a raw body if given)."""
        return cls(status=status, retry_after=retry_after, body=body)

    @classmethod
    def slow(cls, delay_seconds: float) -> Fault:
        """Wait `delay_seconds`, then give the normal answer."""
        return cls(delay_seconds=delay_seconds)

    @classmethod
    def truncated(cls) -> Fault:
        """A 200 whose JSON body stops halfway."""
        return cls(truncate_body=True)

    @classmethod
    def reset(cls) -> Fault:
        """Close the connection without answering.

        aiohttp clients resend an idempotent request once after a dropped
        connection, so queue two of these to make one `GET` fail.
        """
        return cls(reset_connection=True)

    @classmethod
    def raw(cls, body: bytes, *, status: int = 200) -> Fault:
        """Answer `status` with exactly `body`."""
        return cls(status=status, body=body)

    @property
    def answers_normally(self) -> bool:
        """True for a delay-only fault: the normal answer follows the wait."""
        return (
            self.status is None
            and self.body is None
            and not self.truncate_body
            and not self.reset_connection
        )


@dataclass(frozen=True)
class RecordedRequest:
    """A request the emulator received."""

    method: str
    path: str
    headers: dict[str, str]


@dataclass(frozen=True)
class UploadedFile:
    """A file part of a submission: its form field, name, size and SHA-256 (hex)."""

    field: str
    filename: str
    size_bytes: int
    sha256: str


@dataclass(frozen=True)
class Submission:
    """A document accepted on `POST /extract` or `POST /extract_async`."""

    job_id: str
    path: str
    is_async: bool
    fields: dict[str, Any]
    files: list[UploadedFile]
    headers: dict[str, str]


@dataclass(frozen=True)
class JobPlan:
    """How the next asynchronous submission behaves when polled: its statuses, in order."""

    statuses: tuple[str, ...] = SUBMITTED_JOB_STATUSES
    error: str | None = None
    result: dict[str, Any] | None = None


class _BadSubmission(Exception):
    """A submission the API would refuse with 400; the message names the field."""


@dataclass
class _Job:
    job_id: str
    statuses: list[str]
    result: dict[str, Any] | None
    error: str | None
    large_result: bool
    created_at: str
    updated_at: str
    step: int = 0
    last_status: str | None = None


@dataclass
class _Download:
    job_id: str
    document: dict[str, Any]
    requests: int = 0
    served: bool = False


@dataclass
class _Faults:
    job: deque[Fault] = field(default_factory=deque)
    download: deque[Fault] = field(default_factory=deque)


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _as_fault(value: Fault | int) -> Fault:
    return value if isinstance(value, Fault) else Fault.http(value)


def new_message_id() -> str:
    """A fresh Svix-style message id (`msg_` + 27 alphanumerics)."""
    return "msg_" + "".join(secrets.choice(_ID_ALPHABET) for _ in range(27))


def sample_result(job_id: str, *, pages: int = 3) -> dict[str, Any]:
    """A completed job's result in Pulse's shape; the extraction id is derived from the job id."""
    digest = hashlib.sha256(job_id.encode()).hexdigest()
    body = "\n\n".join(
        f"## Page {n}\n\nExtracted content of page {n} of document {job_id}. " * 3
        for n in range(1, pages + 1)
    )
    return {
        "extraction_id": f"ext_{digest[:24]}",
        "markdown": f"# Document {job_id}\n\n{body}\n",
        "page_count": pages,
        "plan-info": {"pages_used": pages, "tier": "emulator"},
    }


class PulseEmulator:
    """The Pulse API on 127.0.0.1 (or any host): jobs, large results, faults, counters."""

    def __init__(self, *, api_key: str = DEFAULT_API_KEY) -> None:
        self._api_key = api_key
        self._jobs: dict[str, _Job] = {}
        self._faults: defaultdict[str, _Faults] = defaultdict(_Faults)
        self._submit_faults: deque[Fault] = deque()
        self._downloads: dict[str, _Download] = {}
        self._get_counts: defaultdict[str, int] = defaultdict(int)
        self._requests: list[RecordedRequest] = []
        self._submissions: list[Submission] = []
        self._plans: deque[JobPlan] = deque()
        self._in_flight = 0
        self._max_in_flight = 0
        self._documents_served = 0
        self._gate = asyncio.Event()
        self._gate.set()
        self._stopping = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._base_url: str | None = None

    # -- lifecycle -------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Listen on `host:port` (0 picks a free port) and return the base URL."""
        if self._runner is not None:
            raise RuntimeError("emulator already started")
        app = web.Application(middlewares=[self._record])
        app.router.add_get("/job/{job_id}", self._get_job)
        app.router.add_get("/results/{token}", self._get_result)
        app.router.add_post("/extract", self._extract)
        app.router.add_post("/extract_async", self._extract_async)
        # handler_cancellation: a client that gives up (timeout, reset) must not
        # leave a handler counted as in flight.
        runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await runner.setup()
        try:
            site = web.TCPSite(runner, host, port)
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._stopping.clear()
        self._runner = runner
        bound_port = runner.addresses[0][1]
        self._base_url = str(URL.build(scheme="http", host=host, port=bound_port))
        return self._base_url

    async def stop(self) -> None:
        """Stop listening; requests held by faults or `hold_requests` end at once."""
        runner, self._runner = self._runner, None
        if runner is None:
            return
        # Held and delayed handlers also wait on this event: waking them lets
        # the runner's shutdown finish instead of waiting out a scripted delay.
        self._stopping.set()
        await runner.cleanup()

    async def __aenter__(self) -> PulseEmulator:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()

    @property
    def base_url(self) -> str:
        """`http://host:port` of the running emulator."""
        if self._base_url is None:
            raise RuntimeError("emulator not started")
        return self._base_url

    @property
    def api_key(self) -> str:
        """The key `GET /job` accepts."""
        return self._api_key

    # -- set-up ----------------------------------------------------------------

    def add_job(
        self,
        job_id: str,
        *,
        status: str = "completed",
        result: dict[str, Any] | None = None,
        error: str | None = None,
        statuses: list[str] | None = None,
        large_result: bool = False,
    ) -> None:
        """Add or replace a job; `statuses` advance one step per answered GET, the last repeats.

        A completed job's result is `result`, else `sample_result(job_id)`;
        other statuses answer `"result": null`. With `large_result` every GET
        of the completed job answers a fresh single-use `{"is_url", "url"}`
        pointer to the document.
        """
        steps = list(statuses) if statuses else [status]
        now = _now_iso()
        self._jobs[job_id] = _Job(
            job_id=job_id,
            statuses=steps,
            result=result,
            error=error,
            large_result=large_result,
            created_at=now,
            updated_at=now,
        )

    def fail_next(self, job_id: str, *faults: Fault | int) -> None:
        """Queue faults for the next `GET /job/{job_id}` calls (one each, before the key check)."""
        self._faults[job_id].job.extend(_as_fault(f) for f in faults)

    def fail_next_download(self, job_id: str, *faults: Fault | int) -> None:
        """Queue faults for the next downloads of `job_id`'s large result, one per request."""
        self._faults[job_id].download.extend(_as_fault(f) for f in faults)

    def plan_next_job(
        self,
        *statuses: str,
        error: str | None = None,
        result: dict[str, Any] | None = None,
    ) -> None:
        """Script the next asynchronous submission: the statuses its polls answer, in order.

        Plans are used one per asynchronous submission, oldest first; without
        one a job answers pending, processing, then completed.
        """
        steps = statuses or SUBMITTED_JOB_STATUSES
        self._plans.append(JobPlan(statuses=tuple(steps), error=error, result=result))

    def fail_next_submission(self, *faults: Fault | int) -> None:
        """Queue faults for the next `POST /extract` or `/extract_async` calls (one each)."""
        self._submit_faults.extend(_as_fault(f) for f in faults)

    def hold_requests(self) -> None:
        """Keep every `GET /job` in flight until `release_requests` (for concurrency tests)."""
        self._gate.clear()

    def release_requests(self) -> None:
        """Let held and future `GET /job` requests answer."""
        self._gate.set()

    # -- observation -----------------------------------------------------------

    def get_count(self, job_id: str) -> int:
        """How many `GET /job/{job_id}` requests arrived (faulted ones included)."""
        return self._get_counts.get(job_id, 0)

    def download_count(self, token: str) -> int:
        """How many requests arrived for one large-result URL token."""
        download = self._downloads.get(token)
        return 0 if download is None else download.requests

    @property
    def downloads(self) -> int:
        """How many large-result documents were served in full."""
        return self._documents_served

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every request received, oldest first."""
        return list(self._requests)

    @property
    def submissions(self) -> list[Submission]:
        """Every document accepted on the extract endpoints, oldest first."""
        return list(self._submissions)

    @property
    def in_flight(self) -> int:
        """`GET /job` requests being handled right now."""
        return self._in_flight

    @property
    def max_in_flight(self) -> int:
        """The most `GET /job` requests ever handled at the same time."""
        return self._max_in_flight

    # -- HTTP ------------------------------------------------------------------

    @web.middleware
    async def _record(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        self._requests.append(RecordedRequest(request.method, request.path, dict(request.headers)))
        return await handler(request)

    async def _get_job(self, request: web.Request) -> web.StreamResponse:
        job_id = request.match_info["job_id"]
        self._get_counts[job_id] += 1
        self._in_flight += 1
        self._max_in_flight = max(self._max_in_flight, self._in_flight)
        try:
            await self._pass_gate()
            if self._stopping.is_set():
                return _error(503, "shutting down")
            queue = self._faults[job_id].job
            if queue:
                fault = queue.popleft()
                if not await self._delay(fault):
                    return _error(503, "shutting down")
                if not fault.answers_normally:
                    return await self._play(
                        request, fault, lambda: self._job_answer(request, job_id)
                    )
            return self._job_answer(request, job_id)
        finally:
            self._in_flight -= 1

    def _job_answer(self, request: web.Request, job_id: str) -> web.Response:
        supplied = request.headers.get("x-api-key", "")
        if not hmac.compare_digest(supplied.encode(), self._api_key.encode()):
            return _error(401, "Invalid or missing API key")
        job = self._jobs.get(job_id)
        if job is None:
            return _error(404, "Job not found")
        status = job.statuses[min(job.step, len(job.statuses) - 1)]
        job.step += 1
        if status != job.last_status:
            if job.last_status is not None:
                job.updated_at = _now_iso()
            job.last_status = status
        result: dict[str, Any] | None = None
        if status == "completed":
            document = job.result if job.result is not None else sample_result(job_id)
            result = self._pointer(job_id, document) if job.large_result else document
        error = job.error
        if status == "failed" and error is None:
            error = "Document could not be processed"
        return web.json_response(
            {
                "job_id": job_id,
                "status": status,
                "created_at": job.created_at,
                "updated_at": job.updated_at,
                "result": result,
                "error": error if status == "failed" else None,
            }
        )

    async def _extract(self, request: web.Request) -> web.StreamResponse:
        return await self._submit(request, always_async=False)

    async def _extract_async(self, request: web.Request) -> web.StreamResponse:
        return await self._submit(request, always_async=True)

    async def _submit(self, request: web.Request, *, always_async: bool) -> web.StreamResponse:
        """`POST /extract` and `/extract_async`: record the document, answer as Pulse does."""
        queue = self._submit_faults
        if queue:
            fault = queue.popleft()
            if not await self._delay(fault):
                return _error(503, "shutting down")
            if not fault.answers_normally:
                return await self._play(request, fault, lambda: _error(500, "no answer"))
        supplied = request.headers.get("x-api-key", "")
        if not hmac.compare_digest(supplied.encode(), self._api_key.encode()):
            return _error(401, "Invalid or missing API key")
        try:
            fields, files = await _read_submission(request)
            if not files and not (fields.get("file_url") or fields.get("fileUrl")):
                raise _BadSubmission("file or file_url is required")
        except _BadSubmission as error:
            return _error(400, str(error))
        is_async = always_async or str(fields.get("async", "")).lower() in _TRUE_WORDS
        job_id = str(uuid.uuid4())
        self._submissions.append(
            Submission(job_id, request.path, is_async, fields, files, dict(request.headers))
        )
        if not is_async:
            document = sample_result(job_id)
            self.add_job(job_id, result=document)
            return web.json_response({**document, "job_id": job_id})
        plan = self._plans.popleft() if self._plans else JobPlan()
        self.add_job(job_id, statuses=list(plan.statuses), error=plan.error, result=plan.result)
        return web.json_response(
            {
                "job_id": job_id,
                "status": "pending",
                "message": "Job accepted; poll GET /job/{job_id} for its status",
                "queuedAt": _now_iso(),
            }
        )

    def _pointer(self, job_id: str, document: dict[str, Any]) -> dict[str, Any]:
        token = secrets.token_urlsafe(16)
        self._downloads[token] = _Download(job_id=job_id, document=document)
        return {"is_url": True, "url": f"{self.base_url}/results/{token}"}

    async def _get_result(self, request: web.Request) -> web.StreamResponse:
        token = request.match_info["token"]
        download = self._downloads.get(token)
        if download is None:
            return _error(404, "Result not found")
        download.requests += 1
        queue = self._faults[download.job_id].download
        if queue:
            fault = queue.popleft()
            if not await self._delay(fault):
                return _error(503, "shutting down")
            if not fault.answers_normally:
                return await self._play(request, fault, lambda: _document(download.document))
        if download.served:
            return _error(410, "Result URL already used; fetch the job again for a new one")
        download.served = True
        self._documents_served += 1
        return _document(download.document)

    async def _play(
        self, request: web.Request, fault: Fault, normal: Callable[[], web.Response]
    ) -> web.StreamResponse:
        if fault.reset_connection:
            transport = request.transport
            if transport is not None:
                transport.abort()
            # aiohttp treats a cancelled handler as a vanished client: it writes
            # nothing and logs nothing above debug, which is what a reset looks like.
            raise asyncio.CancelledError
        headers = {"Retry-After": fault.retry_after} if fault.retry_after is not None else None
        if fault.truncate_body:
            answer = normal()
            full = answer.body if isinstance(answer.body, bytes) else b"{}"
            return web.Response(
                status=fault.status or 200,
                body=full[: max(1, len(full) // 2)],
                content_type=_JSON,
                headers=headers,
            )
        if fault.body is not None:
            return web.Response(
                status=fault.status or 200, body=fault.body, content_type=_JSON, headers=headers
            )
        status = fault.status or 500
        return _error(status, f"Scripted HTTP {status}", headers=headers)

    async def _delay(self, fault: Fault) -> bool:
        """Wait out the fault's delay; False if the emulator stops meanwhile."""
        if fault.delay_seconds <= 0:
            return True
        try:
            await asyncio.wait_for(self._stopping.wait(), timeout=fault.delay_seconds)
        except TimeoutError:
            return True
        return False

    async def _pass_gate(self) -> None:
        """Return once `release_requests` or `stop` is called (at once if not held)."""
        if self._gate.is_set():
            return
        stopping = asyncio.ensure_future(self._stopping.wait())
        opened = asyncio.ensure_future(self._gate.wait())
        try:
            await asyncio.wait({stopping, opened}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
            opened.cancel()

    # -- webhooks --------------------------------------------------------------

    async def send_webhook(
        self,
        url: str,
        secret: str,
        event_type: str,
        job_id: str | None,
        *,
        webhook_id: str | None = None,
        data: dict[str, Any] | None = None,
        session: aiohttp.ClientSession | None = None,
    ) -> tuple[int, dict[str, Any]]:
        """Sign and POST a Pulse-style event; return (status, the JSON object answered or {})."""
        body = json.dumps(self.webhook_payload(event_type, job_id, data=data)).encode()
        message_id = webhook_id if webhook_id is not None else new_message_id()
        headers = {
            **sign_headers(secret, message_id, body),
            "content-type": _JSON,
            "user-agent": "pulse-relay-emulator",
        }
        if session is None:
            async with aiohttp.ClientSession() as own_session:
                return await _post(own_session, url, body, headers)
        return await _post(session, url, body, headers)

    def webhook_payload(
        self, event_type: str, job_id: str | None, *, data: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        """The payload of an event: `{"type", "timestamp", "data": {"job_id", "status"}}`.

        The status is what a `job.*` type implies, else the emulated job's
        last answered one; `data` entries are merged over the defaults.
        """
        payload_data: dict[str, Any] = {}
        if job_id is not None:
            payload_data["job_id"] = job_id
            status = _EVENT_STATUS.get(event_type) or self._current_status(job_id)
            if status is not None:
                payload_data["status"] = status
        payload_data.update(data or {})
        return {"type": event_type, "timestamp": _now_iso(), "data": payload_data}

    def _current_status(self, job_id: str) -> str | None:
        job = self._jobs.get(job_id)
        if job is None:
            return None
        return job.last_status


async def _post(
    session: aiohttp.ClientSession, url: str, body: bytes, headers: Mapping[str, str]
) -> tuple[int, dict[str, Any]]:
    async with session.post(url, data=body, headers=dict(headers)) as response:
        raw = await response.read()
        try:
            answer = json.loads(raw)
        except ValueError:
            answer = None
        return response.status, answer if isinstance(answer, dict) else {}


async def _read_submission(
    request: web.Request,
) -> tuple[dict[str, Any], list[UploadedFile]]:
    """The fields and files of a JSON, multipart or urlencoded submission."""
    content_type = request.content_type
    try:
        if content_type == "multipart/form-data":
            return await _read_multipart(request)
        if content_type == "application/x-www-form-urlencoded":
            form = await request.post()
            return {name: str(value) for name, value in form.items()}, []
        if content_type == _JSON:
            document = await request.json()
            if not isinstance(document, dict):
                raise _BadSubmission("the JSON body must be an object")
            return document, []
    except (ValueError, aiohttp.ClientError, web.HTTPException) as error:
        raise _BadSubmission(f"unreadable {content_type} body: {error}") from None
    raise _BadSubmission("expected multipart/form-data or application/json")


async def _read_multipart(request: web.Request) -> tuple[dict[str, Any], list[UploadedFile]]:
    """Read a multipart body part by part, hashing files without keeping them."""
    fields: dict[str, Any] = {}
    files: list[UploadedFile] = []
    reader = await request.multipart()
    while (part := await reader.next()) is not None:
        if not isinstance(part, aiohttp.BodyPartReader):
            raise _BadSubmission("nested multipart bodies are not accepted")
        name = part.name or ""
        if part.filename is None:
            fields[name] = await part.text()
            continue
        digest = hashlib.sha256()
        size_bytes = 0
        while chunk := await part.read_chunk(_UPLOAD_CHUNK_BYTES):
            digest.update(chunk)
            size_bytes += len(chunk)
        files.append(UploadedFile(name, part.filename, size_bytes, digest.hexdigest()))
    return fields, files


def _error(status: int, message: str, *, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers)


def _document(document: dict[str, Any]) -> web.Response:
    return web.json_response(document)


def _demo_jobs(emulator: PulseEmulator) -> Iterable[str]:
    emulator.add_job("demo-completed")
    emulator.add_job("demo-progress", statuses=["pending", "processing", "completed"])
    emulator.add_job("demo-failed", status="failed", error="The document is password protected")
    emulator.add_job("demo-large", large_result=True, result=sample_result("demo-large", pages=40))
    return ("demo-completed", "demo-progress", "demo-failed", "demo-large")


async def run_emulator(host: str, port: int, api_key: str) -> None:
    """Serve the emulator with a few demo jobs until cancelled."""
    log = structlog.get_logger("pulse_relay.emulator")
    emulator = PulseEmulator(api_key=api_key)
    jobs = list(_demo_jobs(emulator))
    await emulator.start(host, port)
    try:
        log.info("emulator_listening", base_url=emulator.base_url, jobs=jobs)
        await asyncio.Event().wait()
    finally:
        await emulator.stop()
