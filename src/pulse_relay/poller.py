"""Polling fallback: watched jobs are polled until terminal, then enter the pipeline as events.

Used where no public URL exists (local development) and as the safety net for
lost webhooks: a job seen created or processing with no terminal event after
`poll.recover_after_seconds` is watched automatically.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from pulse_relay.events import format_timestamp, ingest_record, is_terminal
from pulse_relay.logs import get_logger, outage_log
from pulse_relay.metrics import Metrics
from pulse_relay.pulse import PulseClient, PulseError, judge_error
from pulse_relay.retry import RetryPolicy
from pulse_relay.store import StoreBackend, StoreUnavailableError, Watch
from pulse_relay.unencodable import without_lone_surrogates

log = get_logger("pulse_relay.poller")

# How much the interval grows after each poll that finds the job still running.
BACKOFF_FACTOR = 1.5
IDLE_WAKE_SECONDS = 1.0
# Events older than this are not looked at by recovery (they are long settled or pruned).
RECOVERY_WINDOW_SECONDS = 7 * 24 * 3600.0
# Level and message of the one log line each failed poll writes.
_POLL_ERROR_LOG: Final[Mapping[str, tuple[int, str]]] = {
    "auth_error": (logging.ERROR, "Pulse API rejected the API key; polling paused"),
    "dead": (logging.ERROR, "watched job given up; no longer polled"),
    "not_found": (logging.WARNING, "poll failed; will retry"),
    "retry": (logging.WARNING, "poll failed; will retry"),
}


@dataclass(frozen=True)
class PollerConfig:
    """The `[poll]` settings the poller needs, plus what routes a synthetic event."""

    interval_seconds: float
    max_interval_seconds: float
    recover_after_seconds: float
    concurrency: int
    fetch_on: frozenset[str]
    lease_seconds: float = 60.0

    @property
    def backoff(self) -> RetryPolicy:
        """The poll interval's curve: `interval_seconds` growing to `max_interval_seconds`.

        Unjittered, so the intervals are the documented ones (README, `[poll]`);
        whether a failing job is given up is `judge_error`'s call, not an attempt count.
        """
        return RetryPolicy(
            initial_seconds=self.interval_seconds,
            max_seconds=self.max_interval_seconds,
            growth_factor=BACKOFF_FACTOR,
            is_jittered=False,
        )


def synthetic_body(job_id: str, status: str) -> bytes:
    """The payload of a poll-made event, shaped like the webhook it stands in for."""
    document = {
        "type": f"job.{status}",
        "timestamp": format_timestamp(time.time()),
        "data": {"job_id": job_id, "status": status},
    }
    return json.dumps(document, separators=(",", ":")).encode()


class Poller:
    """Polls watched jobs with bounded concurrency and feeds terminal ones to the store."""

    def __init__(
        self,
        *,
        store: StoreBackend,
        pulse: PulseClient,
        config: PollerConfig,
        route: Callable[[str], Sequence[str]],
        metrics: Metrics,
        on_event: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._pulse = pulse
        self._config = config
        self._route = route
        self._metrics = metrics
        self._on_event = on_event
        self._clock = clock
        self._backoff = config.backoff
        # Lines repeated for every watch while the Pulse API or the store is down.
        self._outage_log = outage_log(log, clock=clock)
        self._wake = asyncio.Event()
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self._polls: set[asyncio.Task[None]] = set()
        self._next_recovery_at = 0.0

    @property
    def is_running(self) -> bool:
        """True while the poll loop is alive."""
        return self._task is not None and not self._task.done()

    def notify(self) -> None:
        """A watch was added: look now."""
        self._wake.set()

    def start(self) -> None:
        """Start the poll loop."""
        self._stopping = False
        self._task = asyncio.create_task(self._run(), name="poller")

    async def stop(self) -> None:
        """Stop polling; polls in flight are cancelled (their watch is simply polled again)."""
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for task in list(self._polls):
            task.cancel()
        if self._polls:
            await asyncio.wait(self._polls)

    async def _run(self) -> None:
        while not self._stopping:
            self._wake.clear()
            try:
                await self._recover()
                free = self._config.concurrency - len(self._polls)
                if free > 0:
                    for watch in await self._store.claim_watches(
                        limit=free, lease_seconds=self._config.lease_seconds
                    ):
                        task = asyncio.create_task(self._poll(watch))
                        self._polls.add(task)
                        task.add_done_callback(self._poll_done)
            except StoreUnavailableError as error:
                self._outage_log.emit(
                    "store:unavailable",
                    "error",
                    "store unavailable; poller waits",
                    reason=error.reason,
                )
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(IDLE_WAKE_SECONDS):
                    await self._wake.wait()

    def _poll_done(self, task: asyncio.Task[None]) -> None:
        self._polls.discard(task)
        self._wake.set()

    async def _recover(self) -> None:
        now = self._clock()
        if now < self._next_recovery_at:
            return
        self._next_recovery_at = now + min(60.0, max(1.0, self._config.recover_after_seconds / 4))
        recovered = await self._store.recover_stalled_jobs(
            older_than=now - self._config.recover_after_seconds,
            since=now - RECOVERY_WINDOW_SECONDS,
            interval_seconds=self._config.interval_seconds,
        )
        for job_id in recovered:
            log.warning(
                "no terminal event for this job; polling it",
                job_id=job_id,
                recover_after_seconds=self._config.recover_after_seconds,
            )

    async def _poll(self, watch: Watch) -> None:
        try:
            await self._poll_once(watch)
        except StoreUnavailableError as error:
            log.error("could not record poll", job_id=watch.job_id, reason=error.reason)
        except Exception:  # a bug must not end polling; the watch is polled again later
            log.exception("poll failed unexpectedly", job_id=watch.job_id)

    async def _poll_once(self, watch: Watch) -> None:
        now = self._clock()
        interval = watch.interval_seconds
        context = {"job_id": watch.job_id, "poll": watch.polls + 1, "origin": watch.origin}
        try:
            job = await self._pulse.get_job(watch.job_id)
        except PulseError as error:
            await self._poll_failed(watch, error, context)
            return
        status = job.get("status")
        if isinstance(status, str) and is_terminal(status):
            outcome = await self._emit(watch.job_id, status)
            await self._store.update_watch(
                watch.job_id,
                state="done",
                next_poll_at=now,
                interval_seconds=interval,
                last_status=status,
                last_error=None,
            )
            self._metrics.polls.labels(outcome="terminal").inc()
            log.info("watched job finished", status=status, outcome=outcome, **context)
            return
        next_interval = self._backoff.next_interval_seconds(interval)
        await self._store.update_watch(
            watch.job_id,
            state="active",
            next_poll_at=now + interval,
            interval_seconds=next_interval,
            # Shown by `watch --list`; a hostile job's `"\ud800"` escapes would not store.
            last_status=without_lone_surrogates(status) if isinstance(status, str) else None,
            last_error=None,
        )
        self._metrics.polls.labels(outcome="running").inc()
        log.debug("watched job still running", status=status, **context)

    async def _poll_failed(
        self, watch: Watch, error: PulseError, context: dict[str, object]
    ) -> None:
        now = self._clock()
        interval = watch.interval_seconds
        verdict = judge_error(error, attempt=watch.polls + 1)
        delay = 0.0 if verdict.gives_up else verdict.delay_seconds(interval)
        await self._store.update_watch(
            watch.job_id,
            state="dead" if verdict.gives_up else "active",
            next_poll_at=now + delay,
            interval_seconds=self._backoff.next_interval_seconds(interval),
            last_status=None,
            last_error=error.reason,
        )
        self._metrics.polls.labels(outcome="error").inc()
        level, message = _POLL_ERROR_LOG[verdict.outcome]
        fields = {"reason": error.reason, "status_code": error.status_code, **context}
        if not verdict.gives_up:
            fields["retry_in_seconds"] = round(delay, 2)
        if verdict.outcome in ("retry", "auth_error"):
            # Repeated for every watch while the API is down or the key is wrong.
            key = f"poll:{verdict.outcome}:{error.status_code}"
            self._outage_log.emit(key, level, message, **fields)
        else:
            log.log(level, message, **fields)

    async def _emit(self, job_id: str, status: str) -> str:
        """Feed the terminal status into the pipeline as a `source: poll` event."""
        record = ingest_record(
            event_id=f"poll:{job_id}:{status}",
            received_at=self._clock(),
            source="poll",
            headers={},
            body=synthetic_body(job_id, status),
            route=self._route,
            fetch_on=self._config.fetch_on,
        )
        outcome = await self._store.ingest(record)
        self._on_event()
        return outcome
