"""The dispatcher alone: its pure decisions, its slots, and its I/O against a fake store."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import random
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import structlog

from pulse_relay import dispatcher as dispatcher_module
from pulse_relay.dispatcher import (
    DeliveryDecision,
    Dispatcher,
    DispatcherLimits,
    SinkRuntime,
    decide_delivery,
    sink_failure,
)
from pulse_relay.fetch import FetchDecision, decide_fetch
from pulse_relay.metrics import Metrics
from pulse_relay.pulse import (
    NOT_FOUND_MAX_ATTEMPTS,
    FetchedJob,
    PulseAuthError,
    PulseError,
    PulseNotFoundError,
    PulsePermanentError,
    PulseRetryableError,
)
from pulse_relay.retry import RetryPolicy
from pulse_relay.running import RunningWork
from pulse_relay.sinks.base import (
    Delivery,
    PermanentSinkError,
    RetryableSinkError,
    SinkError,
    SinkResult,
)
from pulse_relay.slots import FETCH_SLOT, Fill, Slots, delivery_slot
from pulse_relay.store import Attempt, DeliveryTask, FetchTask
from tests.helpers import FakeClock, wait_for

NOW = 1_000_000.0


class CeilingRng(random.Random):
    """Always draws the top of the jitter window, so a delay is the policy's ceiling."""

    def uniform(self, a: float, b: float) -> float:
        return b


# -- the delivery decision: every failure class x first / middle / last attempt --

POLICY = RetryPolicy(initial_seconds=1.0, max_seconds=600.0, max_attempts=10)
FIRST, MIDDLE, LAST = 1, 5, POLICY.max_attempts
# With CeilingRng the backoff after attempt n is min(600, 2 ** (n - 1)).
BACKOFF = {FIRST: 1.0, MIDDLE: 16.0}

TRANSIENT = RetryableSinkError("HTTP 503", status_code=503)
THROTTLED = RetryableSinkError("HTTP 429", status_code=429, retry_after_seconds=30.0)
PERMANENT = PermanentSinkError("HTTP 400: bad request", status_code=400)
TIMED_OUT = sink_failure(TimeoutError(), timeout_seconds=5.0)
CRASHED = sink_failure(ValueError("boom"), timeout_seconds=5.0)


def retry(reason: str, delay: float) -> DeliveryDecision:
    return DeliveryDecision("retry", reason, delay, NOW + delay)


def gave_up(reason: str) -> DeliveryDecision:
    return DeliveryDecision("dead", f"gave up after {LAST} attempts: {reason}")


DELIVERY_CASES: list[tuple[str, SinkResult | SinkError, int, DeliveryDecision]] = [
    ("success", SinkResult("HTTP 200", 200), FIRST, DeliveryDecision("delivered")),
    ("success", SinkResult("HTTP 200", 200), MIDDLE, DeliveryDecision("delivered")),
    ("success", SinkResult("HTTP 200", 200), LAST, DeliveryDecision("delivered")),
    ("transient", TRANSIENT, FIRST, retry("HTTP 503", BACKOFF[FIRST])),
    ("transient", TRANSIENT, MIDDLE, retry("HTTP 503", BACKOFF[MIDDLE])),
    ("transient", TRANSIENT, LAST, gave_up("HTTP 503")),
    ("retry-after", THROTTLED, FIRST, retry("HTTP 429", 30.0)),
    ("retry-after", THROTTLED, MIDDLE, retry("HTTP 429", 30.0)),
    ("retry-after", THROTTLED, LAST, gave_up("HTTP 429")),
    ("permanent", PERMANENT, FIRST, DeliveryDecision("dead", "HTTP 400: bad request")),
    ("permanent", PERMANENT, MIDDLE, DeliveryDecision("dead", "HTTP 400: bad request")),
    ("permanent", PERMANENT, LAST, DeliveryDecision("dead", "HTTP 400: bad request")),
    ("timeout", TIMED_OUT, FIRST, retry("no answer within 5.0 s", BACKOFF[FIRST])),
    ("timeout", TIMED_OUT, MIDDLE, retry("no answer within 5.0 s", BACKOFF[MIDDLE])),
    ("timeout", TIMED_OUT, LAST, gave_up("no answer within 5.0 s")),
    ("sink bug", CRASHED, FIRST, retry("internal error: ValueError: boom", BACKOFF[FIRST])),
    ("sink bug", CRASHED, LAST, gave_up("internal error: ValueError: boom")),
]


@pytest.mark.parametrize(
    ("answer", "attempt", "expected"),
    [case[1:] for case in DELIVERY_CASES],
    ids=[f"{case[0]}-attempt-{case[2]}" for case in DELIVERY_CASES],
)
def test_the_delivery_decision_for_every_failure_class_and_attempt(
    answer: SinkResult | SinkError, attempt: int, expected: DeliveryDecision
) -> None:
    decision = decide_delivery(answer, attempt=attempt, policy=POLICY, now=NOW, rng=CeilingRng())
    assert decision == expected


