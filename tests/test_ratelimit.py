"""Per-sink rate limits: the token bucket, the buckets of all sinks and the slots they bound,
all on a clock the tests move by hand."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from pulse_relay.config import FileSinkSettings
from pulse_relay.metrics import Metrics
from pulse_relay.ratelimit import SinkRates, TokenBucket, rate_limited_sinks
from pulse_relay.slots import Slots, delivery_slot
from tests.helpers import FakeClock

# -- the bucket ----------------------------------------------------------------


def test_a_full_bucket_lets_one_seconds_worth_start_at_once_then_answers_the_wait() -> None:
    bucket = TokenBucket(5.0, now=0.0)
    assert bucket.available(0.0) == 5
    assert [bucket.take(0.0) for _ in range(5)] == [0.0] * 5
    assert bucket.available(0.0) == 0
    # Nothing is taken while the answer is a wait: the same wait, asked twice.
    assert bucket.take(0.0) == pytest.approx(0.2)
    assert bucket.take(0.0) == pytest.approx(0.2)
    assert bucket.take(0.1) == pytest.approx(0.1)


def test_a_drained_bucket_refills_at_the_rate_and_never_above_one_seconds_worth() -> None:
    bucket = TokenBucket(5.0, now=0.0)
    assert bucket.take(0.0, 5) == 0.0
    starts = 0
    now = 0.0
    # Every 10 ms for 3 s, start whatever the bucket allows: 5 a second, steadily.
    for _ in range(300):
        now += 0.01
        while bucket.take(now) == 0.0:
            starts += 1
    assert starts == 15
    # Idle for a minute: still one second's worth, not sixty.
    assert bucket.available(now + 60.0) == 5


def test_a_fractional_rate_lets_one_attempt_start_every_two_seconds() -> None:
    bucket = TokenBucket(0.5, now=0.0)
    assert bucket.capacity == 1.0
    assert bucket.take(0.0) == 0.0
    assert bucket.take(0.0) == pytest.approx(2.0)
    assert bucket.take(1.0) == pytest.approx(1.0)
    assert bucket.take(1.999) > 0.0
    assert bucket.take(2.0) == 0.0
    assert bucket.available(100.0) == 1


def test_a_rate_with_a_fraction_above_one_bursts_its_whole_tokens() -> None:
    bucket = TokenBucket(2.5, now=0.0)
    assert bucket.available(0.0) == 2
    assert bucket.take(0.0, 2) == 0.0
    # Half a token left: the next whole one is 0.2 s away.
    assert bucket.wait_seconds(0.0) == pytest.approx(0.2)
    assert bucket.take(0.2) == 0.0


def test_tokens_given_back_are_there_again_but_never_above_capacity() -> None:
    bucket = TokenBucket(3.0, now=0.0)
    assert bucket.take(0.0, 3) == 0.0
    bucket.give_back(2)
    assert bucket.available(0.0) == 2
    bucket.give_back(10)
    assert bucket.available(0.0) == 3


def test_a_clock_that_steps_back_takes_no_token_away() -> None:
    bucket = TokenBucket(1.0, now=10.0)
    assert bucket.take(10.0) == 0.0
    assert bucket.available(5.0) == 0
    assert bucket.take(11.0) == 0.0


@pytest.mark.parametrize("rate", [0.0, -1.0, math.nan])
def test_a_bucket_refuses_a_rate_that_is_not_above_zero(rate: float) -> None:
    with pytest.raises(ValueError, match="rate_per_second"):
        TokenBucket(rate, now=0.0)


# -- the buckets of all sinks, and the slots they bound -------------------------------


def test_unlimited_sinks_are_capped_by_their_slots_only() -> None:
    clock = FakeClock(0.0)
    rates = SinkRates({"slow": 2.0, "fast": None}, clock=clock)
    assert not rates.is_limited("fast") and rates.is_limited("slow")
    assert rates.cap("fast", 50) == 50
    assert rates.cap("slow", 50) == 2
    rates.take("slow", 2)
    assert rates.cap("slow", 50) == 0
    assert rates.next_token_seconds() == pytest.approx(0.5)
    clock.now = 0.5
    assert rates.cap("slow", 50) == 1
    assert rates.next_token_seconds() == math.inf


def test_a_claim_holds_the_tokens_it_may_use_and_gives_back_what_did_not_start() -> None:
    clock = FakeClock(0.0)
    slots = Slots(
        {"slow": 10, "fast": 10},
        delivery_limit=20,
        fetch_limit=0,
        rates=SinkRates({"slow": 3.0}, clock=clock),
    )
    claim = slots.reserve_free(fetches=False)
    assert claim.per_sink == {"slow": 3, "fast": 10}
    assert slots.open_sinks() == []
    # The claim found two deliveries: they start, the third token goes back.
    slots.release(claim)
    slots.start_delivery("slow")
    slots.start_delivery("slow")
    assert slots.open_sinks() == ["slow", "fast"]
    slots.start_delivery("slow")
    # Out of tokens: not open, however many slots are free, until the next token.
    assert slots.open_sinks() == ["fast"]
    assert slots.next_token_seconds() == pytest.approx(1 / 3)
    # Finishing a delivery frees its slot, never a token.
    slots.release(delivery_slot("slow"))
    assert slots.open_sinks() == ["fast"]
    clock.now = 1 / 3
    assert slots.open_sinks() == ["slow", "fast"]


# -- what the stats and the gauge count ---------------------------------------------


def test_only_enabled_sinks_with_a_rate_count_as_rate_limited(tmp_path: Path) -> None:
    def sink(name: str, **keys: Any) -> FileSinkSettings:
        return FileSinkSettings(type="file", name=name, directory=tmp_path, **keys)

    sinks = [
        sink("limited", rate_per_second=2.5),
        sink("unlimited"),
        sink("off", rate_per_second=1.0, enabled=False),
    ]
    assert rate_limited_sinks(sinks) == {"limited": 2.5}


def test_the_gauge_drops_a_sink_whose_limit_is_gone() -> None:
    metrics = Metrics()
    metrics.set_rate_limited({"a": 3, "b": 0})
    metrics.set_rate_limited({"b": 1})
    value = metrics.registry.get_sample_value
    assert value("pulse_relay_rate_limited", {"sink": "a"}) is None
    assert value("pulse_relay_rate_limited", {"sink": "b"}) == 1
