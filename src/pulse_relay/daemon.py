"""The process around a relay: signals, the collector, systemd, the exit.

`serve` (what `pulse-relay serve` runs) sets the umask, builds the relay (see
app.py for its start-up and shutdown order), and then owns the process:

- SIGTERM/SIGINT start the ordered shutdown; a second one during it ends the
  process at once (status 1, leases kept: the work runs again after a restart).
- SIGHUP reloads the ingress's TLS certificate files, the sinks and the log
  settings (docs/configuration.md, "Reloading").
- Under systemd (`$NOTIFY_SOCKET`): READY=1 once both listeners are bound,
  WATCHDOG=1 while the relay proves alive, RELOADING=1 and STOPPING=1.
- What start-up built is left out of the cyclic collector. (The command sink waits
  for its children itself, through pidfds: sinks/spawn.py.)
"""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import sys
from collections.abc import Callable, Coroutine
from typing import Any, NoReturn

from pulse_relay.app import Relay
from pulse_relay.config import ConfigError, Settings
from pulse_relay.ingress.edge import sample_accept_errors
from pulse_relay.ingress.tls import TLSFilesError, reload_context
from pulse_relay.logs import SampledLog, configure_logging, get_logger
from pulse_relay.notify import Notifier, run_watchdog, watchdog_interval_seconds

# The name its lines always had (they were the composition root's): filters keep working.
log = get_logger("pulse_relay.app")

# Files the relay creates hold customer documents: for its own user only (the
# store and file sinks also set their modes explicitly; this covers the rest).
RELAY_UMASK = 0o077
# A second SIGTERM/SIGINT during shutdown: the exit status, and how long cancelled work
# gets to clean up (a command sink kills its process group) before the process ends.
FORCED_EXIT_CODE = 1
FORCED_EXIT_CLEANUP_SECONDS = 1.0
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)

SettingsLoader = Callable[[], Settings]


class ProcessSignals:
    """The loop's signal handlers: stop (and hurry, on a second stop signal) and reload."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        on_hangup: Callable[[], Coroutine[Any, Any, None]],
    ) -> None:
        self._loop = loop
        self._on_hangup = on_hangup
        self.stop = asyncio.Event()
        self.hurry = asyncio.Event()
        # Reloads in flight and the watchdog: cancelled when shutdown begins.
        self.background: set[asyncio.Task[None]] = set()

    def install(self) -> None:
        for signum in STOP_SIGNALS:
            self._loop.add_signal_handler(signum, self._stop_signal)
        self._loop.add_signal_handler(signal.SIGHUP, self._hangup_signal)

    def _stop_signal(self) -> None:
        # As in uvicorn: the first signal shuts down in order, a second one means now.
        if self.stop.is_set():
            self.hurry.set()
        self.stop.set()

    def _hangup_signal(self) -> None:
        task = asyncio.create_task(self._on_hangup())
        self.background.add(task)
        task.add_done_callback(self.background.discard)

    async def end_hangups(self) -> None:
        """No more reloads: SIGHUP is left to its default, background work is cancelled."""
        self._loop.remove_signal_handler(signal.SIGHUP)
        for task in list(self.background):
            task.cancel()
        await asyncio.gather(*self.background, return_exceptions=True)

    def remove(self) -> None:
        for signum in STOP_SIGNALS:
            self._loop.remove_signal_handler(signum)


async def serve(
    settings: Settings,
    *,
    on_ready: Callable[[Relay], None] | None = None,
    reload_settings: SettingsLoader | None = None,
    notifier: Notifier | None = None,
) -> None:
    """Run the relay until SIGTERM or SIGINT, then shut down in order.

    The process umask becomes 077 first: whatever the relay creates is its user's alone.

    Tells systemd (when `$NOTIFY_SOCKET` is set) READY=1 once the store is open
    and the listener bound, WATCHDOG=1 while the relay proves alive, and
    STOPPING=1 when shutdown begins. SIGHUP calls `reload_settings` and applies
    the new sinks and log settings. A second SIGTERM or SIGINT during shutdown
    ends the process at once with status 1 (see `_exit_now`).
    """
    os.umask(RELAY_UMASK)
    notifier = notifier or Notifier.from_environment()
    relay = Relay(settings)
    loop = asyncio.get_running_loop()
    signals = ProcessSignals(loop, lambda: _reload(relay, reload_settings, notifier))
    signals.install()
    sample_accept_errors(loop, SampledLog(log))
    try:
        await relay.start()
        freeze_startup_objects()
        notifier.ready(status=_status_line(relay))
        watchdog = _start_watchdog(relay, notifier)
        if watchdog is not None:
            signals.background.add(watchdog)
        if on_ready is not None:
            on_ready(relay)
        await signals.stop.wait()
        notifier.stopping()
        log.info("shutting down")
    finally:
        gc.unfreeze()
        await signals.end_hangups()
        try:
            await _stop_unless_hurried(relay, signals.hurry)
        finally:
            # Only once the listeners are closed: retries of accept() may be pending until then.
            loop.set_exception_handler(None)
        signals.remove()


def freeze_startup_objects() -> None:
    """Leave what start-up built (modules, settings, the apps) out of the cyclic collector.

    A full collection walks every object the process holds: in a started relay that took
    30-40 ms with the event loop stopped, a few times a minute under load, and every
    webhook in flight waited for it. Frozen, the start-up objects are not walked; a full
    collection of what serving makes took about 2 ms. Garbage made before the freeze is
    collected first, so none of it is kept.
    """
    gc.collect()
    gc.freeze()


def _start_watchdog(relay: Relay, notifier: Notifier) -> asyncio.Task[None] | None:
    """Ping systemd's watchdog while the relay proves alive, when `WatchdogSec` asks for it."""
    interval_seconds = watchdog_interval_seconds()
    if interval_seconds is None or not notifier.is_enabled:
        return None

    async def alive() -> list[str]:
        return await relay.liveness(timeout_seconds=interval_seconds)

    return asyncio.create_task(
        run_watchdog(notifier, interval_seconds=interval_seconds, check=alive), name="watchdog"
    )