def test_a_delivery_retry_is_jittered_within_the_policy_window() -> None:
    rng = random.Random(7)
    delays = [
        decide_delivery(TRANSIENT, attempt=MIDDLE, policy=POLICY, now=NOW, rng=rng)
        for _ in range(50)
    ]
    assert {d.outcome for d in delays} == {"retry"}
    seconds = [d.retry_in_seconds for d in delays if d.retry_in_seconds is not None]
    assert len(set(seconds)) > 1
    assert all(POLICY.floor_seconds <= s <= BACKOFF[MIDDLE] for s in seconds)
    assert all(d.next_attempt_at == NOW + d.retry_in_seconds for d in delays)


def test_a_sink_failure_keeps_a_sink_error_and_names_anything_else() -> None:
    assert sink_failure(PERMANENT, timeout_seconds=1.0) is PERMANENT
    assert TIMED_OUT.reason == "no answer within 5.0 s"
    assert not isinstance(TIMED_OUT, PermanentSinkError)
    assert CRASHED.reason == "internal error: ValueError: boom"


# -- the fetch decision: every Pulse failure class x first / middle / last attempt --

FETCH_POLICY = RetryPolicy(initial_seconds=1.0, max_seconds=600.0)
# A 404 is the only fetch failure with a last attempt; the others have none.
F_FIRST, F_MIDDLE, F_LAST = 1, 3, NOT_FOUND_MAX_ATTEMPTS
F_BACKOFF = {F_FIRST: 1.0, F_MIDDLE: 4.0, F_LAST: 16.0}
DONE = FetchedJob(
    job={"status": "completed", "result": {"extraction_id": "ext_1"}}, result_url=None
)
RUNNING = FetchedJob(job={"status": "processing"}, result_url=None)
NOT_TERMINAL = "job is 'processing', not yet terminal as job.completed says"
P_TRANSIENT = PulseRetryableError("GET /job: HTTP 503", 503)
P_THROTTLED = PulseRetryableError("GET /job: HTTP 429", 429, retry_after_seconds=120.0)
P_TIMED_OUT = PulseRetryableError("GET /job: timed out")
P_AUTH = PulseAuthError("GET /job: HTTP 401", 401)
P_AUTH_LATER = PulseAuthError("GET /job: HTTP 401", 401, retry_after_seconds=900.0)
P_NOT_FOUND = PulseNotFoundError("GET /job: HTTP 404", 404)
P_PERMANENT = PulsePermanentError("GET /job: HTTP 400", 400)


def fetch_retry(label: Any, error: PulseError, delay: float) -> FetchDecision:
    return FetchDecision(
        "retry", label, error.status_code, error.reason, delay, NOW + delay, fetched=None
    )


def fetch_dead(error: PulseError) -> FetchDecision:
    return FetchDecision("dead", "dead", error.status_code, error.reason)


def fetch_cases() -> list[tuple[str, FetchedJob | PulseError, int, FetchDecision]]:
    cases: list[tuple[str, FetchedJob | PulseError, int, FetchDecision]] = []
    for attempt in (F_FIRST, F_MIDDLE, F_LAST):
        backoff = F_BACKOFF[attempt]
        cases += [
            ("fetched", DONE, attempt, FetchDecision("fetched", "ok", 200, fetched=DONE)),
            (
                "not-terminal",
                RUNNING,
                attempt,
                FetchDecision("retry", "not_terminal", 200, NOT_TERMINAL, backoff, NOW + backoff),
            ),
            ("transient", P_TRANSIENT, attempt, fetch_retry("retry", P_TRANSIENT, backoff)),
            ("timeout", P_TIMED_OUT, attempt, fetch_retry("retry", P_TIMED_OUT, backoff)),
            (
                "429-retry-after",
                P_THROTTLED,
                attempt,
                fetch_retry("retry", P_THROTTLED, max(backoff, 120.0)),
            ),
            ("auth", P_AUTH, attempt, fetch_retry("auth_error", P_AUTH, 300.0)),
            (
                "auth-retry-after",
                P_AUTH_LATER,
                attempt,
                fetch_retry("auth_error", P_AUTH_LATER, 900.0),
            ),
            (
                "not-found",
                P_NOT_FOUND,
                attempt,
                fetch_dead(P_NOT_FOUND)
                if attempt == F_LAST
                else fetch_retry("not_found", P_NOT_FOUND, backoff),
            ),
            ("permanent", P_PERMANENT, attempt, fetch_dead(P_PERMANENT)),
        ]
    return cases


