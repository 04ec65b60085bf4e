"""Per-sink rate limits (`sinks[].rate_per_second`, docs/configuration.md): token buckets.

A sink's attempts start at most `rate_per_second` times a second, with a burst of one
second's worth. The buckets read a monotonic clock that is passed in, so the tests
step time by hand. The limit is this relay's: relays sharing PostgreSQL each enforce
the full rate (docs/configuration.md says why).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pulse_relay.config import SinkSettings

# Refills are sums of float products: 5/s for 0.2 s may come to 0.9999999999999998.
_EPSILON = 1e-9


def rate_limited_sinks(sinks: Iterable[SinkSettings]) -> dict[str, float]:
    """The enabled sinks with a `rate_per_second`, and that rate: those whose due
    deliveries the stats and the `pulse_relay_rate_limited` gauge count as held back."""
    return {s.name: s.rate_per_second for s in sinks if s.enabled and s.rate_per_second}


class TokenBucket:
    """Holds up to max(1, rate) tokens, refilled continuously at `rate_per_second`.

    Starts full: the first second's worth of attempts may start at once.
    """

    def __init__(self, rate_per_second: float, *, now: float) -> None:
        if not rate_per_second > 0:
            raise ValueError(f"rate_per_second must be above 0, not {rate_per_second!r}")
        self.rate_per_second = rate_per_second
        self.capacity = max(1.0, rate_per_second)
        self._tokens = self.capacity
        self._updated_at = now

    def _refill(self, now: float) -> None:
        # A clock that steps back refills nothing rather than taking tokens away.
        elapsed_seconds = max(0.0, now - self._updated_at)
        self._tokens = min(self.capacity, self._tokens + elapsed_seconds * self.rate_per_second)
        self._updated_at = max(self._updated_at, now)

    def available(self, now: float) -> int:
        """Whole tokens in the bucket at `now`: attempts that may start now."""
        self._refill(now)
        return max(0, math.floor(self._tokens + _EPSILON))

    def take(self, now: float, count: int = 1) -> float:
        """Take `count` tokens if the bucket holds them and answer 0.0; else take
        nothing and answer the seconds until it will hold them."""
        wait_seconds = self.wait_seconds(now, count)
        if wait_seconds == 0.0:
            self._tokens -= count
        return wait_seconds

    def wait_seconds(self, now: float, count: int = 1) -> float:
        """Seconds until the bucket holds `count` tokens; 0.0 when it does at `now`."""
        self._refill(now)
        missing = count - self._tokens
        return 0.0 if missing <= _EPSILON else missing / self.rate_per_second

    def give_back(self, count: int) -> None:
        """Return tokens taken for attempts that did not start (never above capacity)."""
        self._tokens = min(self.capacity, self._tokens + count)


class SinkRates:
    """The token bucket of each rate-limited sink; a sink without one is unlimited."""

    def __init__(
        self,
        rates_per_second: Mapping[str, float | None],
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._clock = clock
        now = clock()
        self._buckets = {
            name: TokenBucket(rate, now=now)
            for name, rate in rates_per_second.items()
            if rate is not None
        }

    def is_limited(self, sink: str) -> bool:
        """True when `sink` has a rate limit."""
        return sink in self._buckets

    def cap(self, sink: str, slots: int) -> int:
        """How many of `slots` free slots of `sink` may start an attempt now."""
        bucket = self._buckets.get(sink)
        return slots if bucket is None else min(slots, bucket.available(self._clock()))

    def take(self, sink: str, count: int = 1) -> None:
        """Spend `count` tokens of `sink` (held by a claim, or spent by a start)."""
        bucket = self._buckets.get(sink)
        if bucket is not None and count > 0:
            bucket.take(self._clock(), count)

    def give_back(self, sink: str, count: int) -> None:
        """Return `count` tokens of `sink` that a claim held and did not use."""
        bucket = self._buckets.get(sink)
        if bucket is not None and count > 0:
            bucket.give_back(count)

    def next_token_seconds(self) -> float:
        """Seconds until a sink now out of tokens gets one; infinity if none is out."""
        now = self._clock()
        waits = [bucket.wait_seconds(now) for bucket in self._buckets.values()]
        return min((wait for wait in waits if wait > 0), default=math.inf)
