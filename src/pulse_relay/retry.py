"""Backoff policy, retryable statuses and `Retry-After` parsing, shared by the Pulse client, sinks,
the poller and auto-watch."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from email.utils import parsedate_to_datetime

# Statuses below 500 that still mean "try again later". 425 (Too Early) asks the
# client to repeat the request once the server can take it: a retry, not a failure.
RETRYABLE_CLIENT_STATUSES = frozenset({408, 425, 429})


def is_retryable_status(status_code: int) -> bool:
    """True for an HTTP status that means "try again later": 408, 425, 429 and every 5xx."""
    return status_code in RETRYABLE_CLIENT_STATUSES or status_code >= 500


# A Retry-After further out than this is treated as this: a misbehaving server
# must not park work for days.
MAX_RETRY_AFTER_SECONDS = 3600.0


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a `Retry-After` (delta-seconds or HTTP date); None if absent/bad."""
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    if text.isdigit():
        return min(float(text), MAX_RETRY_AFTER_SECONDS)
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        return None
    current = time.time() if now is None else now
    return min(max(0.0, when.timestamp() - current), MAX_RETRY_AFTER_SECONDS)


# The exponent is clamped so a very high attempt number cannot overflow a float;
# even MAX_GROWTH_FACTOR**60 seconds is far beyond any cap.
_MAX_EXPONENT = 60
MAX_GROWTH_FACTOR = 10.0


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with a cap, a limit on attempts and, by default, full jitter.

    The curve is chosen per use. Sink deliveries and job fetches keep full jitter,
    which spreads retries of many failed deliveries over the whole window instead
    of synchronising them; the draw is floored at a tenth of `initial_seconds`
    (0.1 s by default) so a retry never follows its failure immediately: the first
    retry lands between 0.1 s and 1 s ("about 1 s"). A single loop waiting on one
    resource (the poller's interval, auto-watch's store retries) sets
    `is_jittered=False`: its delay is the ceiling itself, a documented interval.
    """

    initial_seconds: float = 1.0
    max_seconds: float = 600.0
    max_attempts: int = 10
    growth_factor: float = 2.0
    is_jittered: bool = True

    def __post_init__(self) -> None:
        if self.initial_seconds <= 0:
            raise ValueError("initial_seconds must be positive")
        if self.max_seconds <= 0:
            raise ValueError("max_seconds must be positive")
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if not 1.0 <= self.growth_factor <= MAX_GROWTH_FACTOR:
            raise ValueError(f"growth_factor must be between 1 and {MAX_GROWTH_FACTOR:g}")

    @property
    def floor_seconds(self) -> float:
        """The shortest delay the policy ever returns (without a Retry-After)."""
        if not self.is_jittered:
            return min(self.initial_seconds, self.max_seconds)
        return min(self.initial_seconds / 10, self.max_seconds)

    def ceiling_seconds(self, attempt: int) -> float:
        """The upper bound of the delay after failed attempt number `attempt` (1-based)."""
        if attempt < 1:
            raise ValueError("attempt numbers start at 1")
        exponent = min(attempt - 1, _MAX_EXPONENT)
        return min(self.max_seconds, self.initial_seconds * self.growth_factor**exponent)

    def next_interval_seconds(self, interval_seconds: float) -> float:
        """One step along the curve from `interval_seconds`, capped at `max_seconds`.

        For callers that keep the current interval rather than an attempt count
        (a watch stores its own, which may predate a change of settings).
        """
        return min(self.max_seconds, interval_seconds * self.growth_factor)

    def delay_seconds(
        self,
        attempt: int,
        *,
        rng: random.Random | None = None,
        retry_after_seconds: float | None = None,
    ) -> float:
        """Seconds to wait after failed attempt `attempt` (1-based); never below a Retry-After.

        Jittered, the draw lies in [floor_seconds, ceiling_seconds(attempt)];
        unjittered, it is the ceiling. A `retry_after_seconds` from the receiver
        raises the delay to at least that much (itself capped at
        MAX_RETRY_AFTER_SECONDS), even beyond `max_seconds`: the receiver said when
        it can take the work again.
        """
        ceiling = self.ceiling_seconds(attempt)
        if self.is_jittered:
            uniform = random.uniform if rng is None else rng.uniform
            delay = max(self.floor_seconds, uniform(0.0, ceiling))
        else:
            delay = ceiling
        if retry_after_seconds is not None:
            delay = max(delay, min(max(retry_after_seconds, 0.0), MAX_RETRY_AFTER_SECONDS))
        return delay

    def is_exhausted(self, attempts_made: int) -> bool:
        """True once `attempts_made` attempts have failed and no further one is allowed."""
        return attempts_made >= self.max_attempts