@pytest.mark.parametrize(
    ("answer", "attempt", "expected"),
    [case[1:] for case in fetch_cases()],
    ids=[f"{case[0]}-attempt-{case[2]}" for case in fetch_cases()],
)
def test_the_fetch_decision_for_every_failure_class_and_attempt(
    answer: FetchedJob | PulseError, attempt: int, expected: FetchDecision
) -> None:
    decision = decide_fetch(
        "job.completed", answer, attempt=attempt, policy=FETCH_POLICY, now=NOW, rng=CeilingRng()
    )
    assert decision == expected


def test_an_event_that_does_not_claim_a_finished_job_takes_the_job_as_it_is() -> None:
    decision = decide_fetch(
        "job.processing", RUNNING, attempt=1, policy=FETCH_POLICY, now=NOW, rng=CeilingRng()
    )
    assert decision == FetchDecision("fetched", "ok", 200, fetched=RUNNING)


# -- slots ---------------------------------------------------------------------


def test_slots_reserve_what_is_free_and_release_it() -> None:
    slots = Slots({"a": 2, "b": 1}, delivery_limit=2, fetch_limit=1)
    held = slots.reserve_free(fetches=True)
    assert (held.per_sink, held.deliveries, held.fetches) == ({"b": 1, "a": 2}, 2, 1)
    assert slots.open_sinks() == [] and not slots.has_free_fetch
    again = slots.reserve_free(fetches=True)
    assert (again.deliveries, again.fetches) == (0, 0)
    slots.release(again)
    slots.release(held)
    assert slots.open_sinks() == ["a", "b"] and slots.has_free_fetch


def test_slots_count_running_deliveries_per_sink_and_in_all() -> None:
    slots = Slots({"a": 1, "b": 3}, delivery_limit=2, fetch_limit=0)
    slots.reserve(delivery_slot("a"))
    assert slots.open_sinks() == ["b"]
    free = slots.reserve_free(fetches=True)
    assert free.per_sink == {"a": 0, "b": 3}
    assert (free.deliveries, free.fetches) == (1, 0)
    slots.release(free)
    slots.reserve(delivery_slot("b"))
    assert slots.open_sinks() == []
    slots.release(delivery_slot("a"))
    slots.release(delivery_slot("b"))
    assert slots.open_sinks() == ["a", "b"] and not slots.has_free_fetch


def test_a_claim_is_full_where_it_took_all_it_was_offered_and_short_where_offered_none() -> None:
    slots = Slots({"a": 2, "b": 2}, delivery_limit=3, fetch_limit=1)
    offered = slots.reserve_free(fetches=True)
    assert slots.fill(offered, fetches=0, per_sink={"a": 1}) == Fill(False, False)
    assert slots.fill(offered, fetches=1, per_sink={}) == Fill(True, True)
    assert slots.fill(offered, fetches=0, per_sink={"b": 2}) == Fill(True, True)
    assert slots.fill(offered, fetches=0, per_sink={"a": 1, "b": 1, "c": 1}) == Fill(True, True)
    slots.release(offered)
    # b's slots all run: b's due work may wait for one; so may job fetches for theirs.
    slots.reserve(delivery_slot("b"))
    slots.reserve(delivery_slot("b"))
    slots.reserve(FETCH_SLOT)
    offered = slots.reserve_free(fetches=True)
    assert slots.fill(offered, fetches=0, per_sink={}) == Fill(False, True)
    # A finish_fetch asks for no fetches: the busy fetch slot is not its shortage.
    slots.release(offered)
    slots.release(delivery_slot("b"))
    assert slots.fill(slots.reserve_free(fetches=False), fetches=None, per_sink={}) == Fill(
        False, False
    )


def test_slots_rotate_the_sink_order_so_no_sink_always_comes_first() -> None:
    slots = Slots({"a": 1, "b": 1, "c": 1}, delivery_limit=3, fetch_limit=0)
    firsts = []
    for _ in range(3):
        held = slots.reserve_free(fetches=False)
        firsts.append(next(iter(held.per_sink)))
        slots.release(held)
    assert sorted(firsts) == ["a", "b", "c"]


# -- the dispatcher with a fake store, fake sinks and a fake Pulse client ----------


