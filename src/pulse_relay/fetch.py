"""The fetch step: `GET /job/{id}` once per event, decided purely, then recorded once.

`decide_fetch` is pure (unit-tested apart from the I/O); `JobFetcher` calls the
Pulse API, asks it, and writes the outcome: the store, one metric, one log line.
A fetched job is handed back to the dispatcher, which starts its deliveries.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

from pulse_relay.events import is_terminal, says_terminal
from pulse_relay.logs import SampledLog, get_logger
from pulse_relay.metrics import Metrics
from pulse_relay.pulse import FetchedJob, PulseClient, PulseError, judge_error
from pulse_relay.retry import RetryPolicy
from pulse_relay.store import Attempt, FetchTask, QueueStore

log = get_logger("pulse_relay.dispatcher")


def extraction_id(job: Mapping[str, Any] | None) -> str | None:
    """The `extraction_id` of a job's result, for logs."""
    result = job.get("result") if job else None
    value = result.get("extraction_id") if isinstance(result, dict) else None
    return value if isinstance(value, str) else None


@dataclass(frozen=True)
class FetchDecision:
    """What one job fetch comes to: fetched, retry at `next_fetch_at`, or dead.

    `label` is the finer outcome the metric and the log line report.
    """

    outcome: Literal["fetched", "retry", "dead"]
    label: Literal["ok", "not_terminal", "retry", "not_found", "auth_error", "dead"]
    status_code: int | None
    reason: str | None = None
    retry_in_seconds: float | None = None
    next_fetch_at: float | None = None
    fetched: FetchedJob | None = None


def decide_fetch(
    event_type: str,
    answer: FetchedJob | PulseError,
    *,
    attempt: int,
    policy: RetryPolicy,
    now: float,
    rng: random.Random,
) -> FetchDecision:
    """Fetched, retry or dead after fetch number `attempt` (1-based); only `rng` is drawn on."""
    if isinstance(answer, PulseError):
        verdict = judge_error(answer, attempt=attempt)
        if verdict.gives_up:
            return FetchDecision("dead", "dead", answer.status_code, answer.reason)
        delay = verdict.delay_seconds(policy.delay_seconds(attempt, rng=rng))
        return FetchDecision(
            "retry", verdict.outcome, answer.status_code, answer.reason, delay, now + delay
        )
    status = answer.job.get("status")
    if says_terminal(event_type) and not (isinstance(status, str) and is_terminal(status)):
        # The API is eventually consistent: the event may run ahead of the job.
        reason = f"job is {status!r}, not yet terminal as {event_type} says"
        delay = policy.delay_seconds(attempt, rng=rng)
        return FetchDecision("retry", "not_terminal", 200, reason, delay, now + delay)
    return FetchDecision("fetched", "ok", 200, fetched=answer)


# Level and message of the one log line each outcome writes.
_FETCH_LOG: Final[Mapping[str, tuple[int, str]]] = {
    "ok": (logging.INFO, "job fetched"),
    "not_terminal": (logging.INFO, "job not terminal yet; fetch retried"),
    "retry": (logging.WARNING, "job fetch failed; will retry"),
    "not_found": (logging.WARNING, "job fetch failed; will retry"),
    "auth_error": (
        logging.ERROR,
        "Pulse API rejected the API key (check pulse.api_key / PULSE_API_KEY); "
        "the event is kept and retried",
    ),
    "dead": (logging.ERROR, "job fetch failed for good; deliveries dead"),
}
# Fetch outcomes that repeat for every job while the API is down or the key is wrong:
# sampled (logs.outage_log); each is still recorded as the event's attempt.
_OUTAGE_LABELS = frozenset({"retry", "auth_error"})


class JobFetcher:
    """Runs one claimed fetch: the API call, `decide_fetch`, then the write, metric and log."""

    def __init__(
        self,
        *,
        store: QueueStore,
        pulse: PulseClient,
        metrics: Metrics,
        policy: RetryPolicy,
        clock: Callable[[], float],
        rng: random.Random,
        outage_log: SampledLog,
        finish: Callable[[FetchTask, FetchedJob, Attempt], Awaitable[None]],
        lease_token: Callable[[FetchTask], str | None],
    ) -> None:
        self._store = store
        self._pulse = pulse
        self._metrics = metrics
        self._policy = policy
        self._clock = clock
        self._rng = rng
        self._outage_log = outage_log
        # Persists a fetched job and starts its deliveries: the dispatcher's slots.
        self._finish = finish
        # The token of the fetch's newest claim: it may be claimed again while it runs.
        self._lease_token = lease_token

    async def fetch(self, task: FetchTask, attempt_number: int, context: dict[str, Any]) -> None:
        """Fetch the job, decide, then one store write, one metric and one log line."""
        started_at = self._clock()
        began = time.perf_counter()
        answer: FetchedJob | PulseError
        try:
            answer = await self._pulse.fetch_job(task.job_id)
        except PulseError as error:
            answer = error
        duration_ms = (time.perf_counter() - began) * 1000
        decision = decide_fetch(
            task.event_type,
            answer,
            attempt=attempt_number,
            policy=self._policy,
            now=self._clock(),
            rng=self._rng,
        )
        attempt = Attempt(
            sink=None,
            attempt=attempt_number,
            started_at=started_at,
            duration_ms=duration_ms,
            outcome=decision.outcome,
            status_code=decision.status_code,
            error=decision.reason,
        )
        if isinstance(answer, FetchedJob):
            context.update(status=answer.job.get("status"), duration_ms=round(duration_ms, 1))
        await self._write_fetch(task, decision, attempt)
        self._metrics.job_fetches.labels(outcome=decision.label).inc()
        level, message = _FETCH_LOG[decision.label]
        fields: dict[str, Any] = (
            {"extraction_id": extraction_id(decision.fetched.job)}
            if decision.fetched is not None
            else {"reason": decision.reason, "status_code": decision.status_code}
        )
        if decision.retry_in_seconds is not None:
            fields["retry_in_seconds"] = round(decision.retry_in_seconds, 2)
        if decision.label in _OUTAGE_LABELS:
            key = f"fetch:{decision.label}:{decision.status_code}"
            self._outage_log.emit(key, level, message, **fields, **context)
        else:
            log.log(level, message, **fields, **context)

    async def _write_fetch(
        self, task: FetchTask, decision: FetchDecision, attempt: Attempt
    ) -> None:
        if decision.fetched is not None:
            await self._finish(task, decision.fetched, attempt)
        elif decision.next_fetch_at is not None:
            await self._store.retry_fetch(
                task.event_id,
                next_fetch_at=decision.next_fetch_at,
                attempt=attempt,
                token=self._lease_token(task),
            )
        else:
            await self._store.fail_fetch(
                task.event_id, attempt=attempt, token=self._lease_token(task)
            )