async def _stop_unless_hurried(relay: Relay, hurry: asyncio.Event) -> None:
    """Stop the relay in order, unless `hurry` (a second signal) asks to exit at once."""
    stopping = asyncio.create_task(relay.stop(), name="relay-stop")
    hurried = asyncio.create_task(hurry.wait(), name="second-signal")
    await asyncio.wait({stopping, hurried}, return_when=asyncio.FIRST_COMPLETED)
    hurried.cancel()
    if not stopping.done():
        await _exit_now()
    await stopping


async def _exit_now() -> NoReturn:
    """End the process at once with FORCED_EXIT_CODE: no grace period, no lease release.

    Running work is cancelled and gets a moment to clean up (a command sink
    kills its process group); what it held keeps its lease and runs again after
    a restart, as after a crash. Nothing acknowledged is lost: SQLite rolls
    back an unfinished transaction when the store is next opened.
    """
    log.warning(
        "second signal: exiting at once; unfinished work runs again after a restart",
        exit_code=FORCED_EXIT_CODE,
    )
    current = asyncio.current_task()
    others = [task for task in asyncio.all_tasks() if task is not current]
    for task in others:
        task.cancel()
    if others:
        await asyncio.wait(others, timeout=FORCED_EXIT_CLEANUP_SECONDS)
    sys.stdout.flush()
    sys.stderr.flush()
    # Not sys.exit: that would wait for threads that may be stuck (a commit on a hung disk).
    os._exit(FORCED_EXIT_CODE)


def reload_tls(relay: Relay) -> bool:
    """Load renewed certificate files into the live context; False (logged) if unusable.

    Connections already open keep their session; new handshakes see the new chain.
    """
    server = relay.settings.server
    if relay.tls_context is None or server.tls_cert_file is None or server.tls_key_file is None:
        return True
    try:
        reload_context(relay.tls_context, server.tls_cert_file, server.tls_key_file)
    except TLSFilesError as error:
        log.error("TLS reload refused; keeping the running certificate", reason=str(error))
        return False
    log.info("TLS certificate reloaded", cert_file=str(server.tls_cert_file))
    return True


def _status_line(relay: Relay) -> str:
    admin = f"; admin on {relay.admin_url}" if relay.admin_port is not None else ""
    return f"listening on {relay.webhook_url}{admin}"


async def _reload(relay: Relay, load: SettingsLoader | None, notifier: Notifier) -> None:
    """SIGHUP: reload TLS files and read the configuration again; keep what is broken out."""
    # A renewed certificate is loaded whatever becomes of the configuration.
    reload_tls(relay)
    if load is None:
        log.warning("SIGHUP ignored: no configuration source to reload from")
        return
    try:
        new = load()
    except ConfigError as error:
        relay.metrics.reloads.labels(outcome="error").inc()
        log.error(
            "reload refused: configuration invalid; keeping the running one", problems=str(error)
        )
        return
    notifier.reloading()
    try:
        configure_logging(format=new.log.format, level=new.log.level)
        ignored = await relay.reload(new)
    finally:
        notifier.ready(status=_status_line(relay))
    relay.metrics.reloads.labels(outcome="ok").inc()
    log.info("configuration reloaded", sinks=[sink.name for sink in new.sinks if sink.enabled])
    if ignored:
        log.warning("changes in these sections need a restart", sections=ignored)
