"""Claims due work from the store, fetches each job once, and fans it out to the sinks.

Two queues live in the store: events whose canonical job must be fetched, and
(event, sink) deliveries. A delivery becomes claimable only once its event's
job is persisted, so a single-use result URL is never needed twice and every
sink is served from the same stored copy.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pulse_relay.events import build_envelope, encode_envelope, is_terminal, says_terminal
from pulse_relay.logs import get_logger
from pulse_relay.metrics import Metrics
from pulse_relay.pulse import (
    PulseAuthError,
    PulseClient,
    PulseError,
    PulseNotFoundError,
    PulsePermanentError,
)
from pulse_relay.retry import RetryPolicy
from pulse_relay.sinks.base import Delivery, PermanentSinkError, Sink, SinkError, SinkResult
from pulse_relay.store import Attempt, DeliveryTask, FetchTask, Store, StoreUnavailableError

log = get_logger("pulse_relay.dispatcher")

# A wrong API key is a configuration error: keep the work, retry slowly, never drop it.
AUTH_RETRY_SECONDS = 300.0
# A job may not be visible yet right after its webhook; a few 404s are tolerated.
NOT_FOUND_MAX_ATTEMPTS = 5
# Nothing announced: look again this often anyway (leases expire, the CLI queues replays).
IDLE_WAKE_SECONDS = 1.0
# On top of a sink's own timeout, so a sink that ignores its timeout cannot hold a slot forever.
SINK_TIMEOUT_MARGIN_SECONDS = 5.0


@dataclass(frozen=True)
class SinkRuntime:
    """A built sink with the limits and the retry policy of its settings."""

    sink: Sink
    concurrency: int
    timeout_seconds: float
    policy: RetryPolicy


@dataclass(frozen=True)
class DispatcherLimits:
    """Global bounds on work in flight."""

    concurrency: int = 16
    fetch_concurrency: int = 8
    lease_seconds: float = 120.0


def extraction_id(job: Mapping[str, Any] | None) -> str | None:
    """The `extraction_id` of a job's result, for logs."""
    result = job.get("result") if job else None
    value = result.get("extraction_id") if isinstance(result, dict) else None
    return value if isinstance(value, str) else None


