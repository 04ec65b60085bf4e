"""The public listener: the webhook ingress and /healthz. Nothing slow runs on a request."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from prometheus_client import Counter

from pulse_relay.events import ingest_record
from pulse_relay.logs import get_logger
from pulse_relay.metrics import Metrics
from pulse_relay.signature import VerificationError, Verifier, is_valid_webhook_id
from pulse_relay.store import StoreBackend, StoreUnavailableError

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
)
_READ_CHUNK_BYTES = 64 * 1024


class IngressError(Exception):
    """A request the ingress refuses; mapped to one HTTP answer in one place."""

    def __init__(self, http_status: int, status: str, reason: str) -> None:
        super().__init__(reason)
        self.http_status = http_status
        self.status = status
        self.reason = reason


@dataclass(frozen=True)
class IngressConfig:
    """What the ingress needs to know about routing and limits."""

    max_body_bytes: int
    read_timeout_seconds: float
    fetch_on: frozenset[str]
    # Why the ingress is closed (polling-only mode), or None when it takes webhooks.
    closed_reason: str | None = None


SinkRouter = Callable[[str], Sequence[str]]


class Ingress:
    """The webhook endpoint: read bounded body, verify, parse, store, answer."""

    def __init__(
        self,
        config: IngressConfig,
        *,
        verifier: Verifier | None,
        store: StoreBackend,
        route: SinkRouter,
        metrics: Metrics,
        on_accepted: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._config = config
        self._verifier = verifier
        self._store = store
        self._route = route
        self._metrics = metrics
        self._on_accepted = on_accepted
        self._clock = clock
        # Label lookups take a lock in prometheus-client: resolve each outcome once.
        self._outcome_counters: dict[str, Counter] = {}

    @property
    def read_timeout_seconds(self) -> float:
        """How long a client may take to send a whole request (headers, then body)."""
        return self._config.read_timeout_seconds

    async def handle(self, request: web.Request) -> web.Response:
        """Answer one webhook request as SPEC §2's table says."""
        started = time.perf_counter()
        given_id = request.headers.get("webhook-id", request.headers.get("svix-id"))
        shown_id = given_id if given_id is not None and is_valid_webhook_id(given_id) else None
        try:
            payload, http_status = await self._ingest(request)
        except IngressError as error:
            payload = {"status": error.status, "reason": error.reason}
            http_status = error.http_status
        if shown_id is not None and "id" not in payload:
            payload["id"] = shown_id
        outcome = str(payload["status"])
        counter = self._outcome_counters.get(outcome)
        if counter is None:
            counter = self._outcome_counters[outcome] = self._metrics.webhooks.labels(outcome)
        counter.inc()
        self._metrics.ack_seconds.observe(time.perf_counter() - started)
        return web.json_response(payload, status=http_status)

    async def _ingest(self, request: web.Request) -> tuple[dict[str, Any], int]:
        if self._config.closed_reason is not None or self._verifier is None:
            raise IngressError(503, "unavailable", self._config.closed_reason or "ingress closed")
        body = await self._read_body(request)
        try:
            verified = self._verifier.verify(request.headers, body)
        except VerificationError as error:
            log.warning("webhook rejected", reason=error.reason, remote=request.remote)
            raise IngressError(401, "unauthorized", error.reason) from None
        record = ingest_record(
            event_id=verified.webhook_id,
            received_at=self._clock(),
            source="webhook",
            headers={k: request.headers[k] for k in STORED_HEADERS if k in request.headers},
            body=body,
            route=self._route,
            fetch_on=self._config.fetch_on,
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
        limit = self._config.max_body_bytes
        too_large = IngressError(413, "too_large", f"body larger than {limit} bytes")
        if request.content_length is not None and request.content_length > limit:
            raise too_large
        if request.content_length is not None and request.content.is_eof():
            # The whole body has already arrived (the usual case): no deadline to arm.
            return await request.content.read()
        chunks: list[bytes] = []
        size = 0
        try:
            async with asyncio.timeout(self._config.read_timeout_seconds):
                async for chunk in request.content.iter_chunked(_READ_CHUNK_BYTES):
                    size += len(chunk)
                    if size > limit:
                        raise too_large
                    chunks.append(chunk)
        except TimeoutError:
            raise IngressError(408, "timeout", "request body not received in time") from None
        return b"".join(chunks)


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
    # long too, which senders handle by reconnecting.
    app = web.Application(
        client_max_size=1024,
        handler_args={"keepalive_timeout": ingress.read_timeout_seconds},
    )

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    app.router.add_post(path, ingress.handle)
    app.router.add_get("/healthz", healthz)
    return app
