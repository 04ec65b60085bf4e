"""The public listener: the webhook ingress and /healthz. Nothing slow runs on a request.

A webhook is judged in two stages. Its headers come first, before a byte of the
body is read, and instead of `100 Continue` when the sender asks for one: the
source address, the required headers, the encoding, the declared length, the
signature headers' form and the timestamp window. Only a request that passes
them has its body read, verified, stored and acknowledged.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web
from aiohttp.http import HttpVersion11
from aiohttp.http_exceptions import HttpProcessingError
from prometheus_client import Counter

from pulse_relay.events import ingest_record
from pulse_relay.ingress.edge import (
    IPAddress,
    IPNetwork,
    client_address,
    is_allowed,
    is_identity_encoding,
    parse_address,
    signature_headers,
    wrong_required_header,
)
from pulse_relay.ingress.signature import (
    CheckedHeaders,
    VerificationError,
    Verifier,
    is_valid_webhook_id,
)
from pulse_relay.logs import SampledLog, get_logger
from pulse_relay.metrics import Metrics
from pulse_relay.store import IngestStore, StoreUnavailableError

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


class Ingress:
    """The webhook endpoint: judge headers, read bounded body, verify, parse, store, answer."""

    def __init__(
        self,
        config: IngressConfig,
        *,
        verifier: Verifier | None,
        store: IngestStore,
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
        self._refusal_log = refusal_log or SampledLog(log)
        # Label lookups take a lock in prometheus-client: resolve each outcome once.
        self._outcome_counters: dict[str, Counter] = {}

    def client_of(self, request: web.BaseRequest) -> IPAddress | None:
        """The calling client's address: the peer, or behind a trusted proxy the one it names."""
        if not self._config.trusted_proxies:
            # No proxy is believed: the forwarding headers need not even be looked up.
            return parse_address(request.remote)
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
            self._judge_headers(request, self.client_of(request))
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
        """Answer one webhook request as docs/ingress.md says (status codes, the edge)."""
        started = time.perf_counter()
        # Parsed once: the allow-list, the stored record and the log line all need it.
        client = self.client_of(request)
        try:
            checked = self._judge_headers(request, client)
        except IngressError as error:
            return self._refuse(request, error, started, body_read=False)
        try:
            payload, http_status = await self._ingest(request, client, checked)
        except IngressError as error:
            return self._refuse(request, error, started, body_read=True)
        return self._answer(request, payload, http_status, started)

    def _judge_headers(self, request: web.Request, client: IPAddress | None) -> CheckedHeaders:
        """Refuse what the headers alone condemn, the checks that tell a stranger least first.

        Returns the signature headers as read, for the body's verification."""
        config = self._config
        if not is_allowed(client, config.allow_from):
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
        declared = request.content_length  # parsed from the header on every access
        if declared is not None and declared > limit:
            raise IngressError(413, "too_large", f"body larger than {limit} bytes")
        signing, repeated = signature_headers(request.headers, config.single_headers)
        if repeated is not None:
            raise IngressError(401, "unauthorized", f"repeated {repeated} header")
        try:
            return self._verifier.check_headers(signing)
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
        self._refusal_log.emit(
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
        if "id" not in payload:
            given_id = request.headers.get("webhook-id", request.headers.get("svix-id"))
            if given_id is not None and is_valid_webhook_id(given_id):
                payload["id"] = given_id
        self._count(str(payload["status"]))
        self._metrics.ack_seconds.observe(time.perf_counter() - started)
        return json_answer(payload, http_status)

    def _count(self, outcome: str) -> None:
        counter = self._outcome_counters.get(outcome)
        if counter is None:
            counter = self._outcome_counters[outcome] = self._metrics.webhooks.labels(outcome)
        counter.inc()

    def malformed(self, peer: str | None, reason: str) -> dict[str, Any]:
        """Count and log a request that is not valid HTTP; the document IngressProtocol
        answers it with."""
        self._count("bad_request")
        self._refusal_log.emit(
            f"400:{reason}", "warning", "malformed request", reason=reason, peer=peer
        )
        return {"status": "bad_request", "reason": reason}

    async def _ingest(
        self, request: web.Request, client: IPAddress | None, checked: CheckedHeaders
    ) -> tuple[dict[str, Any], int]:
        assert self._verifier is not None  # _judge_headers refuses otherwise
        body = await self._read_body(request)
        try:
            verified = self._verifier.verify(request.headers, body, checked)
        except VerificationError as error:
            raise IngressError(401, "unauthorized", error.reason) from None
        # Formatted once (ipaddress does it in Python): the record and the log line carry it.
        shown = _shown(client)
        record = ingest_record(
            event_id=verified.webhook_id,
            received_at=self._clock(),
            source="webhook",
            headers={k: request.headers[k] for k in STORED_HEADERS if k in request.headers},
            body=body,
            route=self._route,
            fetch_on=self._config.fetch_on,
            client_address=None if client is None else shown,
            body_digest=verified.body_digest,
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
            "client_address": shown,
        }
        if outcome == "duplicate":
            log.info("webhook duplicate", **context)
            return {"status": "duplicate", "id": verified.webhook_id}, 200
        if record.error is not None:
            log.warning("webhook invalid", reason=record.error, **context)
            return {"status": "invalid", "id": verified.webhook_id, "reason": record.error}, 200
        log.info("webhook accepted", sinks=len(record.sinks), **context)
        if record.sinks:
            # Nothing to deliver is nothing to claim: waking the dispatcher would only query.
            self._on_accepted()
        return {"status": "accepted", "id": verified.webhook_id}, 202

    async def _read_body(self, request: web.Request) -> bytes:
        """The whole body, or the refusal that says why it could not be had."""
        try:
            content = request.content
            if request.content_length is not None and content.is_eof():
                # The whole body has already arrived (the usual case): taken as it is, with
                # no deadline to arm and no coroutine to wait on.
                return content.read_nowait()
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
        chunks: list[bytes] = []
        size = 0
        async with asyncio.timeout(self._config.read_timeout_seconds):
            async for chunk in request.content.iter_chunked(_READ_CHUNK_BYTES):
                size += len(chunk)
                if size > limit:
                    raise IngressError(413, "too_large", f"body larger than {limit} bytes")
                chunks.append(chunk)
        return b"".join(chunks)


_JSON_HEADERS = {"Content-Type": "application/json; charset=utf-8"}


def json_answer(payload: dict[str, Any], http_status: int) -> web.Response:
    """A JSON answer, encoded by orjson, its content type given as a finished header
    (a few microseconds less on every request than json and aiohttp's content_type)."""
    return web.Response(body=orjson.dumps(payload), status=http_status, headers=_JSON_HEADERS)


@functools.lru_cache(maxsize=4096)
def _shown(address: IPAddress | None) -> str:
    # Formatted in Python by ipaddress; senders are few, their addresses come back.
    return "unknown" if address is None else str(address)


def build_app(ingress: Ingress, *, path: str) -> web.Application:
    """The ingress application: the webhook path and /healthz; every other path is 404.

    Readiness, metrics and the control API live on the admin listener, away from
    the port that faces the internet.
    """
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

    app.router.add_post(path, ingress.handle, expect_handler=ingress.expect)
    app.router.add_get("/healthz", healthz)
    return app