class Dispatcher:
    """Runs fetches and deliveries with bounded concurrency until stopped."""

    def __init__(
        self,
        *,
        store: Store,
        pulse: PulseClient | None,
        sinks: Mapping[str, SinkRuntime],
        metrics: Metrics,
        limits: DispatcherLimits,
        fetch_policy: RetryPolicy | None = None,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self._store = store
        self._pulse = pulse
        self._sinks = dict(sinks)
        self._metrics = metrics
        self._limits = limits
        self._fetch_policy = fetch_policy or RetryPolicy(initial_seconds=1.0, max_seconds=600.0)
        self._clock = clock
        self._rng = rng or random.Random()
        self._wake = asyncio.Event()
        self._stopping = False
        self._loop_task: asyncio.Task[None] | None = None
        self._fetches: set[asyncio.Task[None]] = set()
        self._deliveries: set[asyncio.Task[None]] = set()
        self._in_flight: dict[str, int] = dict.fromkeys(self._sinks, 0)
        # Deliveries whose sink is still working (recording the outcome comes after).
        self._delivering = 0
        self._fetching = 0
        self._rotation = 0

    @property
    def is_running(self) -> bool:
        """True while the claim loop is alive."""
        return self._loop_task is not None and not self._loop_task.done()

    def notify(self) -> None:
        """New work was committed: look for it now rather than at the next idle wake."""
        self._wake.set()

    def start(self) -> None:
        """Start the claim loop."""
        self._stopping = False
        self._loop_task = asyncio.create_task(self._run(), name="dispatcher")

    async def stop(self, *, grace_seconds: float) -> None:
        """Stop claiming, give running work `grace_seconds`, cancel the rest, release leases."""
        self._stopping = True
        self._wake.set()
        if self._loop_task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
            self._loop_task = None
        running = self._fetches | self._deliveries
        if running:
            _, unfinished = await asyncio.wait(running, timeout=grace_seconds)
            for task in unfinished:
                task.cancel()
            if unfinished:
                log.warning(
                    "shutdown grace over; unfinished work resumes at next start",
                    unfinished=len(unfinished),
                )
                await asyncio.wait(unfinished)
        with contextlib.suppress(StoreUnavailableError):
            await self._store.release_leases()

    async def _run(self) -> None:
        while not self._stopping:
            self._wake.clear()
            try:
                claimed = await self._claim()
                if claimed:
                    continue
                timeout = await self._idle_seconds()
            except StoreUnavailableError as error:
                log.error("store unavailable; dispatcher waits", reason=error.reason)
                timeout = IDLE_WAKE_SECONDS
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._wake.wait()

    async def _idle_seconds(self) -> float:
        # Only work that could be claimed now counts: running work wakes the loop itself
        # when it finishes, so waiting for it here would only spin.
        sinks = [n for n, r in self._sinks.items() if self._in_flight[n] < r.concurrency]
        if self._delivering >= self._limits.concurrency:
            sinks = []
        include_fetches = (
            self._pulse is not None and self._fetching < self._limits.fetch_concurrency
        )
        next_due = await self._store.next_due_at(sinks, include_fetches=include_fetches)
        if next_due is None:
            return IDLE_WAKE_SECONDS
        return min(max(next_due - self._clock(), 0.005), IDLE_WAKE_SECONDS)

    async def _claim(self) -> int:
        fetch_free = 0
        if self._pulse is not None:
            fetch_free = max(0, self._limits.fetch_concurrency - self._fetching)
        free, total_free = self._reserve_slots()
        # Reserved before the await: a fetch finishing meanwhile claims only what is left.
        self._fetching += fetch_free
        try:
            fetches, deliveries = await self._store.claim(
                fetch_limit=fetch_free,
                free_slots=free,
                total_limit=total_free,
                lease_seconds=self._limits.lease_seconds,
            )
        finally:
            self._fetching -= fetch_free
            self._release_slots(free, total_free)
        for fetch in fetches:
            self._fetching += 1
            self._spawn(self._fetches, self._run_fetch(fetch))
        self._start_deliveries(deliveries)
        return len(fetches) + len(deliveries)

    def _reserve_slots(self) -> tuple[dict[str, int], int]:
        """Free slots per sink and in all, reserved until `_release_slots`."""
        total_free = max(0, self._limits.concurrency - self._delivering)
        names = list(self._sinks)
        if not names or total_free == 0:
            return {}, 0
        # Rotate the order so one busy sink cannot take the whole budget every time.
        self._rotation = (self._rotation + 1) % len(names)
        names = names[self._rotation :] + names[: self._rotation]
        free = {n: max(0, self._sinks[n].concurrency - self._in_flight[n]) for n in names}
        for name, slots in free.items():
            self._in_flight[name] += slots
        self._delivering += total_free
        return free, total_free

    def _release_slots(self, free: dict[str, int], total_free: int) -> None:
        for name, slots in free.items():
            self._in_flight[name] -= slots
        self._delivering -= total_free

    def _start_deliveries(self, tasks: list[DeliveryTask]) -> None:
        bodies: dict[tuple[str, bool], tuple[dict[str, Any], bytes]] = {}
        for task in tasks:
            key = (task.event_id, task.is_replay)
            if key not in bodies:
                bodies[key] = self._envelope(task)
            self._in_flight[task.sink] += 1
            self._delivering += 1
            self._spawn(self._deliveries, self._run_delivery(task, *bodies[key]))

    def _spawn(self, group: set[asyncio.Task[None]], work: Any) -> None:
        task: asyncio.Task[None] = asyncio.create_task(work)
        group.add(task)
        task.add_done_callback(group.discard)

    def _envelope(self, task: DeliveryTask) -> tuple[dict[str, Any], bytes]:
        envelope = build_envelope(
            event_id=task.event_id,
            event_type=task.event_type,
            job_id=task.job_id,
            received_at=task.received_at,
            source="replay" if task.is_replay else task.source,
            body=task.body,
            job=task.job,
            result_url=task.result_url,
            metadata=task.metadata,
        )
        return envelope, encode_envelope(envelope)

    # -- fetching --------------------------------------------------------

    async def _run_fetch(self, task: FetchTask) -> None:
        attempt_number = task.attempts + 1
        context: dict[str, Any] = {
            "webhook_id": task.event_id,
            "job_id": task.job_id,
            "type": task.event_type,
            "attempt": attempt_number,
        }
        try:
            await self._fetch(task, attempt_number, context)
        except StoreUnavailableError as error:
            log.error("could not record job fetch", reason=error.reason, **context)
        except Exception:  # a bug must not end dispatching; the lease expiry retries it
            log.exception("job fetch failed unexpectedly", **context)
        finally:
            self._fetching -= 1

    async def _fetch(self, task: FetchTask, attempt_number: int, context: dict[str, Any]) -> None:
        assert self._pulse is not None
        started_at = self._clock()
        began = time.perf_counter()
        try:
            fetched = await self._pulse.fetch_job(task.job_id)
        except PulseError as error:
            duration_ms = (time.perf_counter() - began) * 1000
            attempt = Attempt(
                sink=None,
                attempt=attempt_number,
                started_at=started_at,
                duration_ms=duration_ms,
                outcome="retry",
                status_code=error.status_code,
                error=error.reason,
            )
            await self._fetch_failed(task, error, attempt, context)
            return
        duration_ms = (time.perf_counter() - began) * 1000
        job = fetched.job
        status = job.get("status")
        context.update(status=status, duration_ms=round(duration_ms, 1))
        if says_terminal(task.event_type) and not (isinstance(status, str) and is_terminal(status)):
            # The API is eventually consistent: the event may run ahead of the job.
            reason = f"job is {status!r}, not yet terminal as {task.event_type} says"
            delay = self._fetch_policy.delay_seconds(attempt_number, rng=self._rng)
            await self._store.retry_fetch(
                task.event_id,
                next_fetch_at=self._clock() + delay,
                attempt=Attempt(
                    None, attempt_number, started_at, duration_ms, "retry", 200, reason
                ),
            )
            self._metrics.job_fetches.labels(outcome="not_terminal").inc()
            log.info(
                "job not terminal yet; fetch retried",
                retry_in_seconds=round(delay, 2),
                **context,
            )
            return
        # The event's sinks start straight from this transaction, without waiting
        # for the next claim round.
        free, total_free = self._reserve_slots()
        try:
            deliveries = await self._store.finish_fetch(
                task.event_id,
                job=job,
                result_url=fetched.result_url,
                attempt=Attempt(None, attempt_number, started_at, duration_ms, "fetched", 200),
                free_slots=free,
                total_limit=total_free,
                lease_seconds=self._limits.lease_seconds,
            )
        finally:
            self._release_slots(free, total_free)
        self._start_deliveries(deliveries)
        self._metrics.job_fetches.labels(outcome="ok").inc()
        log.info("job fetched", extraction_id=extraction_id(job), **context)
        self.notify()

    async def _fetch_failed(
        self, task: FetchTask, error: PulseError, attempt: Attempt, context: dict[str, Any]
    ) -> None:
        number = attempt.attempt
        if isinstance(error, PulseAuthError):
            delay = max(AUTH_RETRY_SECONDS, error.retry_after_seconds or 0.0)
            log.error(
                "Pulse API rejected the API key (check pulse.api_key / PULSE_API_KEY); "
                "the event is kept and retried",
                status_code=error.status_code,
                retry_in_seconds=delay,
                **context,
            )
            outcome = "auth_error"
        elif isinstance(error, PulsePermanentError) or (
            isinstance(error, PulseNotFoundError) and number >= NOT_FOUND_MAX_ATTEMPTS
        ):
            dead = Attempt(**{**attempt.__dict__, "outcome": "dead"})
            await self._store.fail_fetch(task.event_id, attempt=dead)
            self._metrics.job_fetches.labels(outcome="dead").inc()
            log.error("job fetch failed for good; deliveries dead", reason=error.reason, **context)
            return
        else:
            delay = self._fetch_policy.delay_seconds(
                number, rng=self._rng, retry_after_seconds=error.retry_after_seconds
            )
            outcome = "not_found" if isinstance(error, PulseNotFoundError) else "retry"
            log.warning(
                "job fetch failed; will retry",
                reason=error.reason,
                status_code=error.status_code,
                retry_in_seconds=round(delay, 2),
                **context,
            )
        await self._store.retry_fetch(
            task.event_id, next_fetch_at=self._clock() + delay, attempt=attempt
        )
        self._metrics.job_fetches.labels(outcome=outcome).inc()

    # -- delivering ------------------------------------------------------

    async def _run_delivery(
        self, task: DeliveryTask, envelope: dict[str, Any], body: bytes
    ) -> None:
        runtime = self._sinks[task.sink]
        attempt_number = task.attempts + 1
        job_status = task.job.get("status") if isinstance(task.job, dict) else None
        delivery = Delivery(
            event_id=task.event_id,
            event_type=task.event_type,
            job_id=task.job_id,
            job_status=job_status if isinstance(job_status, str) else None,
            envelope=envelope,
            body=body,
            received_at=envelope["received_at"],
        )
        context = {
            "webhook_id": task.event_id,
            "job_id": task.job_id,
            "type": task.event_type,
            "status": delivery.job_status,
            "sink": task.sink,
            "attempt": attempt_number,
            "extraction_id": extraction_id(task.job),
        }
        started_at = self._clock()
        began = time.perf_counter()
        result: SinkResult | None = None
        failure: SinkError | None = None
        try:
            async with asyncio.timeout(runtime.timeout_seconds + SINK_TIMEOUT_MARGIN_SECONDS):
                result = await runtime.sink.deliver(delivery)
        except SinkError as error:
            failure = error
        except TimeoutError:
            failure = SinkError(f"no answer within {runtime.timeout_seconds} s")
        except Exception as error:  # a sink bug must not lose the delivery
            log.exception("sink raised unexpectedly", **context)
            failure = SinkError(f"internal error: {type(error).__name__}: {error}")
        finally:
            # The slot is free once the sink is done: the next claim can share a
            # transaction with this record (the lease keeps this delivery unclaimed).
            self._in_flight[task.sink] -= 1
            self._delivering -= 1
            self.notify()
        duration_seconds = time.perf_counter() - began
        try:
            await self._record(
                task, runtime, result, failure, started_at, duration_seconds, context
            )
        except StoreUnavailableError as error:
            # The lease runs out and the delivery is made again: at least once, never lost.
            log.error("could not record delivery outcome", reason=error.reason, **context)
        except Exception:
            log.exception("recording the delivery failed unexpectedly", **context)

    async def _record(
        self,
        task: DeliveryTask,
        runtime: SinkRuntime,
        result: SinkResult | None,
        failure: SinkError | None,
        started_at: float,
        duration_seconds: float,
        context: dict[str, Any],
    ) -> None:
        """The one place that maps a delivery's result to delivered, retry or dead."""
        number = int(context["attempt"])
        duration_ms = duration_seconds * 1000
        self._metrics.delivery_seconds.labels(sink=task.sink).observe(duration_seconds)
        context["duration_ms"] = round(duration_ms, 1)
        if failure is None:
            assert result is not None
            attempt = Attempt(
                task.sink,
                number,
                started_at,
                duration_ms,
                "delivered",
                result.status_code,
                None,
                result.output_tail,
            )
            await self._store.finish_delivery(
                task.event_id, task.sink, outcome="delivered", attempt=attempt
            )
            self._metrics.deliveries.labels(sink=task.sink, outcome="delivered").inc()
            log.info("delivered", detail=result.detail, **context)
            return
        permanent = isinstance(failure, PermanentSinkError)
        exhausted = runtime.policy.is_exhausted(number)
        if permanent or exhausted:
            reason = (
                failure.reason
                if permanent
                else (f"gave up after {number} attempts: {failure.reason}")
            )
            attempt = Attempt(
                task.sink,
                number,
                started_at,
                duration_ms,
                "dead",
                failure.status_code,
                reason,
                failure.output_tail,
            )
            await self._store.finish_delivery(
                task.event_id, task.sink, outcome="dead", attempt=attempt
            )
            self._metrics.deliveries.labels(sink=task.sink, outcome="dead").inc()
            log.error("delivery dead", reason=reason, status_code=failure.status_code, **context)
            return
        delay = runtime.policy.delay_seconds(
            number, rng=self._rng, retry_after_seconds=failure.retry_after_seconds
        )
        attempt = Attempt(
            task.sink,
            number,
            started_at,
            duration_ms,
            "retry",
            failure.status_code,
            failure.reason,
            failure.output_tail,
        )
        await self._store.finish_delivery(
            task.event_id,
            task.sink,
            outcome="retry",
            attempt=attempt,
            next_attempt_at=self._clock() + delay,
        )
        self._metrics.deliveries.labels(sink=task.sink, outcome="retry").inc()
        log.warning(
            "delivery failed; will retry",
            reason=failure.reason,
            status_code=failure.status_code,
            retry_in_seconds=round(delay, 2),
            **context,
        )
