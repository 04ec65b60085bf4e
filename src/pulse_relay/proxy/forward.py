"""The Pulse API pass-through on the admin listener, with auto-watch (docs/api.md, `/pulse/`).

`/pulse/{tail}` is forwarded to `{pulse.base_url}/{tail}`: same method, path,
query and headers (hop-by-hop ones, Host, the admin listener's credentials and
the relay's own headers dropped), the body streamed both ways, so a 100 MB upload
is never held. The caller's `x-api-key` goes through as it is; the relay never
adds its own.

The pass-through is kept apart from the rest of the relay (README, *Security
model*): its own connection pool, at most `proxy.concurrency` requests at once
(one more is answered 503 at once), an upstream request cancelled when its caller
leaves, no cookie or CORS grant from upstream, and every answer sandboxed.

A 2xx JSON answer to a POST, small enough to read (`INSPECTED_ANSWER_MAX_BYTES`),
is read before it is passed on: when it names a `job_id` or `batch_job_id`, the watch
is recorded first, with the request's audit metadata, so the poller delivers
the job like a webhook would. Every other answer streams straight through.

Which headers cross is decided in headers.py, what an answer names in answer.py.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import aiohttp
from aiohttp import web
from yarl import URL

from pulse_relay.admin.context import AdminContext
from pulse_relay.admin.errors import json_error
from pulse_relay.events import format_timestamp
from pulse_relay.logs import get_logger
from pulse_relay.metrics import Metrics
from pulse_relay.proxy.answer import (
    INSPECTED_ANSWER_MAX_BYTES,
    decode_json,
    is_inspectable,
    job_ids_in,
)
from pulse_relay.proxy.autowatch import WatchRecorder
from pulse_relay.proxy.capture import (
    MetadataHeaderError,
    RequestCapture,
    metadata_from_headers,
)
from pulse_relay.proxy.headers import SANDBOX_HEADERS, answer_headers, forward_headers

log = get_logger("pulse_relay.proxy")

PREFIX: Final = "/pulse"
WATCH_HEADER: Final = "X-Pulse-Relay-Watch"
# Jobs are created by POSTs. `GET /job/{id}` answers carry a job id too: an app that
# polls through the relay must not re-watch its job (that would replace its metadata).
WATCHED_METHODS: Final = frozenset({"POST"})
CHUNK_BYTES: Final = 64 * 1024
# OPTIONS is answered here (a CORS preflight is never forwarded, nothing is granted).
ALLOWED_METHODS: Final = "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"
# How often a request waiting on upstream checks that its caller is still connected:
# aiohttp tells a handler only by cancelling it, which the admin listener does not turn
# on (it would cut API writes short).
CALLER_CHECK_SECONDS: Final = 0.25
BUSY_RETRY_AFTER_SECONDS: Final = 1
# Only what the caller sent is forwarded: aiohttp must not add defaults of its own.
_NO_AUTO_HEADERS: Final = frozenset({"User-Agent", "Accept", "Accept-Encoding", "Content-Type"})

OUTCOMES: Final = (
    "forwarded",
    "options",
    "busy",
    "watched",
    "watch_failed",
    "bad_request",
    "too_large",
    "upstream_unreachable",
    "upstream_timeout",
    "upstream_cut_off",
    "client_gone",
)


@dataclass(frozen=True)
class ProxyConfig:
    """The `[proxy]` settings and where requests go."""

    base_url: str
    max_body_bytes: int
    timeout_seconds: float
    concurrency: int


class ProxyError(Exception):
    """A request the pass-through answers itself; `error` is also the metric's outcome."""

    def __init__(
        self, status: int, error: str, detail: str, *, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(f"{error}: {detail}")
        self.status = status
        self.error = error
        self.detail = detail
        self.headers = dict(headers or {})


async def sandbox_answer(request: web.Request, response: web.StreamResponse) -> None:
    """Mark every `/pulse/` answer, the relay's own refusals included, as inert."""
    if not (request.path + "/").startswith(PREFIX + "/"):
        return
    response.headers["X-Content-Type-Options"] = SANDBOX_HEADERS["X-Content-Type-Options"]
    policy = SANDBOX_HEADERS["Content-Security-Policy"]
    # Added beside any upstream policy: every policy present is enforced.
    if policy not in response.headers.getall("Content-Security-Policy", []):
        response.headers.add("Content-Security-Policy", policy)


class _Upload:
    """The request body as chunks for the upstream request: counted, limited and captured."""

    def __init__(
        self, request: web.Request, max_body_bytes: int, on_progress: Callable[[], None]
    ) -> None:
        self._request = request
        self._max_body_bytes = max_body_bytes
        self._on_progress = on_progress
        self.capture = RequestCapture(
            request.headers.get("Content-Type"), request.headers.get("Content-Encoding")
        )
        self.size_bytes = 0
        self.too_large = False
        self.client_gone = False

    async def chunks(self) -> AsyncIterator[bytes]:
        """Yield the body as it arrives; stop (failing the upstream request) past the limit."""
        content = self._request.content
        try:
            while chunk := await content.read(CHUNK_BYTES):
                self.size_bytes += len(chunk)
                if self.size_bytes > self._max_body_bytes:
                    self.too_large = True
                    raise _UploadStopped
                self.capture.feed(chunk)
                self._on_progress()
                yield chunk
        except (OSError, aiohttp.ClientPayloadError):
            self.client_gone = True
            raise
        self.capture.finish()

    def failure(self) -> ProxyError | None:
        """Why the upload, not the upstream, ended the exchange (if it did)."""
        if self.too_large:
            return _too_large(self._max_body_bytes)
        if self.client_gone:
            return ProxyError(400, "client_gone", "the client left before its body was sent")
        return None


class _UploadStopped(Exception):
    """Raised inside the upload to abort the upstream request."""


def _too_large(max_body_bytes: int) -> ProxyError:
    return ProxyError(
        413, "too_large", f"the body is over proxy.max_body_bytes ({max_body_bytes} bytes)"
    )


@dataclass
class _Exchange:
    """One proxied request in flight."""

    request: web.Request
    upload: _Upload
    metadata: dict[str, str]
    started_at: float
    response: web.StreamResponse | None = None


class PulseProxy:
    """Forwards `/pulse/...` to the Pulse API and records a watch for every job it sees.

    Its HTTP session is its own (opened at the app's start-up, closed at its clean-up):
    requests hanging upstream can hold only the pass-through's connections, never
    those of the relay's job fetches, polls and HTTP sinks.
    """

    def __init__(
        self,
        config: ProxyConfig,
        *,
        recorder: WatchRecorder,
        metrics: Metrics,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._config = config
        self._session: aiohttp.ClientSession | None = None
        self._in_flight = 0
        self._recorder = recorder
        self._metrics = metrics
        self._clock = clock
        # Connecting is bounded here; the rest by the idle deadline in `_forward`.
        self._timeout = aiohttp.ClientTimeout(total=None, sock_connect=config.timeout_seconds)
        for outcome in OUTCOMES:
            metrics.proxy_requests.labels(outcome=outcome)

    def install(self, app: web.Application) -> None:
        """Route `/pulse/...` here and tie the session to the app's start-up and clean-up."""
        app.router.add_route("*", PREFIX + "/{tail:.*}", self.handle)
        app.on_response_prepare.append(sandbox_answer)

        async def on_startup(_: web.Application) -> None:
            self._session = aiohttp.ClientSession(
                # One connection per request in flight; nothing waits for a connection.
                connector=aiohttp.TCPConnector(limit=self._config.concurrency),
                # A cookie one caller's upstream sets must never be sent for another.
                cookie_jar=aiohttp.DummyCookieJar(),
            )
            self._recorder.start()

        async def on_cleanup(_: web.Application) -> None:
            await self._recorder.stop()
            session, self._session = self._session, None
            if session is not None:
                await session.close()

        app.on_startup.append(on_startup)
        app.on_cleanup.append(on_cleanup)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """Forward one request and pass its answer back."""
        if request.method == "OPTIONS":
            # A CORS preflight included: answered here, granting nothing.
            self._metrics.proxy_requests.labels(outcome="options").inc()
            return web.Response(status=204, headers={"Allow": ALLOWED_METHODS})
        try:
            response, outcome = await self._forward_in_a_slot(request)
        except ProxyError as error:
            self._metrics.proxy_requests.labels(outcome=error.error).inc()
            log.info(
                "proxied request answered by the relay",
                path=request.path,
                status=error.status,
                outcome=error.error,
                detail=error.detail,
            )
            refusal = json_error(error.status, error.error, error.detail)
            refusal.headers.update(error.headers)
            return refusal
        self._metrics.proxy_requests.labels(outcome=outcome).inc()
        return response

    async def _forward_in_a_slot(self, request: web.Request) -> tuple[web.StreamResponse, str]:
        """Forward unless `proxy.concurrency` requests are in flight already (then: busy)."""
        concurrency = self._config.concurrency
        if self._in_flight >= concurrency:
            # Answered at once, not queued: a queue would only move the wait to the caller.
            raise ProxyError(
                503,
                "busy",
                f"proxy.concurrency ({concurrency}) requests to the Pulse API are in flight; "
                f"retry in {BUSY_RETRY_AFTER_SECONDS} s",
                headers={"Retry-After": str(BUSY_RETRY_AFTER_SECONDS)},
            )
        self._in_flight += 1
        handler = asyncio.current_task()
        assert handler is not None
        left = asyncio.Event()
        watcher = asyncio.create_task(_cancel_when_caller_leaves(request, handler, left))
        try:
            return await self._forward(request)
        except asyncio.CancelledError:
            if left.is_set():
                self._metrics.proxy_requests.labels(outcome="client_gone").inc()
                log.info("proxied request cancelled: its caller left", path=request.path)
            raise
        finally:
            watcher.cancel()
            self._in_flight -= 1

    async def _forward(self, request: web.Request) -> tuple[web.StreamResponse, str]:
        try:
            metadata = metadata_from_headers(request.headers)
        except MetadataHeaderError as error:
            raise ProxyError(400, "bad_request", str(error)) from None
        if not request.raw_path.startswith(PREFIX + "/"):
            raise ProxyError(400, "bad_request", f"path: must start with {PREFIX}/ as sent")
        length = request.content_length
        if length is not None and length > self._config.max_body_bytes:
            raise _too_large(self._config.max_body_bytes)
        timeout_seconds = self._config.timeout_seconds
        loop = asyncio.get_running_loop()
        exchange: _Exchange | None = None
        try:
            async with asyncio.timeout(timeout_seconds) as deadline:

                def progress() -> None:
                    deadline.reschedule(loop.time() + timeout_seconds)

                upload = _Upload(request, self._config.max_body_bytes, progress)
                exchange = _Exchange(request, upload, metadata, self._clock())
                return await self._exchange(exchange, progress)
        except TimeoutError:
            timed_out = ProxyError(
                504,
                "upstream_timeout",
                f"the Pulse API sent nothing for proxy.timeout_seconds ({timeout_seconds:g} s)",
            )
            raise self._failed(exchange, timed_out) from None
        except (aiohttp.ClientError, OSError) as failure:
            unreachable = ProxyError(
                502, "upstream_unreachable", f"the Pulse API could not be reached: {failure}"
            )
            raise self._failed(exchange, unreachable) from None

    def _failed(self, exchange: _Exchange | None, error: ProxyError) -> BaseException:
        """What to raise when the exchange broke: the upload's fault first, else `error`.

        Once the answer has started, no error can be sent any more: the client's
        connection is cut so that it cannot take a truncated body for a whole one.
        """
        if exchange is None:
            return error
        failure = exchange.upload.failure() or error
        if exchange.response is None or not exchange.response.prepared:
            return failure
        outcome = "client_gone" if exchange.upload.client_gone else "upstream_cut_off"
        self._metrics.proxy_requests.labels(outcome=outcome).inc()
        log.warning("proxied answer cut off", path=exchange.request.path, reason=failure.detail)
        transport = exchange.request.transport
        if transport is not None:
            transport.abort()
        # aiohttp takes a cancelled handler for a vanished client: nothing more is written.
        return asyncio.CancelledError()

    async def _exchange(
        self, exchange: _Exchange, progress: Callable[[], None]
    ) -> tuple[web.StreamResponse, str]:
        request = exchange.request
        if self._session is None:
            raise RuntimeError("the pass-through is used before its app started")
        upstream = await self._session.request(
            request.method,
            URL(self._config.base_url + request.raw_path[len(PREFIX) :], encoded=True),
            headers=forward_headers(request.headers),
            data=exchange.upload.chunks() if request.body_exists else None,
            allow_redirects=False,
            skip_auto_headers=_NO_AUTO_HEADERS,
            # The answer goes back byte for byte, in the coding the upstream chose.
            auto_decompress=False,
            timeout=self._timeout,
        )
        async with upstream:
            progress()
            prefix = b""
            if request.method in WATCHED_METHODS and is_inspectable(upstream):
                prefix, is_whole = await _read_up_to(upstream, INSPECTED_ANSWER_MAX_BYTES, progress)
                if is_whole:
                    return await self._answer_inspected(exchange, upstream, prefix)
            response = await self._stream(exchange, upstream, prefix, progress)
            return response, "forwarded"

    async def _answer_inspected(
        self, exchange: _Exchange, upstream: aiohttp.ClientResponse, body: bytes
    ) -> tuple[web.StreamResponse, str]:
        """Record the watch the answer calls for, then pass the answer on unchanged."""
        headers = answer_headers(upstream.headers)
        outcome = "forwarded"
        job_ids = job_ids_in(decode_json(body, upstream.headers.get("Content-Encoding")))
        if job_ids:
            # Shielded: the job exists at Pulse now, so its watch is recorded even if the
            # caller leaves meanwhile.
            recorded = await asyncio.shield(
                self._recorder.record(job_ids, self._watch_metadata(exchange))
            )
            outcome = "watched" if recorded else "watch_failed"
            if not recorded:
                headers[WATCH_HEADER] = "failed"
            log.info("submitted job watched", job_ids=job_ids, recorded=recorded)
        response = web.Response(
            status=upstream.status, reason=upstream.reason, body=body, headers=headers
        )
        return response, outcome

    def _watch_metadata(self, exchange: _Exchange) -> dict[str, Any]:
        """The audit trail: the metadata headers, then what the request itself said."""
        request = exchange.request
        described: dict[str, Any] = {
            "method": request.method,
            "path": request.path[len(PREFIX) :],
            "submitted_at": format_timestamp(exchange.started_at),
        }
        if request.query_string:
            described["query"] = request.query_string
        described.update(exchange.upload.capture.document())
        return {**exchange.metadata, "request": described}

    async def _stream(
        self,
        exchange: _Exchange,
        upstream: aiohttp.ClientResponse,
        prefix: bytes,
        progress: Callable[[], None],
    ) -> web.StreamResponse:
        """Pass the answer on as it arrives, never holding more than a chunk."""
        response = web.StreamResponse(
            status=upstream.status, reason=upstream.reason, headers=answer_headers(upstream.headers)
        )
        exchange.response = response
        await response.prepare(exchange.request)
        if prefix:
            await response.write(prefix)
        while chunk := await upstream.content.read(CHUNK_BYTES):
            progress()
            await response.write(chunk)
        await response.write_eof()
        return response


async def _cancel_when_caller_leaves(
    request: web.Request, handler: asyncio.Task[Any], left: asyncio.Event
) -> None:
    """Cancel `handler` (and so its upstream request) once the caller's connection is gone."""
    while True:
        await asyncio.sleep(CALLER_CHECK_SECONDS)
        transport = request.transport
        if transport is None or transport.is_closing():
            left.set()
            handler.cancel()
            return


async def _read_up_to(
    upstream: aiohttp.ClientResponse, limit_bytes: int, progress: Callable[[], None]
) -> tuple[bytes, bool]:
    """Up to just over `limit_bytes` of the answer, and whether that is all of it."""
    buffer = bytearray()
    while chunk := await upstream.content.read(CHUNK_BYTES):
        progress()
        buffer += chunk
        if len(buffer) > limit_bytes:
            return bytes(buffer), False
    return bytes(buffer), True


def setup_proxy(app: web.Application, ctx: AdminContext) -> None:
    """Serve `/pulse/...` on the admin listener when `proxy.enabled` (the default)."""
    settings = ctx.settings
    if not settings.proxy.enabled:
        return
    recorder = WatchRecorder(
        ctx.store,
        metrics=ctx.metrics,
        # Read at each watch: the interval is the poll section's, whatever it is then.
        interval_seconds=lambda: ctx.settings.poll.interval_seconds,
        on_recorded=ctx.wake_poller,
    )
    config = ProxyConfig(
        base_url=settings.pulse.base_url,
        max_body_bytes=settings.proxy.max_body_bytes,
        timeout_seconds=settings.proxy.timeout_seconds,
        concurrency=settings.proxy.concurrency,
    )
    proxy = PulseProxy(config, recorder=recorder, metrics=ctx.metrics, clock=ctx.clock)
    proxy.install(app)
