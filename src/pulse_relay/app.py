"""The composition root: builds every component from settings and runs them in order.

Start-up: store → sinks and Pulse client → dispatcher and poller → listener.
Shutdown (SIGTERM/SIGINT): stop accepting → finish acks in flight → give running
deliveries the grace period → release leases → close the store.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable, Sequence

import aiohttp
from aiohttp import web

from pulse_relay.config import Settings
from pulse_relay.dispatcher import Dispatcher, DispatcherLimits, SinkRuntime
from pulse_relay.logs import get_logger
from pulse_relay.metrics import Metrics
from pulse_relay.pulse import PulseClient
from pulse_relay.server import Ingress, IngressConfig, build_app
from pulse_relay.signature import HexHmacVerifier, NoneVerifier, StandardVerifier, Verifier
from pulse_relay.sinks import build_sink, retry_policy_for
from pulse_relay.sinks.base import matches_any
from pulse_relay.store import Store, StoreUnavailableError

log = get_logger("pulse_relay.app")

POLLING_ONLY_REASON = "no webhook secret configured: polling-only mode, ingress closed"


def build_verifier(settings: Settings) -> Verifier | None:
    """The verifier the settings ask for; None means polling-only mode (no secret)."""
    verify = settings.verify
    secrets = [secret.get_secret_value() for secret in verify.secrets]
    if verify.scheme == "none":
        return NoneVerifier()
    if not secrets:
        return None
    if verify.scheme == "hmac-sha256-hex":
        return HexHmacVerifier(
            secrets, signature_header=verify.signature_header, id_header=verify.id_header
        )
    return StandardVerifier(secrets, tolerance_seconds=verify.tolerance_seconds)


def build_router(settings: Settings) -> Callable[[str], Sequence[str]]:
    """Map an event type to the names of the enabled sinks whose filters match it."""
    sinks = [(sink.name, list(sink.events)) for sink in settings.sinks if sink.enabled]

    def route(event_type: str) -> Sequence[str]:
        return [name for name, patterns in sinks if matches_any(patterns, event_type)]

    return route


def open_store(settings: Settings) -> Store:
    """A Store configured from settings (not yet opened)."""
    return Store(
        settings.store.path,
        synchronous=settings.store.synchronous,
        busy_timeout_seconds=settings.store.busy_timeout_seconds,
    )


class Relay:
    """One running pulse-relay: store, ingress, dispatcher and poller."""

    def __init__(self, settings: Settings, *, clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.store = open_store(settings)
        self.verifier = build_verifier(settings)
        self._clock = clock
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self.pulse: PulseClient | None = None
        self.dispatcher: Dispatcher | None = None
        self.port: int | None = None

    @property
    def base_url(self) -> str:
        """http://host:port of the bound listener."""
        host = self.settings.server.host
        shown = f"[{host}]" if ":" in host else host
        return f"http://{shown}:{self.port}"

    @property
    def webhook_url(self) -> str:
        """The full URL of the webhook endpoint."""
        return self.base_url + self.settings.server.path

    async def start(self) -> None:
        """Open the store, start background work, then bind the listener."""
        await self.store.open()
        try:
            await self._start_background()
            await self._start_listener()
        except BaseException:
            await self.stop()
            raise

    async def _start_background(self) -> None:
        settings = self.settings
        self._session = aiohttp.ClientSession()
        pulse = settings.pulse
        self.pulse = PulseClient(
            pulse.base_url,
            pulse.api_key.get_secret_value(),
            timeout_seconds=pulse.timeout_seconds,
            max_result_bytes=pulse.max_result_bytes,
        )
        if not pulse.api_key.get_secret_value():
            log.warning("pulse.api_key is not set: job fetches will fail until it is")
        runtimes = {
            sink.name: SinkRuntime(
                sink=build_sink(sink, session=self._session),
                concurrency=sink.concurrency,
                timeout_seconds=sink.timeout_seconds,
                policy=retry_policy_for(sink),
            )
            for sink in settings.sinks
            if sink.enabled
        }
        delivery = settings.delivery
        self.dispatcher = Dispatcher(
            store=self.store,
            pulse=self.pulse,
            sinks=runtimes,
            metrics=self.metrics,
            limits=DispatcherLimits(
                concurrency=delivery.concurrency,
                fetch_concurrency=max(1, delivery.concurrency // 2),
                lease_seconds=delivery.lease_seconds,
            ),
            clock=self._clock,
        )
        self.dispatcher.start()

    async def _start_listener(self) -> None:
        if self.settings.verify.scheme == "none":
            log.warning(
                "SIGNATURE VERIFICATION IS OFF (verify.scheme = none): anyone who can reach "
                "this port can inject events. Use this for local experiments only."
            )
        elif self.verifier is None:
            log.warning("polling-only mode: " + POLLING_ONLY_REASON)
        server = self.settings.server
        ingress = Ingress(
            IngressConfig(
                path=server.path,
                max_body_bytes=server.max_body_bytes,
                read_timeout_seconds=server.read_timeout_seconds,
                fetch_on=frozenset(self.settings.pulse.fetch_on),
                closed_reason=POLLING_ONLY_REASON if self.verifier is None else None,
            ),
            verifier=self.verifier,
            store=self.store,
            route=build_router(self.settings),
            metrics=self.metrics,
            on_accepted=self._on_accepted,
            clock=self._clock,
        )
        app = build_app(
            ingress,
            path=server.path,
            metrics=self.metrics,
            readiness=self.readiness,
            refresh_metrics=self.refresh_gauges,
        )
        self._runner = web.AppRunner(
            app,
            access_log=None,
            handle_signals=False,
            shutdown_timeout=server.shutdown_grace_seconds,
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, server.host, server.port, reuse_address=True)
        await site.start()
        address = self._runner.addresses[0]
        self.port = int(address[1])
        log.info("listening", url=self.webhook_url, store=str(self.store.path))

    def _on_accepted(self) -> None:
        """Called after an event commits; wakes the dispatcher."""
        if self.dispatcher is not None:
            self.dispatcher.notify()

    async def refresh_gauges(self) -> None:
        """Read the backlog gauges from the store (at scrape time, so they are never stale)."""
        counts = await self.store.pending_counts()
        for sink in self.settings.sinks:
            self.metrics.pending.labels(sink=sink.name).set(counts.get(sink.name, 0))
        oldest = await self.store.oldest_pending_received_at()
        age_seconds = 0.0 if oldest is None else max(0.0, self._clock() - oldest)
        self.metrics.oldest_pending_seconds.set(age_seconds)

    async def readiness(self) -> list[str]:
        """Reasons the relay is not ready; empty when it is."""
        problems: list[str] = []
        try:
            async with asyncio.timeout(2.0):
                await self.store.check_writable()
        except (StoreUnavailableError, TimeoutError) as error:
            problems.append(f"store not writable: {error}")
        if self.dispatcher is None or not self.dispatcher.is_running:
            problems.append("dispatcher not running")
        return problems

    async def stop(self) -> None:
        """Stop accepting, finish acks in flight, stop background work, close the store."""
        if self._runner is not None:
            # Closes the listening socket first, then waits for handlers in flight.
            await self._runner.cleanup()
            self._runner = None
        if self.dispatcher is not None:
            await self.dispatcher.stop(grace_seconds=self.settings.server.shutdown_grace_seconds)
            self.dispatcher = None
        if self.pulse is not None:
            await self.pulse.close()
            self.pulse = None
        if self._session is not None:
            await self._session.close()
            self._session = None
        await self.store.close()
        log.info("stopped")


async def serve(settings: Settings, *, on_ready: Callable[[Relay], None] | None = None) -> None:
    """Run the relay until SIGTERM or SIGINT, then shut down in order."""
    relay = Relay(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        await relay.start()
        if on_ready is not None:
            on_ready(relay)
        await stop.wait()
        log.info("shutting down")
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
        await relay.stop()
