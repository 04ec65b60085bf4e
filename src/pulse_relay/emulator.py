"""An emulator of the Pulse API on a real socket, for `pulse-relay demo` and the test suite.

It answers every job call of the official Python SDK (`pulse-python-sdk`) in
the shapes the SDK parses: `POST /extract` and `/split`, `/schema`, `/tables`,
`/pipeline/execute` (each synchronous, or with `async` a job to poll), the
deprecated `POST /extract_async`, `POST /batch/extract|split|schema|tables`
(always a batch job whose polls report progress, then per-item results),
`GET /job/{job_id}`, `DELETE /job/{job_id}` (cancel) and
`GET /large_results/{job_id}`. It hands out single-use large-result URLs, plays
scripted faults (error statuses, `Retry-After`, slow answers, truncated JSON,
connection resets), counts what it saw, and can send Svix-style signed
webhooks the way Pulse does.
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

from pulse_relay.ingress.signature import sign_headers

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
# Every status a job can report; the last four are final.
JOB_STATUSES: Final = ("pending", "processing", "completed", "failed", "canceled", "expired")
_FINAL_STATUSES: Final = frozenset(JOB_STATUSES[2:])
# What an accepted asynchronous job answers to its first polls, unless a plan says otherwise.
SUBMITTED_JOB_STATUSES: Final = ("pending", "processing", "completed")
# A batch job reports progress twice (a third, then two thirds done) before its results.
BATCH_JOB_STATUSES: Final = ("processing", "processing", "completed")
# How many files an `s3_prefix` batch input is taken to hold.
S3_PREFIX_FILES: Final = 3
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
    """A request accepted on a submitting endpoint (`/extract`, `/split`, `/batch/tables`, ...).

    `job_id` is the job it created (a batch job's id for `/batch/*`).
    """

    job_id: str
    path: str
    is_async: bool
    fields: dict[str, Any]
    files: list[UploadedFile]
    headers: dict[str, str]


@dataclass(frozen=True)
class JobPlan:
    """How the next asynchronous submission behaves when polled: its statuses, in order."""

    # None: the endpoint's own (`SUBMITTED_JOB_STATUSES`, or `BATCH_JOB_STATUSES` for a batch).
    statuses: tuple[str, ...] | None = None
    error: str | None = None
    result: dict[str, Any] | None = None
    large_result: bool = False


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
    # A batch job's number of items; its polls then report `progress`.
    batch_total: int | None = None
    large_result_served: bool = False


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
        # What each batch job produced, one id per item: the input of a later batch.
        self._batch_outputs: dict[str, list[str]] = {}
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
        app.router.add_delete("/job/{job_id}", self._cancel_job)
        app.router.add_get("/results/{token}", self._get_result)
        app.router.add_get("/large_results/{job_id}", self._get_large_result)
        for endpoint in (*_ENDPOINTS, *_BATCH_ENDPOINTS):
            app.router.add_post(endpoint.path, self._submitter(endpoint))
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
        large_result: bool = False,
    ) -> None:
        """Script the next asynchronous submission: the statuses its polls answer, in order.

        Plans are used one per asynchronous submission (batches included),
        oldest first. Without statuses a job answers pending, processing, then
        completed, and a batch job processing twice, then completed. Any of
        `JOB_STATUSES` may be scripted, `expired` and `canceled` included.
        `result` replaces the document the endpoint would produce;
        `large_result` answers it as a single-use URL (see `add_job`).
        """
        self._plans.append(
            JobPlan(
                statuses=tuple(statuses) or None,
                error=error,
                result=result,
                large_result=large_result,
            )
        )

    def fail_next_submission(self, *faults: Fault | int) -> None:
        """Queue faults for the next submissions (`POST /extract`, `/split`, ...), one each."""
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
        """Every request accepted on a submitting endpoint, oldest first."""
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

    def _key_refused(self, request: web.Request) -> web.Response | None:
        """The 401 for a request without the right `x-api-key`, else None."""
        supplied = request.headers.get("x-api-key", "")
        if hmac.compare_digest(supplied.encode(), self._api_key.encode()):
            return None
        return _error(401, "Invalid or missing API key")

    def _job_answer(self, request: web.Request, job_id: str) -> web.Response:
        if (refused := self._key_refused(request)) is not None:
            return refused
        job = self._jobs.get(job_id)
        if job is None:
            return _error(404, "Job not found")
        index = min(job.step, len(job.statuses) - 1)
        status = job.statuses[index]
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
        answer: dict[str, Any] = {
            "job_id": job_id,
            "status": status,
            "created_at": job.created_at,
            "updated_at": job.updated_at,
            "result": result,
            "error": error if status == "failed" else None,
        }
        if job.batch_total is not None:
            answer["progress"] = batch_progress(job.statuses, index, job.batch_total)
        return web.json_response(answer)

    async def _cancel_job(self, request: web.Request) -> web.StreamResponse:
        """`DELETE /job/{job_id}`: a job not yet finished answers `canceled` from now on."""
        if (refused := self._key_refused(request)) is not None:
            return refused
        job_id = request.match_info["job_id"]
        job = self._jobs.get(job_id)
        if job is None:
            return _error(404, "Job not found")
        current = _status_now(job)
        if current in _FINAL_STATUSES:
            message = f"Job is already {current}; it remains unchanged"
        else:
            job.statuses, job.step = ["canceled"], 0
            message = "Job cancellation requested"
        return web.json_response({"job_id": job_id, "message": message})

    async def _get_large_result(self, request: web.Request) -> web.StreamResponse:
        """`GET /large_results/{job_id}`: a completed large job's document, once."""
        if (refused := self._key_refused(request)) is not None:
            return refused
        job = self._jobs.get(request.match_info["job_id"])
        if job is None:
            return _error(404, "Job not found")
        if not job.large_result or _status_now(job) != "completed":
            return _error(404, "This job has no large result")
        if job.large_result_served:
            return _error(410, "The large result was already downloaded; it is single-use")
        job.large_result_served = True
        return _document(job.result if job.result is not None else sample_result(job.job_id))

    def _submitter(self, endpoint: _Endpoint | _BatchEndpoint) -> Handler:
        async def submit(request: web.Request) -> web.StreamResponse:
            return await self._submit(request, endpoint)

        return submit

    async def _submit(
        self, request: web.Request, endpoint: _Endpoint | _BatchEndpoint
    ) -> web.StreamResponse:
        """A submission: record it, create its job, answer as Pulse does."""
        queue = self._submit_faults
        if queue:
            fault = queue.popleft()
            if not await self._delay(fault):
                return _error(503, "shutting down")
            if not fault.answers_normally:
                return await self._play(request, fault, lambda: _error(500, "no answer"))
        if (refused := self._key_refused(request)) is not None:
            return refused
        try:
            fields, files = await _read_submission(request)
            if isinstance(endpoint, _BatchEndpoint):
                count_field, items = self._batch_items(endpoint, fields)
            else:
                endpoint.check(fields, files)
        except _BadSubmission as error:
            return _error(400, str(error))
        job_id = str(uuid.uuid4())
        is_async = (
            isinstance(endpoint, _BatchEndpoint)
            or endpoint.always_async
            or str(fields.get("async", "")).lower() in _TRUE_WORDS
        )
        self._submissions.append(
            Submission(job_id, request.path, is_async, fields, files, dict(request.headers))
        )
        if isinstance(endpoint, _BatchEndpoint):
            return self._accept_batch(job_id, endpoint, count_field, items)
        document = endpoint.document(job_id, fields)
        if not is_async:
            self.add_job(job_id, result=document)
            return web.json_response({**document, "job_id": job_id})
        plan = self._plans.popleft() if self._plans else JobPlan()
        self.add_job(
            job_id,
            statuses=list(plan.statuses or SUBMITTED_JOB_STATUSES),
            error=plan.error,
            result=plan.result if plan.result is not None else document,
            large_result=plan.large_result,
        )
        return web.json_response(
            {
                "job_id": job_id,
                **dict.fromkeys(endpoint.job_id_aliases, job_id),
                "status": "pending",
                "message": "Job accepted; poll GET /job/{job_id} for its status",
                "queuedAt": _now_iso(),
            }
        )

    def _batch_items(
        self, endpoint: _BatchEndpoint, fields: Mapping[str, Any]
    ) -> tuple[str, list[str]]:
        """The count field the answer reports and the batch's items; `_BadSubmission` if none."""
        for name in endpoint.required:
            if not isinstance(fields.get(name), dict):
                raise _BadSubmission(f"{name} is required (an object)")
        for name, count_field in endpoint.sources.items():
            value = fields.get(name)
            if value is None:
                continue
            if name == "input":
                items = _batch_input_files(value)
            elif name.startswith("batch_"):
                known = self._batch_outputs.get(value) if isinstance(value, str) else None
                if known is None:
                    raise _BadSubmission(f"{name} names no batch job")
                items = known
            else:
                items = _id_list(name, value)
            if not items:
                raise _BadSubmission(f"{name} lists nothing to process")
            return count_field, items
        raise _BadSubmission(f"one of {', '.join(endpoint.sources)} is required")

    def _accept_batch(
        self, job_id: str, endpoint: _BatchEndpoint, count_field: str, items: list[str]
    ) -> web.Response:
        outputs = [_derived_id(endpoint.item_prefix, job_id, str(n)) for n in range(len(items))]
        self._batch_outputs[job_id] = outputs
        document = {
            "results": [
                {"index": n, "input": item, "status": "completed", endpoint.item_id: output}
                for n, (item, output) in enumerate(zip(items, outputs, strict=True))
            ],
            count_field: len(items),
        }
        plan = self._plans.popleft() if self._plans else JobPlan()
        self.add_job(
            job_id,
            statuses=list(plan.statuses or BATCH_JOB_STATUSES),
            error=plan.error,
            result=plan.result if plan.result is not None else document,
            large_result=plan.large_result,
        )
        self._jobs[job_id].batch_total = len(items)
        return web.json_response(
            {"batch_job_id": job_id, "status": "processing", count_field: len(items)}
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


def _status_now(job: _Job) -> str:
    """The status the job was last reported in, or the one its first poll will answer."""
    return job.last_status if job.last_status is not None else job.statuses[0]


def batch_progress(statuses: list[str], index: int, total: int) -> dict[str, int]:
    """A batch job's `progress` at its `index`-th status: all done once completed, else a
    share of `total` that grows with each `processing` answer."""
    if statuses[index] == "completed":
        done = total
    else:
        processing = [n for n, status in enumerate(statuses) if status == "processing"]
        answered = sum(1 for n in processing if n <= index)
        done = total * answered // (len(processing) + 1)
    return {"total": total, "completed": done, "failed": 0}


def _derived_id(prefix: str, *parts: str) -> str:
    """A stable id for something the emulator "produced", derived from where it came from."""
    return prefix + hashlib.sha256(":".join(parts).encode()).hexdigest()[:24]


# -- submitting endpoints: what each requires, and the result it produces ---------

_PLAN_INFO: Final = {"tier": "emulator", "pages_used": 1, "total_credits_used": 1.0}
_TABLES_OUTPUT: Final = {
    "tables": [
        {
            "table_content": (
                "<table><tr><th>Item</th><th>Amount</th></tr>"
                "<tr><td>Consulting</td><td>1,200.00</td></tr></table>"
            ),
            "citations": ["bb-1"],
            "from_chart": False,
        }
    ]
}
_PIPELINE_STEPS: Final = ("extract", "batch_extract", "schema", "split", "tables")


def _text(fields: Mapping[str, Any], name: str) -> str | None:
    """A field that must be a non-empty string when present."""
    value = fields.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise _BadSubmission(f"{name} must be a non-empty string")
    return value


def _object(fields: Mapping[str, Any], name: str) -> dict[str, Any] | None:
    """A field that must be a JSON object when present."""
    value = fields.get(name)
    if value is None:
        return None
    if not isinstance(value, dict):
        raise _BadSubmission(f"{name} must be an object")
    return value


def _id_list(name: str, value: Any) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise _BadSubmission(f"{name} must be a list of ids")
    return value


def _topics(config: Mapping[str, Any], name: str) -> list[str]:
    """The topic names of a split configuration (`split_input: [{"name": ...}]`)."""
    topics = config.get("split_input")
    if (
        not isinstance(topics, list)
        or not topics
        or not all(isinstance(t, dict) and isinstance(t.get("name"), str) for t in topics)
    ):
        raise _BadSubmission(f"{name}.split_input must list topics, each with a name")
    return [t["name"] for t in topics]


def _batch_input_files(value: Any) -> list[str]:
    """The files a `/batch/extract` input names: URLs, uploaded file names or an S3 prefix."""
    if not isinstance(value, dict):
        raise _BadSubmission("input must be an object")
    urls = value.get("file_urls") or []
    uploads = value.get("files") or []
    if not isinstance(urls, list) or not all(isinstance(u, str) for u in urls):
        raise _BadSubmission("input.file_urls must be a list of URLs")
    if not isinstance(uploads, list) or not all(
        isinstance(f, dict) and isinstance(f.get("filename"), str) for f in uploads
    ):
        raise _BadSubmission("input.files must be a list of {filename, content}")
    items = [*urls, *(f["filename"] for f in uploads)]
    prefix = value.get("s3_prefix")
    if isinstance(prefix, str) and prefix:
        items += [f"{prefix}document-{n}.pdf" for n in range(1, S3_PREFIX_FILES + 1)]
    return items


def _check_extract(fields: Mapping[str, Any], files: list[UploadedFile]) -> None:
    if not files and not (fields.get("file_url") or fields.get("fileUrl")):
        raise _BadSubmission("file or file_url is required")


def _check_split(fields: Mapping[str, Any], _files: list[UploadedFile]) -> None:
    if _text(fields, "extraction_id") is None:
        raise _BadSubmission("extraction_id is required")
    config = _object(fields, "split_config")
    if config is not None:
        _topics(config, "split_config")
    elif _text(fields, "split_config_id") is None:
        raise _BadSubmission("split_config or split_config_id is required")


def _check_schema(fields: Mapping[str, Any], _files: list[UploadedFile]) -> None:
    if _text(fields, "split_id") is not None:
        if _object(fields, "split_schema_config") is None:
            raise _BadSubmission("split_schema_config is required with split_id")
        return
    ids = fields.get("extraction_ids")
    if ids is not None:
        _id_list("extraction_ids", ids)
    elif _text(fields, "extraction_id") is None:
        raise _BadSubmission("extraction_id, extraction_ids or split_id is required")
    if _object(fields, "schema_config") is None and _text(fields, "schema_config_id") is None:
        raise _BadSubmission("schema_config or schema_config_id is required")


def _check_tables(fields: Mapping[str, Any], _files: list[UploadedFile]) -> None:
    if _text(fields, "extraction_id") is None:
        raise _BadSubmission("extraction_id is required")
    _object(fields, "tables_config")


def _check_pipeline(fields: Mapping[str, Any], files: list[UploadedFile]) -> None:
    steps = _object(fields, "steps")
    if not steps:
        raise _BadSubmission("steps is required (an object naming at least one step)")
    unknown = sorted(set(steps) - set(_PIPELINE_STEPS))
    if unknown:
        raise _BadSubmission(f"steps: unknown step {unknown[0]!r}")
    if "extract" in steps:
        _check_extract(fields, files)
    if "split" in steps:
        config = steps["split"]
        _topics(config if isinstance(config, dict) else {}, "steps.split")


def _schema_output(config: Any) -> dict[str, Any]:
    """Values for every property of the schema's `input_schema`, each cited."""
    schema = config.get("input_schema") if isinstance(config, dict) else None
    properties = schema.get("properties") if isinstance(schema, dict) else None
    names = list(properties) if isinstance(properties, dict) else []
    return {
        "values": {name: f"{name} (emulated)" for name in names},
        "citations": {name: ["bb-1"] for name in names},
    }


def _splits(topics: list[str]) -> dict[str, Any]:
    return {"splits": {topic: [n] for n, topic in enumerate(topics, start=1)}}


def _extract_document(job_id: str, _fields: Mapping[str, Any]) -> dict[str, Any]:
    return sample_result(job_id)


def _split_document(job_id: str, fields: Mapping[str, Any]) -> dict[str, Any]:
    config = fields.get("split_config")
    topics = _topics(config, "split_config") if isinstance(config, dict) else ["topic-1"]
    return {
        "split_id": _derived_id("split_", job_id),
        "split_output": _splits(topics),
        "credits_used": 1.0,
        "plan_info": _PLAN_INFO,
    }


def _schema_document(job_id: str, fields: Mapping[str, Any]) -> dict[str, Any]:
    schema_id = _derived_id("schema_", job_id)
    split_id = fields.get("split_id")
    if split_id is not None:
        topics = fields.get("split_schema_config") or {}
        return {
            "schema_id": schema_id,
            "split_id": split_id,
            "results": {
                topic: _schema_output(config)
                for topic, config in topics.items()
                if isinstance(topic, str)
            },
            "credits_used": 1.0,
            "plan_info": _PLAN_INFO,
        }
    ids = fields.get("extraction_ids") or [fields.get("extraction_id")]
    return {
        "schema_id": schema_id,
        "version": 1,
        "schema_output": _schema_output(fields.get("schema_config")),
        "extraction_ids": ids,
        "credits_used": 1.0,
        "plan_info": _PLAN_INFO,
    }


def _tables_document(job_id: str, _fields: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "tables_id": job_id,
        "tables_output": _TABLES_OUTPUT,
        "credits_used": 1.0,
        "plan_info": _PLAN_INFO,
    }


def _pipeline_document(job_id: str, fields: Mapping[str, Any]) -> dict[str, Any]:
    """Each requested step's result, in the order the steps were given."""
    steps = fields["steps"]
    extracted = {k: v for k, v in sample_result(job_id).items() if k != "plan-info"}
    results: dict[str, Any] = {}
    for step, config in steps.items():
        if step == "extract":
            results[step] = {**extracted, "plan_info": _PLAN_INFO, "latency": 0.01}
        elif step == "batch_extract":
            ids = [_derived_id("ext_", job_id, "batch", str(n)) for n in range(2)]
            results[step] = {"extraction_ids": ids, "total_files": len(ids), "latency": 0.02}
        elif step == "schema":
            results[step] = {
                "schema_id": _derived_id("schema_", job_id),
                "schema_output": _schema_output(config),
                "latency": 0.01,
            }
        elif step == "split":
            topics = _topics(config, "steps.split")
            results[step] = {
                "split_id": _derived_id("split_", job_id),
                "split_output": _splits(topics),
                "split_input": config["split_input"],
                "latency": 0.01,
            }
        else:
            results[step] = {
                "tables_id": _derived_id("tables_", job_id),
                "tables_output": _TABLES_OUTPUT,
                "latency": 0.01,
            }
    return {"status": "completed", "total_latency": 0.05, "results": results}


@dataclass(frozen=True)
class _Endpoint:
    """A submitting endpoint: what it requires, and the result its job produces."""

    path: str
    check: Callable[[Mapping[str, Any], list[UploadedFile]], None]
    document: Callable[[str, Mapping[str, Any]], dict[str, Any]]
    always_async: bool = False
    # Other names the asynchronous answer gives the job id (`/tables` polls by `tables_id`).
    job_id_aliases: tuple[str, ...] = ()


@dataclass(frozen=True)
class _BatchEndpoint:
    """A `/batch/*` endpoint: always a batch job, one result per item."""

    path: str
    # The fields naming the items (in order of preference), each with the count
    # the answer reports; a `batch_*` field names an earlier batch job's outputs.
    sources: Mapping[str, str]
    item_id: str
    item_prefix: str
    required: tuple[str, ...] = ("output",)


_ENDPOINTS: Final = (
    _Endpoint("/extract", _check_extract, _extract_document),
    _Endpoint("/extract_async", _check_extract, _extract_document, always_async=True),
    _Endpoint("/split", _check_split, _split_document),
    _Endpoint("/schema", _check_schema, _schema_document),
    _Endpoint("/tables", _check_tables, _tables_document, job_id_aliases=("tables_id",)),
    _Endpoint("/pipeline/execute", _check_pipeline, _pipeline_document),
)
_FROM_EXTRACTIONS: Final = {
    "extraction_ids": "total_extractions",
    "batch_extract_id": "total_extractions",
}
_BATCH_ENDPOINTS: Final = (
    _BatchEndpoint("/batch/extract", {"input": "total_files"}, "extraction_id", "ext_"),
    _BatchEndpoint(
        "/batch/split",
        _FROM_EXTRACTIONS,
        "split_id",
        "split_",
        required=("output", "split_config"),
    ),
    _BatchEndpoint(
        "/batch/schema",
        {**_FROM_EXTRACTIONS, "split_ids": "total_splits", "batch_split_id": "total_splits"},
        "schema_id",
        "schema_",
    ),
    _BatchEndpoint("/batch/tables", _FROM_EXTRACTIONS, "tables_id", "tables_"),
)


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