@dataclass
class FakeStore:
    """Hands out queued work (within the slots asked for) and logs every write.

    `after_fetch` deliveries become claimable once their job is fetched, as in the store.
    """

    fetches: list[FetchTask] = field(default_factory=list)
    deliveries: list[DeliveryTask] = field(default_factory=list)
    after_fetch: list[DeliveryTask] = field(default_factory=list)
    writes: list[tuple[Any, ...]] = field(default_factory=list)
    # (write, event id, lease token) of every write that names a token.
    tokens: list[tuple[str, str, str | None]] = field(default_factory=list)
    claims: list[dict[str, Any]] = field(default_factory=list)
    claimed_deliveries: int = 0
    # How often the claim loop, having found nothing more, asked when to look again.
    idle_looks: int = 0

    async def claim(self, **limits: Any) -> tuple[list[FetchTask], list[DeliveryTask]]:
        self.claims.append(limits)
        fetches, self.fetches = (
            self.fetches[: limits["fetch_limit"]],
            self.fetches[limits["fetch_limit"] :],
        )
        deliveries = self._take(limits["free_slots"], limits["total_limit"])
        self.claimed_deliveries += len(deliveries)
        return fetches, deliveries

    def _take(self, free_slots: dict[str, int], total_limit: int) -> list[DeliveryTask]:
        taken: list[DeliveryTask] = []
        free = dict(free_slots)
        for task in list(self.deliveries):
            if len(taken) < total_limit and free.get(task.sink, 0) > 0:
                free[task.sink] -= 1
                taken.append(task)
                self.deliveries.remove(task)
        return taken

    async def finish_fetch(self, event_id: str, **kwargs: Any) -> list[DeliveryTask]:
        self.tokens.append(("finish_fetch", event_id, kwargs.pop("token")))
        self.writes.append(("finish_fetch", event_id, kwargs))
        self.deliveries += self.after_fetch
        self.after_fetch = []
        return self._take(kwargs["free_slots"], kwargs["total_limit"])

    async def retry_fetch(
        self, event_id: str, *, next_fetch_at: float, attempt: Attempt, token: str | None
    ) -> None:
        self.tokens.append(("retry_fetch", event_id, token))
        self.writes.append(("retry_fetch", event_id, next_fetch_at, attempt))

    async def fail_fetch(self, event_id: str, *, attempt: Attempt, token: str | None) -> None:
        self.tokens.append(("fail_fetch", event_id, token))
        self.writes.append(("fail_fetch", event_id, attempt))

    async def finish_delivery(self, event_id: str, sink: str, **kwargs: Any) -> None:
        self.tokens.append(("finish_delivery", event_id, kwargs.pop("token")))
        self.writes.append(("finish_delivery", event_id, sink, kwargs))

    async def next_due_at(self, sinks: list[str], *, include_fetches: bool) -> float | None:
        self.idle_looks += 1
        return None

    async def release_leases(self) -> None:
        self.writes.append(("release_leases",))

    async def renew_leases(self, *running: Any, lease_seconds: float) -> None:
        self.writes.append(("renew_leases",))


@dataclass
class FakeSink:
    """Answers with `answer` (or raises it); `gate`, when given, holds each delivery."""

    name: str
    answer: SinkResult | Exception = field(default_factory=lambda: SinkResult("ok", 200, "out"))
    gate: asyncio.Event | None = None
    received: list[Delivery] = field(default_factory=list)
    running: int = 0
    most_running: int = 0

    async def deliver(self, delivery: Delivery) -> SinkResult:
        self.received.append(delivery)
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        try:
            if self.gate is not None:
                await self.gate.wait()
            if isinstance(self.answer, Exception):
                raise self.answer
            return self.answer
        finally:
            self.running -= 1

    async def close(self) -> None:
        pass


@dataclass
class FakePulse:
    """Answers with `answer` (or raises it); `gate`, when given, holds each fetch."""

    answer: FetchedJob | PulseError
    gate: asyncio.Event | None = None
    asked: list[str] = field(default_factory=list)

    async def fetch_job(self, job_id: str) -> FetchedJob:
        self.asked.append(job_id)
        if self.gate is not None:
            await self.gate.wait()
        if isinstance(self.answer, PulseError):
            raise self.answer
        return self.answer


def delivery_task(event_id: str = "msg_1", sink: str = "a", attempts: int = 0) -> DeliveryTask:
    return DeliveryTask(
        event_id=event_id,
        sink=sink,
        attempts=attempts,
        is_replay=False,
        event_type="job.completed",
        job_id="job-1",
        received_at=NOW - 5,
        source="webhook",
        body=b'{"type": "job.completed", "data": {"job_id": "job-1"}}',
        job={"status": "completed", "result": {"extraction_id": "ext_1"}},
        result_url=None,
    )


RunDispatcher = Callable[..., Any]


@pytest.fixture
async def run() -> AsyncIterator[RunDispatcher]:
    """Start a dispatcher over fakes; every one started is stopped at the end."""
    started: list[Dispatcher] = []

    def start(
        store: FakeStore,
        *sinks: FakeSink,
        pulse: FakePulse | None = None,
        concurrency: int = 1,
        timeout_seconds: float = 5.0,
        delivery_limit: int = 4,
        rates_per_second: dict[str, float] | None = None,
        monotonic: Callable[[], float] | None = None,
    ) -> tuple[Dispatcher, Metrics]:
        metrics = Metrics()
        rates = rates_per_second or {}
        policy = RetryPolicy(max_attempts=3)
        runtimes = {
            sink.name: SinkRuntime(sink, concurrency, timeout_seconds, policy, rates.get(sink.name))
            for sink in sinks
        }
        dispatcher = Dispatcher(
            store=store,  # type: ignore[arg-type]
            pulse=pulse,  # type: ignore[arg-type]
            sinks=runtimes,
            metrics=metrics,
            limits=DispatcherLimits(concurrency=delivery_limit, fetch_concurrency=2),
            clock=lambda: NOW,
            rng=CeilingRng(),
            monotonic=monotonic or FakeClock(),
        )
        dispatcher.start()
        started.append(dispatcher)
        return dispatcher, metrics

    yield start
    for dispatcher in started:
        await dispatcher.stop(grace_seconds=1.0)


