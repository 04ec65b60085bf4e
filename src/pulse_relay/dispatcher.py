"""Claims due work from the store, fetches each job once, and fans it out to the sinks.

Two queues live in the store: events whose canonical job must be fetched, and
(event, sink) deliveries. A delivery becomes claimable only once its event's
job is persisted, so a single-use result URL is never needed twice and every
sink is served from the same stored copy.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from pulse_relay.fetch import JobFetcher, extraction_id
from pulse_relay.logs import get_logger, outage_log
from pulse_relay.metrics import Metrics
from pulse_relay.outgoing import Prepared, delivery_of, envelope_job, prepare
from pulse_relay.pulse import FetchedJob, PulseClient
from pulse_relay.ratelimit import SinkRates
from pulse_relay.retry import RetryPolicy
from pulse_relay.running import RunningWork
from pulse_relay.sinks.base import Delivery, PermanentSinkError, Sink, SinkError, SinkResult
from pulse_relay.slots import FETCH_SLOT, Slots, delivery_slot
from pulse_relay.store import (
    Attempt,
    DeliveryOutcome,
    DeliveryTask,
    FetchTask,
    QueueStore,
    StoreUnavailableError,
)
from pulse_relay.unencodable import without_lone_surrogates

log = get_logger("pulse_relay.dispatcher")

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
    rate_per_second: float | None = None


@dataclass(frozen=True)
class DispatcherLimits:
    """Global bounds on work in flight."""

    concurrency: int = 16
    fetch_concurrency: int = 8
    lease_seconds: float = 120.0


# -- decisions: pure, so every outcome is unit-tested apart from the I/O ------


@dataclass(frozen=True)
class DeliveryDecision:
    """What one delivery attempt comes to: delivered, retry at `next_attempt_at`, or dead."""

    outcome: DeliveryOutcome
    reason: str | None = None
    retry_in_seconds: float | None = None
    next_attempt_at: float | None = None


def sink_failure(error: Exception, *, timeout_seconds: float) -> SinkError:
    """Whatever a sink raised, as the `SinkError` that decides its retry or dead."""
    if isinstance(error, SinkError):
        return error
    if isinstance(error, TimeoutError):
        return SinkError(f"no answer within {timeout_seconds} s")
    # The message may quote a document's text; the reason is stored and shown as text.
    return SinkError(without_lone_surrogates(f"internal error: {type(error).__name__}: {error}"))


def decide_delivery(
    answer: SinkResult | SinkError,
    *,
    attempt: int,
    policy: RetryPolicy,
    now: float,
    rng: random.Random,
) -> DeliveryDecision:
    """Delivered, retry or dead after attempt number `attempt` (1-based); only `rng` is drawn on."""
    if isinstance(answer, SinkResult):
        return DeliveryDecision("delivered")
    if isinstance(answer, PermanentSinkError):
        return DeliveryDecision("dead", answer.reason)
    if policy.is_exhausted(attempt):
        return DeliveryDecision("dead", f"gave up after {attempt} attempts: {answer.reason}")
    delay = policy.delay_seconds(attempt, rng=rng, retry_after_seconds=answer.retry_after_seconds)
    return DeliveryDecision("retry", answer.reason, delay, now + delay)


# Level and message of the one log line each outcome writes.
_DELIVERY_LOG: Final[Mapping[str, tuple[int, str]]] = {
    "delivered": (logging.INFO, "delivered"),
    "retry": (logging.WARNING, "delivery failed; will retry"),
    "dead": (logging.ERROR, "delivery dead"),
}


class Dispatcher:
    """Runs fetches and deliveries with bounded concurrency until stopped."""

    def __init__(
        self,
        *,
        store: QueueStore,
        pulse: PulseClient | None,
        sinks: Mapping[str, SinkRuntime],
        metrics: Metrics,
        limits: DispatcherLimits,
        fetch_policy: RetryPolicy | None = None,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._pulse = pulse
        self._sinks = dict(sinks)
        self._metrics = metrics
        self._limits = limits
        self._clock = clock
        # Lines repeated for every job while the Pulse API or the store is down.
        self._outage_log = outage_log(log, clock=clock)
        self._rng = rng or random.Random()
        # Claimed work still running here, whose leases the heartbeat renews.
        self._running = RunningWork()
        self._fetcher = (
            None
            if pulse is None
            else JobFetcher(
                store=store,
                pulse=pulse,
                metrics=metrics,
                policy=fetch_policy or RetryPolicy(initial_seconds=1.0, max_seconds=600.0),
                clock=clock,
                rng=self._rng,
                outage_log=self._outage_log,
                finish=self._finish_fetch,
                lease_token=self._running.fetch_token,
            )
        )
        self._wake = asyncio.Event()
        # Whether due work may be waiting for a slot (see `Slots.fill`): until the first
        # claim says otherwise, it may.
        self._short_of_slots = True
        self._stopping = False
        self._loop_task: asyncio.Task[None] | None = None
        self._fetches: set[asyncio.Task[None]] = set()
        self._deliveries: set[asyncio.Task[None]] = set()
        self._heartbeat_task: asyncio.Task[None] | None = None
        # A delivery's slot is held while its sink works (recording the outcome comes after).
        self._slots = Slots(
            {name: runtime.concurrency for name, runtime in self._sinks.items()},
            delivery_limit=limits.concurrency,
            fetch_limit=limits.fetch_concurrency if pulse is not None else 0,
            rates=SinkRates(
                {name: runtime.rate_per_second for name, runtime in self._sinks.items()},
                clock=monotonic,
            ),
        )

    @property
    def is_running(self) -> bool:
        """True while the claim loop is alive."""
        return self._loop_task is not None and not self._loop_task.done()

    def notify(self) -> None:
        """New work was committed: look for it now rather than at the next idle wake."""
        self._wake.set()

    def _wake_if_short_of_slots(self) -> None:
        """A slot was freed: claim again, if due work may be waiting for one. Otherwise
        every due thing was claimed, and what becomes due later wakes the loop itself
        (a commit's notify, the next due time), so a claim round would find nothing:
        on PostgreSQL, two round trips saved per finished fetch or delivery."""
        if self._short_of_slots:
            self.notify()

    def start(self) -> None:
        """Start the claim loop."""
        self._stopping = False
        self._loop_task = asyncio.create_task(self._run(), name="dispatcher")
        self._heartbeat_task = asyncio.create_task(self._heartbeat(), name="lease-heartbeat")

    async def stop(self, *, grace_seconds: float) -> None:
        """Stop claiming, give running work `grace_seconds`, cancel the rest, release leases."""
        self._stopping = True
        self._wake.set()
        if self._loop_task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
            self._loop_task = None
        running = self._fetches | self._deliveries
        heartbeat, self._heartbeat_task = self._heartbeat_task, None
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
        if heartbeat is not None:
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat
        with contextlib.suppress(StoreUnavailableError):
            await self._store.release_leases()

    async def _heartbeat(self) -> None:
        """Renew the leases of running work, so a long delivery is never taken over while
        this relay lives, and a dead relay's work is free again within one lease."""
        interval_seconds = self._limits.lease_seconds / 3
        while True:
            await asyncio.sleep(interval_seconds)
            fetches, deliveries = self._running.leases()
            if not fetches and not deliveries:
                continue
            try:
                await self._store.renew_leases(
                    fetches, deliveries, lease_seconds=self._limits.lease_seconds
                )
            except StoreUnavailableError as error:
                log.warning("could not renew leases", reason=error.reason)

    async def _run(self) -> None:
        while not self._stopping:
            self._wake.clear()
            try:
                if await self._claim():
                    continue
                timeout = await self._idle_seconds()
            except StoreUnavailableError as error:
                self._outage_log.emit(
                    "store:unavailable",
                    "error",
                    "store unavailable; dispatcher waits",
                    reason=error.reason,
                )
                timeout = IDLE_WAKE_SECONDS
            except Exception:
                # The claim loop outlives any one failure: a dead loop would strand the queue.
                log.exception("claiming work failed; dispatcher waits")
                timeout = IDLE_WAKE_SECONDS
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._wake.wait()

    async def _idle_seconds(self) -> float:
        # Only work that could be claimed now counts: running work wakes the loop itself
        # when it finishes, so waiting for it here would only spin.
        next_due = await self._store.next_due_at(
            self._slots.open_sinks(), include_fetches=self._slots.has_free_fetch
        )
        # A sink out of tokens is left out above: look again when its next one is due.
        due_seconds = IDLE_WAKE_SECONDS if next_due is None else next_due - self._clock()
        return max(min(due_seconds, IDLE_WAKE_SECONDS, self._slots.next_token_seconds()), 0.005)

    async def _claim(self) -> bool:
        """Claim and start what is due within the free slots; True if the claim took
        all it was offered somewhere, so that more may be due at once."""
        # Reserved before the await: a fetch finishing meanwhile claims only what is left.
        free = self._slots.reserve_free(fetches=True)
        try:
            fetches, deliveries = await self._store.claim(
                fetch_limit=free.fetches,
                free_slots=free.per_sink,
                total_limit=free.deliveries,
                lease_seconds=self._limits.lease_seconds,
            )
        finally:
            self._slots.release(free)
        for fetch in fetches:
            if not self._running.start_fetch(fetch):
                continue
            self._slots.reserve(FETCH_SLOT)
            self._spawn(self._fetches, self._run_fetch(fetch))
        self._start_deliveries(deliveries)
        fill = self._slots.fill(
            free, fetches=len(fetches), per_sink=Counter(task.sink for task in deliveries)
        )
        self._short_of_slots = fill.short_of_slots
        return fill.full

    def _start_deliveries(self, tasks: list[DeliveryTask]) -> None:
        prepared: dict[tuple[str, bool, str | None], Prepared] = {}
        for task in tasks:
            if not self._running.start_delivery(task):
                continue
            # An edited envelope is its own delivery's: the event's other sinks get theirs.
            key = (task.event_id, task.is_replay, task.sink if task.edited_envelope else None)
            if key not in prepared:
                prepared[key] = prepare(task)
            self._slots.start_delivery(task.sink)
            self._spawn(self._deliveries, self._run_delivery(task, prepared[key]))

    def _spawn(self, group: set[asyncio.Task[None]], work: Any) -> None:
        task: asyncio.Task[None] = asyncio.create_task(work)
        group.add(task)
        task.add_done_callback(group.discard)

    # -- fetching --------------------------------------------------------

    async def _run_fetch(self, task: FetchTask) -> None:
        assert self._fetcher is not None
        attempt_number = task.attempts + 1
        context: dict[str, Any] = {
            "webhook_id": task.event_id,
            "job_id": task.job_id,
            "type": task.event_type,
            "attempt": attempt_number,
        }
        try:
            await self._fetcher.fetch(task, attempt_number, context)
        except StoreUnavailableError as error:
            log.error("could not record job fetch", reason=error.reason, **context)
        except Exception:  # a bug must not end dispatching; the lease expiry retries it
            log.exception("job fetch failed unexpectedly", **context)
        finally:
            self._slots.release(FETCH_SLOT)
            self._running.end_fetch(task)

    async def _finish_fetch(self, task: FetchTask, fetched: FetchedJob, attempt: Attempt) -> None:
        # The event's sinks start straight from this transaction, without waiting
        # for the next claim round.
        free = self._slots.reserve_free(fetches=False)
        try:
            deliveries = await self._store.finish_fetch(
                task.event_id,
                job=fetched.job,
                result_url=fetched.result_url,
                attempt=attempt,
                free_slots=free.per_sink,
                total_limit=free.deliveries,
                lease_seconds=self._limits.lease_seconds,
                token=self._running.fetch_token(task),
            )
        finally:
            self._slots.release(free)
        self._start_deliveries(deliveries)
        fill = self._slots.fill(
            free, fetches=None, per_sink=Counter(task.sink for task in deliveries)
        )
        # A delivery left for lack of a slot waits for one; the fetch slot this
        # frees is worth a claim round only if job fetches were waiting for one.
        self._short_of_slots = self._short_of_slots or fill.short_of_slots
        self._wake_if_short_of_slots()

    # -- delivering ------------------------------------------------------

    async def _run_delivery(self, task: DeliveryTask, prepared: Prepared) -> None:
        """One attempt: whatever fails while preparing or running it is that attempt's
        failure (retried, then dead), recorded like a sink's own."""
        runtime = self._sinks[task.sink]
        context: dict[str, Any] = {
            "webhook_id": task.event_id,
            "job_id": task.job_id,
            "type": task.event_type,
            "sink": task.sink,
            "attempt": task.attempts + 1,
        }
        started_at = self._clock()
        began = time.perf_counter()
        answer: SinkResult | SinkError
        try:
            if isinstance(prepared, Exception):
                log.error(
                    "delivery could not be prepared",
                    reason=f"{type(prepared).__name__}: {prepared}",
                    exc_info=prepared,
                    **context,
                )
                answer = sink_failure(prepared, timeout_seconds=runtime.timeout_seconds)
            else:
                delivery = delivery_of(task, *prepared)
                context.update(
                    status=delivery.job_status,
                    extraction_id=extraction_id(envelope_job(delivery.envelope)),
                )
                answer = await self._deliver(runtime, delivery, context)
        except Exception as error:
            log.exception("delivery failed unexpectedly", **context)
            answer = sink_failure(error, timeout_seconds=runtime.timeout_seconds)
        finally:
            # The slot is free once the sink is done: the next claim can share a
            # transaction with this record (the lease keeps this delivery unclaimed).
            self._slots.release(delivery_slot(task.sink))
            self._wake_if_short_of_slots()
        duration_seconds = time.perf_counter() - began
        try:
            await self._record(task, runtime, answer, started_at, duration_seconds, context)
        except StoreUnavailableError as error:
            # The lease runs out and the delivery is made again: at least once, never lost.
            log.error("could not record delivery outcome", reason=error.reason, **context)
        except Exception:
            log.exception("recording the delivery failed unexpectedly", **context)
        finally:
            self._running.end_delivery(task)

    async def _deliver(
        self, runtime: SinkRuntime, delivery: Delivery, context: dict[str, Any]
    ) -> SinkResult | SinkError:
        """The sink's answer, or its failure as the `SinkError` that decides retry or dead."""
        try:
            async with asyncio.timeout(runtime.timeout_seconds + SINK_TIMEOUT_MARGIN_SECONDS):
                return await runtime.sink.deliver(delivery)
        except Exception as error:
            if not isinstance(error, SinkError | TimeoutError):
                # A sink bug must not lose the delivery: it is retried like any failure.
                log.exception("sink raised unexpectedly", **context)
            return sink_failure(error, timeout_seconds=runtime.timeout_seconds)

    async def _record(
        self,
        task: DeliveryTask,
        runtime: SinkRuntime,
        answer: SinkResult | SinkError,
        started_at: float,
        duration_seconds: float,
        context: dict[str, Any],
    ) -> None:
        """Decide the delivery's outcome, then one store write, one metric and one log line."""
        number = int(context["attempt"])
        self._metrics.delivery_seconds.labels(sink=task.sink).observe(duration_seconds)
        context["duration_ms"] = round(duration_seconds * 1000, 1)
        decision = decide_delivery(
            answer, attempt=number, policy=runtime.policy, now=self._clock(), rng=self._rng
        )
        attempt = Attempt(
            sink=task.sink,
            attempt=number,
            started_at=started_at,
            duration_ms=duration_seconds * 1000,
            outcome=decision.outcome,
            status_code=answer.status_code,
            error=decision.reason,
            output_tail=answer.output_tail,
            edited_envelope=task.edited_envelope,
        )
        await self._store.finish_delivery(
            task.event_id,
            task.sink,
            outcome=decision.outcome,
            attempt=attempt,
            next_attempt_at=decision.next_attempt_at,
            token=self._running.delivery_token(task),
        )
        if decision.next_attempt_at is not None:
            # A retry is due at a time the idle loop may not have seen: look again.
            self.notify()
        self._metrics.deliveries.labels(sink=task.sink, outcome=decision.outcome).inc()
        level, message = _DELIVERY_LOG[decision.outcome]
        fields: dict[str, Any] = (
            {"detail": answer.detail}
            if isinstance(answer, SinkResult)
            else {"reason": decision.reason, "status_code": answer.status_code}
        )
        if decision.retry_in_seconds is not None:
            fields["retry_in_seconds"] = round(decision.retry_in_seconds, 2)
        log.log(level, message, **fields, **context)
