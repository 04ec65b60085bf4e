"""HTTP side: webhook ingress, health, readiness and metrics. Nothing slow runs on a request.

A webhook is judged in two stages. Its headers come first, before a byte of the
body is read, and instead of `100 Continue` when the sender asks for one: the
source address, the required headers, the encoding, the declared length, the
signature headers' form and the timestamp window. Only a request that passes
them has its body read, verified, stored and acknowledged.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from aiohttp.http import HttpVersion11
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.streams import StreamReader
from aiohttp.web_protocol import RequestHandler, _ErrInfo
from prometheus_client import Counter

from pulse_relay.edge import (
    IPAddress,
    IPNetwork,
    SampledLog,
    client_address,
    is_allowed,
    is_identity_encoding,
    repeated_signature_header,
    wrong_required_header,
)
from pulse_relay.events import ingest_record
from pulse_relay.logs import get_logger
from pulse_relay.metrics import CONTENT_TYPE_LATEST, Metrics
from pulse_relay.signature import VerificationError, Verifier, is_valid_webhook_id
from pulse_relay.store import Store, StoreUnavailableError

log = get_logger("pulse_relay.server")

# Headers kept with each event for `show`; never the signature itself.
STORED_HEADERS = (
    "webhook-id",
    "webhook-timestamp",
    "svix-id",
    "svix-timestamp",
    "content-type",
    "user-agent",
    "x-forwarded-for",
    "forwarded",
)
_READ_CHUNK_BYTES = 64 * 1024


class IngressError(Exception):
    """A request the ingress refuses; mapped to one HTTP answer in one place."""

    def __init__(
        self, http_status: int, status: str, reason: str, *, log_level: str = "warning"
    ) -> None:
        super().__init__(reason)
        self.http_status = http_status
        self.status = status
        self.reason = reason
        self.log_level = log_level


@dataclass(frozen=True)
class IngressConfig:
    """What the ingress needs to know about routing, limits and who may call."""

    max_body_bytes: int
    read_timeout_seconds: float
    fetch_on: frozenset[str]
    # Why the ingress is closed (polling-only mode), or None when it takes webhooks.
    closed_reason: str | None = None
    allow_from: tuple[IPNetwork, ...] = ()
    trusted_proxies: tuple[IPNetwork, ...] = ()
    # Lower-case header name → SHA-256 of the value it must carry.
    required_headers: Mapping[str, bytes] = field(default_factory=dict)
    # Headers besides webhook-*/svix-* that may appear only once (the hex scheme's).
    single_headers: tuple[str, ...] = ()


SinkRouter = Callable[[str], Sequence[str]]
ReadinessCheck = Callable[[], Awaitable[list[str]]]


class Ingress:
    """The webhook endpoint: judge headers, read bounded body, verify, parse, store, answer."""

    def __init__(
        self,
        config: IngressConfig,
        *,
        verifier: Verifier | None,
        store: Store,
        route: SinkRouter,
        metrics: Metrics,
        on_accepted: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = time.time,
        refusal_log: SampledLog | None = None,
    ) -> None:
        self._config = config
        self._verifier = verifier
        self._store = store
        self._route = route
        self._metrics = metrics
        self._on_accepted = on_accepted
        self._clock = clock
        self.refusal_log = refusal_log or SampledLog(log)
        # Label lookups take a lock in prometheus-client: resolve each outcome once.
        self._outcome_counters: dict[str, Counter] = {}

    @property
    def read_timeout_seconds(self) -> float:
        """How long a client may take to send a whole request (headers, then body)."""
        return self._config.read_timeout_seconds

    def client_of(self, request: web.BaseRequest) -> IPAddress | None:
        """The calling client's address: the peer, or behind a trusted proxy the one it names."""
        return client_address(
            request.remote,
            forwarded=request.headers.getall("Forwarded", []),
            x_forwarded_for=request.headers.getall("X-Forwarded-For", []),
            trusted_proxies=self._config.trusted_proxies,
        )

    async def expect(self, request: web.Request) -> web.StreamResponse | None:
        """Answer `Expect: 100-continue`: a refusal instead of `100 Continue` when due."""
        started = time.perf_counter()
        try:
            self._judge_headers(request)
        except IngressError as error:
            return self._refuse(request, error, started, body_read=False)
        if request.version == HttpVersion11:
            if request.headers.get("Expect", "").lower() != "100-continue":
                unknown = IngressError(417, "expectation_failed", "only 100-continue is supported")
                return self._refuse(request, unknown, started, body_read=False)
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            # The interim answer is not the response: what is written next starts afresh.
            request.writer.output_size = 0
        return None

    async def handle(self, request: web.Request) -> web.Response:
        """Answer one webhook request as SPEC §2 and §15 say."""
        started = time.perf_counter()
        try:
            self._judge_headers(request)
        except IngressError as error:
            return self._refuse(request, error, started, body_read=False)
        try:
            payload, http_status = await self._ingest(request)
        except IngressError as error:
            return self._refuse(request, error, started, body_read=True)
        return self._answer(request, payload, http_status, started)

    def _judge_headers(self, request: web.Request) -> None:
        """Refuse what the headers alone condemn, the checks that tell a stranger least first."""
        config = self._config
        if not is_allowed(self.client_of(request), config.allow_from):
            raise IngressError(403, "forbidden", "source address not allowed")
        wrong = wrong_required_header(request.headers, config.required_headers)
        if wrong is not None:
            raise IngressError(401, "unauthorized", f"missing or wrong {wrong} header")
        if config.closed_reason is not None or self._verifier is None:
            raise IngressError(503, "unavailable", config.closed_reason or "ingress closed")
        if not is_identity_encoding(request.headers):
            reason = "Content-Encoding is not supported: send the body uncompressed"
            raise IngressError(415, "unsupported_encoding", reason)
        limit = config.max_body_bytes
        if request.content_length is not None and request.content_length > limit:
            raise IngressError(413, "too_large", f"body larger than {limit} bytes")
        repeated = repeated_signature_header(request.headers, config.single_headers)
        if repeated is not None:
            raise IngressError(401, "unauthorized", f"repeated {repeated} header")
        try:
            self._verifier.check_headers(request.headers)
        except VerificationError as error:
            raise IngressError(401, "unauthorized", error.reason) from None

    def _refuse(
        self, request: web.Request, error: IngressError, started: float, *, body_read: bool
    ) -> web.Response:
        payload: dict[str, Any] = {"status": error.status, "reason": error.reason}
        if error.http_status == 403:
            # A stranger learns nothing but the refusal.
            payload = {"status": error.status}
        response = self._answer(request, payload, error.http_status, started)
        self.refusal_log.emit(
            f"{error.http_status}:{error.reason}",
            error.log_level,
            "webhook rejected",
            http_status=error.http_status,
            reason=error.reason,
            client_address=_shown(self.client_of(request)),
            webhook_id=payload.get("id"),
        )
        if not body_read:
            # The body was never wanted: the connection is not reused for the next request.
            response.force_close()
        return response

    def _answer(
        self, request: web.Request, payload: dict[str, Any], http_status: int, started: float
    ) -> web.Response:
        given_id = request.headers.get("webhook-id", request.headers.get("svix-id"))
        if given_id is not None and is_valid_webhook_id(given_id) and "id" not in payload:
            payload["id"] = given_id
        self._count(str(payload["status"]))
        self._metrics.ack_seconds.observe(time.perf_counter() - started)
        return web.json_response(payload, status=http_status)

    def _count(self, outcome: str) -> None:
        counter = self._outcome_counters.get(outcome)
        if counter is None:
            counter = self._outcome_counters[outcome] = self._metrics.webhooks.labels(outcome)
        counter.inc()

    def malformed(self, peer: str | None, reason: str) -> None:
        """Count and log a request that is not valid HTTP (IngressProtocol answers it)."""
        self._count("bad_request")
        self.refusal_log.emit(
            f"400:{reason}", "warning", "malformed request", reason=reason, peer=peer
        )

    async def _ingest(self, request: web.Request) -> tuple[dict[str, Any], int]:
        assert self._verifier is not None  # _judge_headers refuses otherwise
        body = await self._read_body(request)
        try:
            verified = self._verifier.verify(request.headers, body)
        except VerificationError as error:
            raise IngressError(401, "unauthorized", error.reason) from None
        client = self.client_of(request)
        record = ingest_record(
            event_id=verified.webhook_id,
            received_at=self._clock(),
            source="webhook",
            headers={k: request.headers[k] for k in STORED_HEADERS if k in request.headers},
            body=body,
            route=self._route,
            fetch_on=self._config.fetch_on,
            client_address=None if client is None else str(client),
        )
        try:
            outcome = await self._store.ingest(record)
        except StoreUnavailableError as error:
            log.error("store unavailable", webhook_id=verified.webhook_id, reason=error.reason)
            raise IngressError(503, "unavailable", "store unavailable, retry later") from None
        context = {
            "webhook_id": record.event_id,
            "type": record.event_type,
            "job_id": record.job_id,
            "client_address": _shown(client),
        }
        if outcome == "duplicate":
            log.info("webhook duplicate", **context)
            return {"status": "duplicate", "id": verified.webhook_id}, 200
        if record.error is not None:
            log.warning("webhook invalid", reason=record.error, **context)
            return {"status": "invalid", "id": verified.webhook_id, "reason": record.error}, 200
        log.info("webhook accepted", sinks=len(record.sinks), **context)
        self._on_accepted()
        return {"status": "accepted", "id": verified.webhook_id}, 202

    async def _read_body(self, request: web.Request) -> bytes:
        """The whole body, or the refusal that says why it could not be had."""
        try:
            return await self._read_bounded_body(request)
        except TimeoutError:
            raise IngressError(408, "timeout", "request body not received in time") from None
        except ConnectionError:
            raise IngressError(
                400, "disconnected", "client disconnected mid-body", log_level="info"
            ) from None
        except (HttpProcessingError, web.RequestPayloadError):
            raise IngressError(400, "bad_request", "malformed request body framing") from None

    async def _read_bounded_body(self, request: web.Request) -> bytes:
        limit = self._config.max_body_bytes
        if request.content_length is not None and request.content.is_eof():
            # The whole body has already arrived (the usual case): no deadline to arm.
            return await request.content.read()
        chunks: list[bytes] = []
        size = 0
        async with asyncio.timeout(self._config.read_timeout_seconds):
            async for chunk in request.content.iter_chunked(_READ_CHUNK_BYTES):
                size += len(chunk)
                if size > limit:
                    raise IngressError(413, "too_large", f"body larger than {limit} bytes")
                chunks.append(chunk)
        return b"".join(chunks)