def written(store: FakeStore, kind: str) -> list[tuple[Any, ...]]:
    return [write for write in store.writes if write[0] == kind]


def counted(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


async def test_a_claimed_delivery_is_delivered_and_written_once(run: RunDispatcher) -> None:
    store = FakeStore(deliveries=[delivery_task()])
    sink = FakeSink("a")
    with structlog.testing.capture_logs() as logs:
        _, metrics = run(store, sink)
        await wait_for(lambda: written(store, "finish_delivery"))

    (delivery,) = sink.received
    assert delivery.job_status == "completed"
    assert json.loads(delivery.body)["id"] == "msg_1"
    ((_, event_id, sink_name, kwargs),) = written(store, "finish_delivery")
    assert (event_id, sink_name) == ("msg_1", "a")
    assert kwargs["outcome"] == "delivered" and kwargs["next_attempt_at"] is None
    attempt = kwargs["attempt"]
    assert (attempt.sink, attempt.attempt, attempt.outcome) == ("a", 1, "delivered")
    assert (attempt.status_code, attempt.error, attempt.output_tail) == (200, None, "out")
    assert attempt.started_at == NOW
    assert counted(metrics, "pulse_relay_deliveries_total", sink="a", outcome="delivered") == 1
    (line,) = [entry for entry in logs if entry["event"] == "delivered"]
    assert line["log_level"] == "info" and line["detail"] == "ok"
    assert line["extraction_id"] == "ext_1" and isinstance(line["duration_ms"], float)


async def test_a_failing_sink_is_written_once_as_a_retry_at_the_decided_time(
    run: RunDispatcher,
) -> None:
    store = FakeStore(deliveries=[delivery_task()])
    refusal = RetryableSinkError("HTTP 503", status_code=503, retry_after_seconds=30.0)
    with structlog.testing.capture_logs() as logs:
        _, metrics = run(store, FakeSink("a", refusal))
        await wait_for(lambda: written(store, "finish_delivery"))

    ((*_, kwargs),) = written(store, "finish_delivery")
    assert kwargs["outcome"] == "retry" and kwargs["next_attempt_at"] == NOW + 30.0
    assert (kwargs["attempt"].outcome, kwargs["attempt"].error) == ("retry", "HTTP 503")
    assert counted(metrics, "pulse_relay_deliveries_total", sink="a", outcome="retry") == 1
    (line,) = [entry for entry in logs if entry["event"] == "delivery failed; will retry"]
    assert line["log_level"] == "warning" and line["retry_in_seconds"] == 30.0
    assert line["status_code"] == 503 and line["reason"] == "HTTP 503"


async def test_the_last_attempt_of_a_failing_sink_is_written_dead(run: RunDispatcher) -> None:
    store = FakeStore(deliveries=[delivery_task(attempts=2)])
    with structlog.testing.capture_logs() as logs:
        _, metrics = run(store, FakeSink("a", RetryableSinkError("HTTP 500", status_code=500)))
        await wait_for(lambda: written(store, "finish_delivery"))

    ((*_, kwargs),) = written(store, "finish_delivery")
    assert kwargs["outcome"] == "dead" and kwargs["next_attempt_at"] is None
    assert kwargs["attempt"].error == "gave up after 3 attempts: HTTP 500"
    assert counted(metrics, "pulse_relay_deliveries_total", sink="a", outcome="dead") == 1
    (line,) = [entry for entry in logs if entry["event"] == "delivery dead"]
    assert line["log_level"] == "error" and line["reason"] == kwargs["attempt"].error


async def test_a_sink_that_hangs_or_crashes_is_retried_not_lost(
    run: RunDispatcher, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dispatcher_module, "SINK_TIMEOUT_MARGIN_SECONDS", 0.0)
    store = FakeStore(deliveries=[delivery_task(sink="slow"), delivery_task(sink="buggy")])
    slow = FakeSink("slow", gate=asyncio.Event())
    with structlog.testing.capture_logs() as logs:
        run(store, slow, FakeSink("buggy", KeyError("job")), timeout_seconds=0.05)
        await wait_for(lambda: len(written(store, "finish_delivery")) == 2)

    errors = {write[2]: write[3]["attempt"].error for write in written(store, "finish_delivery")}
    assert errors == {"slow": "no answer within 0.05 s", "buggy": "internal error: KeyError: 'job'"}
    assert {write[3]["outcome"] for write in written(store, "finish_delivery")} == {"retry"}
    assert [entry["sink"] for entry in logs if entry["event"] == "sink raised unexpectedly"] == [
        "buggy"
    ]


async def test_a_sink_never_runs_more_deliveries_than_its_concurrency(
    run: RunDispatcher,
) -> None:
    store = FakeStore(deliveries=[delivery_task(f"msg_{n}") for n in range(3)])
    sink = FakeSink("a", gate=asyncio.Event())
    run(store, sink, concurrency=1)
    await wait_for(lambda: sink.running == 1)
    assert all(claim["free_slots"].get("a", 0) == 0 for claim in store.claims[1:])
    assert sink.gate is not None
    sink.gate.set()
    await wait_for(lambda: len(written(store, "finish_delivery")) == 3)
    assert sink.most_running == 1


async def test_a_claim_round_that_left_nothing_behind_is_not_repeated_until_new_work(
    run: RunDispatcher, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each claim round is a round trip to a shared store: none is spent where it
    cannot find anything (nothing was left behind, and no slot was short)."""
    # Nothing but the test wakes the claim loop: no idle look.
    monkeypatch.setattr(dispatcher_module, "IDLE_WAKE_SECONDS", 60.0)
    store = FakeStore(deliveries=[delivery_task("msg_1")])
    sink = FakeSink("a")
    dispatcher, _ = run(store, sink, concurrency=4)
    await wait_for(lambda: store.idle_looks == 1)
    # One delivery of four slots offered: no second round at once.
    assert len(store.claims) == 1
    await wait_for(lambda: written(store, "finish_delivery"))
    store.deliveries.append(delivery_task("msg_2"))
    dispatcher.notify()  # as a commit does
    await wait_for(lambda: store.idle_looks == 2)
    # The freed slot woke nothing (no work was short of it); the commit did.
    assert len(store.claims) == 2
    await wait_for(lambda: len(written(store, "finish_delivery")) == 2)


async def test_a_fetched_job_is_written_once_and_its_deliveries_start(
    run: RunDispatcher,
) -> None:
    store = FakeStore(
        fetches=[FetchTask("msg_1", "job-1", "job.completed", 0)],
        after_fetch=[delivery_task()],
    )
    pulse = FakePulse(DONE)
    sink = FakeSink("a")
    with structlog.testing.capture_logs() as logs:
        _, metrics = run(store, sink, pulse=pulse)
        await wait_for(lambda: written(store, "finish_delivery"))

    assert pulse.asked == ["job-1"]
    # Started from finish_fetch's own transaction, not by a later claim round.
    assert store.claimed_deliveries == 0
    kinds = [write[0] for write in store.writes]
    assert kinds.count("finish_fetch") == 1 and kinds.count("finish_delivery") == 1
    ((_, event_id, kwargs),) = written(store, "finish_fetch")
    assert event_id == "msg_1" and kwargs["job"] == DONE.job
    assert (kwargs["attempt"].outcome, kwargs["attempt"].status_code) == ("fetched", 200)
    assert counted(metrics, "pulse_relay_job_fetches_total", outcome="ok") == 1
    (line,) = [entry for entry in logs if entry["event"] == "job fetched"]
    assert line["extraction_id"] == "ext_1" and line["status"] == "completed"


@pytest.mark.parametrize(
    ("error", "attempts", "write", "label"),
    [
        (P_TRANSIENT, 0, "retry_fetch", "retry"),
        (P_AUTH, 0, "retry_fetch", "auth_error"),
        (P_NOT_FOUND, 0, "retry_fetch", "not_found"),
        (P_NOT_FOUND, F_LAST - 1, "fail_fetch", "dead"),
        (P_PERMANENT, 0, "fail_fetch", "dead"),
    ],
)
async def test_a_failed_fetch_is_written_once_as_retry_or_dead(
    run: RunDispatcher, error: PulseError, attempts: int, write: str, label: str
) -> None:
    store = FakeStore(fetches=[FetchTask("msg_1", "job-1", "job.completed", attempts)])
    _, metrics = run(store, pulse=FakePulse(error))
    await wait_for(lambda: written(store, write))

    assert [w[0] for w in store.writes] == [write]
    attempt = store.writes[0][-1]
    assert (attempt.sink, attempt.attempt, attempt.error) == (None, attempts + 1, error.reason)
    assert attempt.outcome == ("dead" if write == "fail_fetch" else "retry")
    assert counted(metrics, "pulse_relay_job_fetches_total", outcome=label) == 1


@dataclass
class FailingOnceStore(FakeStore):
    """A store whose first claim fails with an error the dispatcher has no rule for."""

    failed: int = 0

    async def claim(self, **limits: Any) -> tuple[list[FetchTask], list[DeliveryTask]]:
        if not self.failed:
            self.failed += 1
            raise RuntimeError("claim broke")
        return await super().claim(**limits)


async def test_the_claim_loop_outlives_an_unexpected_error(run: RunDispatcher) -> None:
    store = FailingOnceStore(deliveries=[delivery_task()])
    with structlog.testing.capture_logs() as logs:
        dispatcher, _ = run(store, FakeSink("a"))
        await wait_for(lambda: bool(written(store, "finish_delivery")))
    assert dispatcher.is_running
    (line,) = [entry for entry in logs if entry["event"].startswith("claiming work failed")]
    assert line["log_level"] == "error"


async def test_a_delivery_that_cannot_be_prepared_is_its_own_failed_attempt(
    run: RunDispatcher,
) -> None:
    # No time can be formatted from NaN: building these envelopes raises ValueError.
    broken = dataclasses.replace(delivery_task("msg_broken", sink="a"), received_at=float("nan"))
    last_try = dataclasses.replace(broken, event_id="msg_last", sink="b", attempts=2)
    store = FakeStore(deliveries=[broken, delivery_task("msg_fine", sink="c"), last_try])
    sinks = [FakeSink("a"), FakeSink("b"), FakeSink("c")]
    with structlog.testing.capture_logs() as logs:
        dispatcher, metrics = run(store, *sinks)
        await wait_for(lambda: len(written(store, "finish_delivery")) == 3)

    assert len(store.claims) >= 1 and store.claimed_deliveries == 3
    outcomes = {
        write[1]: (write[3]["outcome"], write[3]["attempt"].error)
        for write in written(store, "finish_delivery")
    }
    reason = "internal error: ValueError: Invalid value NaN (not a number)"
    assert outcomes == {
        "msg_broken": ("retry", reason),
        "msg_fine": ("delivered", None),
        "msg_last": ("dead", f"gave up after 3 attempts: {reason}"),
    }
    assert [len(sink.received) for sink in sinks] == [0, 0, 1]
    assert counted(metrics, "pulse_relay_deliveries_total", sink="b", outcome="dead") == 1
    prepared = [entry for entry in logs if entry["event"] == "delivery could not be prepared"]
    assert sorted(entry["webhook_id"] for entry in prepared) == ["msg_broken", "msg_last"]
    assert dispatcher.is_running


async def test_fetch_failures_while_the_pulse_api_is_down_are_logged_once_a_window(
    run: RunDispatcher,
) -> None:
    fetches = [FetchTask(f"msg_{n}", f"job-{n}", "job.completed", 0) for n in range(12)]
    store = FakeStore(fetches=fetches)
    with structlog.testing.capture_logs() as logs:
        run(store, pulse=FakePulse(P_TIMED_OUT))
        await wait_for(lambda: len(written(store, "retry_fetch")) == len(fetches))

    # Every failure is recorded and counted; the clock stands still, so one line tells it.
    failed = [line for line in logs if line["event"] == "job fetch failed; will retry"]
    assert [(line["log_level"], line["reason"]) for line in failed] == [
        ("warning", "GET /job: timed out")
    ]


@dataclass
class ReclaimingStore(FakeStore):
    """A store whose lease on the work it hands out runs out at once: a later claim hands
    the same work back under a new token, as a store does to a relay whose event loop
    stalled past a lease (then the running attempt's token no longer matches)."""

    reclaims: list[FetchTask | DeliveryTask] = field(default_factory=list)

    async def claim(self, **limits: Any) -> tuple[list[FetchTask], list[DeliveryTask]]:
        fetches, deliveries = await super().claim(**limits)
        for task in [*fetches, *deliveries]:
            self.reclaims.append(dataclasses.replace(task, token="t2"))
        if fetches or deliveries:
            return fetches, deliveries
        again, self.reclaims = self.reclaims, []
        return (
            [task for task in again if isinstance(task, FetchTask)],
            [task for task in again if isinstance(task, DeliveryTask)],
        )


RECLAIMED = "claimed again while still running; the running attempt carries on"


async def test_a_delivery_claimed_again_while_it_runs_is_not_run_twice(
    run: RunDispatcher,
) -> None:
    store = ReclaimingStore(deliveries=[dataclasses.replace(delivery_task(), token="t1")])
    # Two slots: the second claim is not held back by the sink's concurrency.
    sink = FakeSink("a", gate=asyncio.Event())
    with structlog.testing.capture_logs() as logs:
        run(store, sink, concurrency=2)
        # A third claim starts only once the second one's work is started (or not).
        await wait_for(lambda: len(store.claims) >= 3)
        assert len(sink.received) == 1
        assert sink.gate is not None
        sink.gate.set()
        await wait_for(lambda: written(store, "finish_delivery"))

    assert len(sink.received) == 1 and sink.most_running == 1
    # Written under the newest claim's token, the one the store now matches.
    assert store.tokens == [("finish_delivery", "msg_1", "t2")]
    (line,) = [entry for entry in logs if entry["event"] == RECLAIMED]
    assert line["log_level"] == "warning"
    assert (line["webhook_id"], line["sink"]) == ("msg_1", "a")


@pytest.mark.parametrize(
    ("answer", "write"), [(None, "finish_fetch"), (P_TRANSIENT, "retry_fetch")]
)
async def test_a_fetch_claimed_again_while_it_runs_is_not_run_twice(
    run: RunDispatcher, answer: PulseError | None, write: str
) -> None:
    store = ReclaimingStore(fetches=[FetchTask("msg_1", "job-1", "job.completed", 0, "t1")])
    pulse = FakePulse(answer or DONE, gate=asyncio.Event())
    with structlog.testing.capture_logs() as logs:
        run(store, pulse=pulse)
        await wait_for(lambda: len(store.claims) >= 3)
        assert pulse.asked == ["job-1"]
        assert pulse.gate is not None
        pulse.gate.set()
        await wait_for(lambda: written(store, write))

    assert pulse.asked == ["job-1"]
    assert store.tokens == [(write, "msg_1", "t2")]
    assert [entry["webhook_id"] for entry in logs if entry["event"] == RECLAIMED] == ["msg_1"]


def test_running_work_is_renewed_and_finished_under_its_newest_claim() -> None:
    running = RunningWork()
    first = dataclasses.replace(delivery_task(), token="t1")
    again = dataclasses.replace(first, token="t2")
    fetch = FetchTask("msg_2", "job-2", "job.completed", 0, "f1")
    with structlog.testing.capture_logs() as logs:
        assert running.start_delivery(first) and running.start_fetch(fetch)
        assert not running.start_delivery(again)
        assert not running.start_fetch(dataclasses.replace(fetch, token="f2"))
    assert [entry["event"] for entry in logs] == [RECLAIMED, RECLAIMED]
    # What the heartbeat renews, and what the first attempt writes its outcome with.
    assert running.leases() == ([dataclasses.replace(fetch, token="f2")], [again])
    assert (running.delivery_token(first), running.fetch_token(fetch)) == ("t2", "f2")
    running.end_delivery(first)
    running.end_fetch(fetch)
    assert running.leases() == ([], [])
    # Once it has ended, a claim of the same delivery runs again.
    assert running.start_delivery(again)


# -- rate limits: a backlog to a rate-limited sink, on a clock moved by hand ---------


async def test_a_rate_limited_backlog_starts_at_the_rate_and_delays_no_other_sink(
    run: RunDispatcher,
) -> None:
    clock = FakeClock(0.0)
    # The limited sink's backlog comes first in the queue: the other sink is not behind it.
    store = FakeStore(
        deliveries=[delivery_task(f"msg_{n}", "slow") for n in range(20)]
        + [delivery_task(f"msg_{n}", "fast") for n in range(5)]
    )
    slow, fast = FakeSink("slow"), FakeSink("fast")
    dispatcher, _ = run(
        store,
        slow,
        fast,
        concurrency=20,
        delivery_limit=40,
        rates_per_second={"slow": 5.0},
        monotonic=clock,
    )

    async def settled_at(expected: int) -> None:
        """`expected` deliveries to the slow sink have started, and a claim round that
        began after them (at this same instant) starts no more."""
        await wait_for(lambda: len(slow.received) == expected)
        claims = len(store.claims)
        dispatcher.notify()
        await wait_for(lambda: len(store.claims) > claims)
        assert len(slow.received) == expected
        # What cannot start is not claimed: no lease is taken on it.
        assert store.claims[-1]["free_slots"]["slow"] == 0

    # At once: the burst (one second's worth) and every delivery of the unlimited sink.
    await wait_for(lambda: len(fast.received) == 5)
    await settled_at(5)
    for tenths in range(1, 31):
        clock.now = tenths / 10
        dispatcher.notify()
        # 5 a second after the burst; a token every 0.2 s, none for half of one.
        await settled_at(min(20, 5 + tenths // 2))
    assert len(store.deliveries) == 0


async def test_a_dispatcher_held_back_by_a_rate_looks_again_when_the_next_token_is_due(
    run: RunDispatcher, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Nothing else wakes the claim loop in this test: no notify, no idle look.
    monkeypatch.setattr(dispatcher_module, "IDLE_WAKE_SECONDS", 60.0)
    clock = FakeClock(0.0)
    store = FakeStore(deliveries=[delivery_task(f"msg_{n}", "slow") for n in range(3)])
    slow = FakeSink("slow")
    run(store, slow, concurrency=5, rates_per_second={"slow": 2.0}, monotonic=clock)
    await wait_for(lambda: len(slow.received) == 2)
    clock.now = 0.5
    await wait_for(lambda: len(slow.received) == 3, timeout_seconds=5.0)
