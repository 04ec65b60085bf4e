"""The composition root: builds every component from settings and runs them in order.

Start-up: refuse an exposed admin listener without a token → store (an embedded
store takes back the leases a killed predecessor held) → sinks and
Pulse client → dispatcher and poller → ingress listener → admin listener →
READY=1 to systemd (so READY means both ports are bound).

Shutdown (SIGTERM/SIGINT): STOPPING=1 → the ingress stops accepting and finishes
the acks in flight → the change stream ends and the admin listener closes (its
requests in flight finish) → the poller stops → running deliveries get the grace
period → release leases → close the sinks and the HTTP session → close the store.
A second signal during that ends the process at once (status 1, leases kept).
The ingress goes first because it is the only way new work arrives from outside;
the admin side stays up until then so that probes see the relay to the end.

SIGHUP applies the new sinks and log settings through `Relay.reload`. The process
around the relay (signals, systemd, the hurried exit) is daemon.py's; the daily
prune is retention.py's.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

import aiohttp
from aiohttp import web

from pulse_relay.admin.auth import AdminAuth
from pulse_relay.admin.changes import ChangeHub
from pulse_relay.admin.context import AdminContext, CachedReadiness
from pulse_relay.admin.listener import build_admin_app, malformed_request_hook
from pulse_relay.config import (
    ConfigError,
    Settings,
    SinkSettings,
    admin_exposure_problem,
    mode_warnings,
    settings_warnings,
)
from pulse_relay.dispatcher import Dispatcher, DispatcherLimits, SinkRuntime
from pulse_relay.ingress.protocol import IngressRunner
from pulse_relay.ingress.server import Ingress, build_app
from pulse_relay.ingress.tls import TLSFilesError, server_context
from pulse_relay.ingress_settings import build_ingress_config, build_verifier
from pulse_relay.logs import get_logger
from pulse_relay.metrics import Metrics
from pulse_relay.poller import Poller, PollerConfig
from pulse_relay.pulse import PulseClient
from pulse_relay.ratelimit import rate_limited_sinks
from pulse_relay.retention import RETENTION_FIRST_RUN_SECONDS, run_retention
from pulse_relay.sinks import build_sink, retry_policy_for
from pulse_relay.sinks.base import Sink, matches_any
from pulse_relay.store import StoreUnavailableError
from pulse_relay.wiring import PruneOutcome, build_store, ingress_url, local_url, prune_store

log = get_logger("pulse_relay.app")

POLLING_ONLY_REASON = (
    "no webhook secret or public key configured: polling-only mode, ingress closed"
)
# How long /readyz waits for the store's probe write before calling it not writable.
READINESS_STORE_TIMEOUT_SECONDS = 2.0
# Sections a SIGHUP applies; any other change needs a restart.
RELOADABLE_SECTIONS = ("sinks", "log")


def build_router(settings: Settings) -> Callable[[str], Sequence[str]]:
    """Map an event type to the names of the enabled sinks whose filters match it."""
    sinks = [(sink.name, list(sink.events)) for sink in settings.sinks if sink.enabled]

    def route(event_type: str) -> Sequence[str]:
        return [name for name, patterns in sinks if matches_any(patterns, event_type)]

    return route


class SinkFactory(Protocol):
    """Builds one sink from its settings (`build_sink`, unless a test observes the sinks)."""

    def __call__(
        self, settings: SinkSettings, *, session: aiohttp.ClientSession | None = None
    ) -> Sink: ...


class Relay:
    """One running pulse-relay: store, ingress, dispatcher and poller."""

    def __init__(
        self,
        settings: Settings,
        *,
        clock: Callable[[], float] = time.time,
        retention_first_run_seconds: float = RETENTION_FIRST_RUN_SECONDS,
        sink_factory: SinkFactory = build_sink,
    ) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self._route = build_router(settings)
        self._retention_first_run_seconds = retention_first_run_seconds
        self._retention_task: asyncio.Task[None] | None = None
        self._reload_lock = asyncio.Lock()
        self._reloading = False
        self._stopped = False
        self.store = build_store(settings, clock=clock)
        # Another relay sharing the store committed work: look for it now.
        self.store.add_wake_listener(self._on_accepted)
        self.verifier = build_verifier(settings, clock=clock)
        self._clock = clock
        self._runner: web.AppRunner | None = None
        self._admin_runner: web.AppRunner | None = None
        # One HTTP session for the Pulse client and every HTTP sink (one connection pool).
        self._session: aiohttp.ClientSession | None = None
        self._sink_factory = sink_factory
        self._sinks: dict[str, SinkRuntime] = {}
        self.pulse: PulseClient | None = None
        self.dispatcher: Dispatcher | None = None
        self.poller: Poller | None = None
        self.port: int | None = None
        # The live TLS context of the ingress (None for plain HTTP); SIGHUP reloads it.
        self.tls_context: ssl.SSLContext | None = None
        self.admin_port: int | None = None
        self.hub = ChangeHub(clock=clock)
        self.store.add_listener(self.hub.on_store_change)
        self.cached_readiness = CachedReadiness(self.readiness)
        self.admin_auth = AdminAuth(
            settings.admin.token.get_secret_value(), allowed_hosts=settings.admin.allowed_hosts
        )

    @property
    def base_url(self) -> str:
        """http(s)://host:port of the bound ingress listener, as reached from this machine."""
        return ingress_url(self.settings, self.port)

    @property
    def admin_url(self) -> str:
        """http://host:port of the bound admin listener, as reached from this machine."""
        return local_url(self.settings.admin.host, self.admin_port)

    @property
    def webhook_url(self) -> str:
        """The full URL of the webhook endpoint."""
        return self.base_url + self.settings.server.path

    async def start(self) -> None:
        """Open the store, start background work, then bind the ingress and admin listeners."""
        problem = admin_exposure_problem(self.settings)
        if problem is not None:
            raise ConfigError(problem)
        await self.store.open()
        try:
            await self.store.take_back_leases()
            await self._start_background()
            await self._start_listener()
            if self.settings.admin.enabled:
                await self._start_admin()
        except BaseException:
            await self.stop()
            raise
        retention = run_retention(
            lambda days: self.prune(older_than_days=days),
            retention_days=lambda: self.settings.store.retention_days,
            dedupe_days=lambda: self.settings.store.dedupe_days,
            first_run_seconds=self._retention_first_run_seconds,
        )
        self._retention_task = asyncio.create_task(retention, name="retention")

    def route(self, event_type: str) -> Sequence[str]:
        """The enabled sinks (of the current configuration) that receive `event_type`."""
        return self._route(event_type)

    async def _start_background(self) -> None:
        settings = self.settings
        # One session for the Pulse client and the HTTP sinks (the pass-through has its
        # own, so that requests hanging there never hold these connections). No cookie
        # jar: a cookie one caller or receiver sets must never be sent on behalf of another.
        self._session = aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar())
        pulse = settings.pulse
        self.pulse = PulseClient(
            pulse.base_url,
            pulse.api_key.get_secret_value(),
            timeout_seconds=pulse.timeout_seconds,
            max_result_bytes=pulse.max_result_bytes,
            session=self._session,
        )
        for warning in settings_warnings(settings):
            log.warning("risky configuration", detail=warning)
        self._sinks = self._build_sinks(settings)
        self.dispatcher = self._build_dispatcher(self._sinks)
        self.dispatcher.start()
        poll = settings.poll
        self.poller = Poller(
            store=self.store,
            pulse=self.pulse,
            config=PollerConfig(
                interval_seconds=poll.interval_seconds,
                max_interval_seconds=poll.max_interval_seconds,
                recover_after_seconds=poll.recover_after_seconds,
                concurrency=poll.concurrency,
                fetch_on=frozenset(pulse.fetch_on),
            ),
            route=self.route,
            metrics=self.metrics,
            on_event=self._on_accepted,
            clock=self._clock,
        )
        self.poller.start()

    async def _start_listener(self) -> None:
        for warning in mode_warnings(self.settings):
            log.warning(warning)
        server = self.settings.server
        closed_reason = POLLING_ONLY_REASON if self.verifier is None else None
        ingress = Ingress(
            build_ingress_config(self.settings, closed_reason=closed_reason),
            verifier=self.verifier,
            store=self.store,
            route=self.route,
            metrics=self.metrics,
            on_accepted=self._on_accepted,
            clock=self._clock,
        )
        app = build_app(ingress, path=server.path)
        if server.tls_cert_file is not None and server.tls_key_file is not None:
            try:
                self.tls_context = server_context(server.tls_cert_file, server.tls_key_file)
            except TLSFilesError as error:
                raise ConfigError(f"server.tls_cert_file: {error}") from None
        self._runner = IngressRunner(
            app,
            on_malformed=ingress.malformed,
            keepalive_timeout_seconds=server.read_timeout_seconds,
            shutdown_timeout=server.shutdown_grace_seconds,
        )
        await self._runner.setup()
        site = web.TCPSite(
            self._runner,
            server.host,
            server.port,
            reuse_address=True,
            ssl_context=self.tls_context,
        )
        await site.start()
        address = self._runner.addresses[0]
        self.port = int(address[1])
        log.info("listening", url=self.webhook_url, store=self.store.location)

    async def _start_admin(self) -> None:
        admin = self.settings.admin
        context = AdminContext(
            get_settings=lambda: self.settings,
            store=self.store,
            metrics=self.metrics,
            hub=self.hub,
            readiness=self.cached_readiness,
            auth=self.admin_auth,
            refresh_metrics=self.refresh_gauges,
            wake_dispatcher=self._on_accepted,
            wake_poller=self._wake_poller,
            ingress_url=lambda: self.webhook_url,
            store_backend=self.store.backend,
            clock=self._clock,
        )
        server = self.settings.server
        self._admin_runner = IngressRunner(
            build_admin_app(context),
            on_malformed=malformed_request_hook(),
            # The same deadline for request headers as the ingress's (see server.build_app).
            keepalive_timeout_seconds=server.read_timeout_seconds,
            shutdown_timeout=server.shutdown_grace_seconds,
            # As aiohttp does by default: the admin side reads request bodies decoded.
            auto_decompress=True,
        )
        await self._admin_runner.setup()
        site = web.TCPSite(self._admin_runner, admin.host, admin.port, reuse_address=True)
        try:
            await site.start()
        except OSError as error:
            raise OSError(
                error.errno, f"admin listener {admin.host}:{admin.port}: {error.strerror}"
            ) from error
        self.admin_port = int(self._admin_runner.addresses[0][1])
        log.info("admin listening", url=self.admin_url, port=self.admin_port)

    def _wake_poller(self) -> None:
        if self.poller is not None:
            self.poller.notify()

    def _build_sinks(self, settings: Settings) -> dict[str, SinkRuntime]:
        assert self._session is not None
        runtimes = {
            sink.name: SinkRuntime(
                sink=self._sink_factory(sink, session=self._session),
                concurrency=sink.concurrency,
                timeout_seconds=sink.timeout_seconds,
                policy=retry_policy_for(sink),
                rate_per_second=sink.rate_per_second,
            )
            for sink in settings.sinks
            if sink.enabled
        }
        for name in runtimes:
            for outcome in ("delivered", "retry", "dead"):
                self.metrics.deliveries.labels(sink=name, outcome=outcome)
            self.metrics.delivery_seconds.labels(sink=name)
        return runtimes

    def _build_dispatcher(self, sinks: Mapping[str, SinkRuntime]) -> Dispatcher:
        delivery = self.settings.delivery
        return Dispatcher(
            store=self.store,
            pulse=self.pulse,
            sinks=sinks,
            metrics=self.metrics,
            limits=DispatcherLimits(
                concurrency=delivery.concurrency,
                fetch_concurrency=max(1, delivery.concurrency // 2),
                lease_seconds=delivery.lease_seconds_for(self.settings.store.backend),
            ),
            clock=self._clock,
        )

    async def reload(self, new: Settings) -> list[str]:
        """Apply the sinks of `new` without dropping work; returns the sections left unapplied.

        Webhooks keep being accepted throughout. The running dispatcher stops
        claiming and gets the grace period to finish what it runs; what is cut
        off keeps its place in the store (its lease is released) and the new
        dispatcher takes it up at once. The old sinks are closed once nothing
        runs on them any more. Deliveries to a removed sink stay pending and
        visible until the sink comes back or they are pruned.
        """
        async with self._reload_lock:
            old = self.settings
            ignored = [
                name
                for name in type(old).model_fields
                if name not in RELOADABLE_SECTIONS and getattr(old, name) != getattr(new, name)
            ]
            self.settings = old.model_copy(update={"sinks": new.sinks, "log": new.log})
            self._route = build_router(self.settings)
            if self.dispatcher is not None and self._session is not None:
                self._reloading = True
                old_sinks = self._sinks
                try:
                    await self.dispatcher.stop(
                        grace_seconds=self.settings.server.shutdown_grace_seconds
                    )
                    self._sinks = self._build_sinks(self.settings)
                    self.dispatcher = self._build_dispatcher(self._sinks)
                    self.dispatcher.start()
                finally:
                    self._reloading = False
                await _close_sinks(old_sinks)
            return ignored

    async def prune(self, *, older_than_days: float) -> PruneOutcome:
        """Delete finished events older than `older_than_days` and forget expired ids."""
        outcome = await prune_store(
            self.store,
            now=self._clock(),
            older_than_days=older_than_days,
            dedupe_days=self.settings.store.dedupe_days,
        )
        self.metrics.pruned_events.inc(outcome.events)
        return outcome

    def _on_accepted(self) -> None:
        """Called after an event commits; wakes the dispatcher."""
        if self.dispatcher is not None:
            self.dispatcher.notify()

    async def refresh_gauges(self) -> None:
        """Read the backlog gauges from the store (at scrape time, so they are never stale)."""
        counts = await self.store.pending_counts()
        # Sinks no longer configured still show the work that waits for them.
        for name in {sink.name for sink in self.settings.sinks} | set(counts):
            self.metrics.pending.labels(sink=name).set(counts.get(name, 0))
        limited = rate_limited_sinks(self.settings.sinks)
        self.metrics.set_rate_limited(await self.store.due_counts(list(limited)))
        oldest = await self.store.oldest_pending_received_at()
        age_seconds = 0.0 if oldest is None else max(0.0, self._clock() - oldest)
        self.metrics.oldest_pending_seconds.set(age_seconds)

    async def readiness(self) -> list[str]:
        """Reasons the relay is not ready; empty when it is."""
        problems: list[str] = []
        try:
            async with asyncio.timeout(READINESS_STORE_TIMEOUT_SECONDS):
                await self.store.check_writable()
        except TimeoutError:
            # A TimeoutError's text is empty: the reason is said here.
            problems.append(
                f"store not writable: no answer within {READINESS_STORE_TIMEOUT_SECONDS:g} s"
            )
        except StoreUnavailableError as error:
            problems.append(f"store not writable: {str(error) or 'unavailable, no reason given'}")
        if self.dispatcher is None or not self.dispatcher.is_running:
            problems.append("dispatcher not running")
        if self.poller is None or not self.poller.is_running:
            problems.append("poller not running")
        return problems

    async def liveness(self, *, timeout_seconds: float = 10.0) -> list[str]:
        """Reasons the relay is stuck (what the systemd watchdog checks); empty when alive.

        Unlike readiness, a store that answers "unavailable" (disk full, locked) is
        alive: its writer ran the probe, and a restart would not help.
        """
        problems: list[str] = []
        try:
            async with asyncio.timeout(timeout_seconds):
                await self.store.check_writable()
        except StoreUnavailableError:
            pass
        except TimeoutError:
            problems.append(f"store writer did not answer within {timeout_seconds} s")
        dispatching = self.dispatcher is not None and self.dispatcher.is_running
        if not dispatching and not self._reloading:
            problems.append("dispatcher not running")
        return problems

    async def stop(self) -> None:
        """Stop accepting, finish acks in flight, stop background work, close the store.

        A step that fails is logged and the later ones still run: the store is closed
        (and its threads end) whatever happened before. Only the first call acts: a
        failed start stops the relay itself, and `serve` stops it again on its way out.
        """
        if self._stopped:
            return
        self._stopped = True
        steps = (
            self._stop_retention,
            self._stop_ingress,
            self._stop_admin,
            self._stop_poller,
            self._stop_dispatcher,
            self._close_clients,
        )
        for step in steps:
            try:
                await step()
            except Exception:
                log.exception("a shutdown step failed; going on", step=step.__name__.lstrip("_"))
        await self.store.close()
        log.info("stopped")

    async def _stop_retention(self) -> None:
        task, self._retention_task = self._retention_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _stop_ingress(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            # Closes the listening socket first, then waits for handlers in flight.
            await runner.cleanup()

    async def _stop_admin(self) -> None:
        runner, self._admin_runner = self._admin_runner, None
        if runner is not None:
            # Streams end at once; other admin requests in flight may finish.
            self.hub.close()
            await runner.cleanup()

    async def _stop_poller(self) -> None:
        poller, self.poller = self.poller, None
        if poller is not None:
            await poller.stop()

    async def _stop_dispatcher(self) -> None:
        dispatcher, self.dispatcher = self.dispatcher, None
        if dispatcher is not None:
            await dispatcher.stop(grace_seconds=self.settings.server.shutdown_grace_seconds)

    async def _close_clients(self) -> None:
        sinks, self._sinks = self._sinks, {}
        await _close_sinks(sinks)
        pulse, self.pulse = self.pulse, None
        if pulse is not None:
            await pulse.close()
        session, self._session = self._session, None
        if session is not None:
            await session.close()


async def _close_sinks(sinks: Mapping[str, SinkRuntime]) -> None:
    """Close every sink; one that fails to close is logged and does not keep the others open."""
    for name, runtime in sinks.items():
        try:
            await runtime.sink.close()
        except Exception:
            log.exception("closing a sink failed", sink=name)