def _shown(address: IPAddress | None) -> str:
    return "unknown" if address is None else str(address)


MalformedHook = Callable[[str | None, str], None]


class IngressProtocol(RequestHandler):
    """aiohttp's connection handler, with HTTP framing errors answered as the ingress answers.

    aiohttp answers a request it cannot parse with a plain-text 400 and logs a
    traceback at error level; here it is a JSON 400, counted, logged at most a
    few times a second. And when the framing breaks *inside* a body being read
    (a malformed chunk), aiohttp's C parser drops the body's stream without
    telling the handler reading it, which would then wait for its read timeout:
    the stream is failed here at once.
    """

    __slots__ = ("_on_malformed", "_open_body")

    def __init__(self, manager: web.Server, *, on_malformed: MalformedHook, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._on_malformed = on_malformed
        self._open_body: StreamReader | None = None

    def data_received(self, data: bytes) -> None:
        """Parse as aiohttp does; fail the body in progress if its framing broke."""
        queued = len(self._messages)
        super().data_received(data)
        for message, payload in list(self._messages)[queued:]:
            if not isinstance(message, _ErrInfo):
                self._open_body = payload
                continue
            body = self._open_body
            if body is not None and not body.is_eof():
                body.set_exception(message.exc)
                # At EOF, aiohttp does not wait to read the rest after the answer.
                body.feed_eof()

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """A JSON 400 for a request that is not valid HTTP; anything else as aiohttp does."""
        if not isinstance(exc, HttpProcessingError) or request.writer.output_size > 0:
            return super().handle_error(request, status, exc, message)
        self._on_malformed(request.remote, "malformed HTTP request")
        response = web.json_response(
            {"status": "bad_request", "reason": "malformed HTTP request"}, status=status
        )
        response.force_close()
        return response


class IngressServer(web.Server):
    """aiohttp's server, building an IngressProtocol for each connection."""

    def __init__(
        self,
        handler: Any,
        *,
        request_factory: Any,
        on_malformed: MalformedHook,
        protocol_options: dict[str, Any],
    ) -> None:
        super().__init__(handler, request_factory=request_factory, **protocol_options)
        self._protocol_options = protocol_options
        self._on_malformed = on_malformed
        self._event_loop = asyncio.get_running_loop()

    def __call__(self) -> RequestHandler:
        return IngressProtocol(
            self, on_malformed=self._on_malformed, loop=self._event_loop, **self._protocol_options
        )


class IngressRunner(web.AppRunner):
    """An AppRunner whose server answers malformed HTTP as the ingress does."""

    def __init__(self, app: web.Application, ingress: Ingress, *, shutdown_timeout: float) -> None:
        super().__init__(app, handle_signals=False, shutdown_timeout=shutdown_timeout)
        self._ingress = ingress

    async def _make_server(self) -> web.Server:
        plain = await super()._make_server()
        return IngressServer(
            plain.request_handler,
            request_factory=plain.request_factory,
            on_malformed=self._ingress.malformed,
            protocol_options={
                "access_log": None,
                # The relay reads the body as sent; a compressed one is refused (415).
                "auto_decompress": False,
                # See build_app: this timer is also the deadline for request headers.
                "keepalive_timeout": self._ingress.read_timeout_seconds,
            },
        )


def build_app(
    ingress: Ingress,
    *,
    path: str,
    metrics: Metrics,
    readiness: ReadinessCheck,
    refresh_metrics: Callable[[], Awaitable[None]] | None = None,
) -> web.Application:
    """The aiohttp application with every route the relay serves."""
    # aiohttp has no deadline for reading request headers; its keep-alive timer is the
    # one that covers that gap. It is armed when a connection opens and again after
    # each answer, and when it fires on a connection whose next request's headers are
    # still incomplete, the connection is closed. Setting it to the read timeout cuts
    # off clients that trickle their headers byte by byte (the body has its own
    # deadline in Ingress._read_body); idle keep-alive connections close after that
    # long too, which senders handle by reconnecting. IngressRunner sets it.
    app = web.Application(client_max_size=1024)

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(_: web.Request) -> web.Response:
        problems = await readiness()
        if problems:
            return web.json_response({"status": "unavailable", "reasons": problems}, status=503)
        return web.json_response({"status": "ready"})

    async def metrics_view(_: web.Request) -> web.Response:
        if refresh_metrics is not None:
            await refresh_metrics()
        response = web.Response(body=metrics.render())
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response

    app.router.add_post(path, ingress.handle, expect_handler=ingress.expect)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_view)
    return app
