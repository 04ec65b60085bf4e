"""Backoff policy: full jitter bounds, cap, curves per use, Retry-After floor, exhaustion."""

from __future__ import annotations

import random

import pytest

from pulse_relay.retry import (
    MAX_GROWTH_FACTOR,
    MAX_RETRY_AFTER_SECONDS,
    RetryPolicy,
    is_retryable_status,
)


@pytest.mark.parametrize(
    ("attempt", "ceiling_seconds"),
    [(1, 1.0), (2, 2.0), (3, 4.0), (5, 16.0), (10, 512.0), (11, 600.0), (50, 600.0)],
)
def test_ceiling_doubles_until_the_cap(attempt: int, ceiling_seconds: float) -> None:
    assert RetryPolicy().ceiling_seconds(attempt) == ceiling_seconds


@pytest.mark.parametrize("attempt", [1, 2, 4, 9, 12, 10_000])
def test_delays_stay_within_the_jitter_window(attempt: int) -> None:
    policy = RetryPolicy()
    rng = random.Random(1234)
    delays = [policy.delay_seconds(attempt, rng=rng) for _ in range(2000)]
    ceiling = policy.ceiling_seconds(attempt)
    assert min(delays) >= policy.floor_seconds
    assert max(delays) <= ceiling
    # Full jitter: the draws cover the window, not just its top or bottom.
    assert min(delays) < policy.floor_seconds + ceiling * 0.1
    assert max(delays) > ceiling * 0.9


def test_first_retry_is_about_a_second() -> None:
    policy = RetryPolicy()
    rng = random.Random(7)
    delays = [policy.delay_seconds(1, rng=rng) for _ in range(500)]
    assert all(0.1 <= delay <= 1.0 for delay in delays)


def test_the_same_seed_gives_the_same_delays() -> None:
    policy = RetryPolicy()
    first = [policy.delay_seconds(n, rng=random.Random(99)) for n in range(1, 12)]
    second = [policy.delay_seconds(n, rng=random.Random(99)) for n in range(1, 12)]
    assert first == second


def test_custom_initial_and_cap() -> None:
    policy = RetryPolicy(initial_seconds=0.5, max_seconds=3.0)
    rng = random.Random(5)
    assert policy.ceiling_seconds(1) == 0.5
    assert policy.ceiling_seconds(3) == 2.0
    assert policy.ceiling_seconds(4) == 3.0
    assert all(policy.delay_seconds(30, rng=rng) <= 3.0 for _ in range(500))


def test_retry_after_is_a_floor() -> None:
    policy = RetryPolicy()
    rng = random.Random(3)
    for _ in range(200):
        assert policy.delay_seconds(1, rng=rng, retry_after_seconds=30.0) == 30.0
    # Honoured even beyond the backoff cap: the receiver said when.
    assert policy.delay_seconds(1, rng=rng, retry_after_seconds=1200.0) == 1200.0


def test_retry_after_below_the_draw_does_not_shorten_it() -> None:
    policy = RetryPolicy()
    expected = policy.delay_seconds(12, rng=random.Random(11))
    assert expected > 1.0
    assert policy.delay_seconds(12, rng=random.Random(11), retry_after_seconds=1.0) == expected


def test_retry_after_is_capped() -> None:
    policy = RetryPolicy()
    delay = policy.delay_seconds(1, rng=random.Random(1), retry_after_seconds=10 * 86400.0)
    assert delay == MAX_RETRY_AFTER_SECONDS


def test_negative_retry_after_is_ignored() -> None:
    policy = RetryPolicy()
    plain = policy.delay_seconds(2, rng=random.Random(8))
    assert policy.delay_seconds(2, rng=random.Random(8), retry_after_seconds=-5.0) == plain


def test_exhaustion_after_max_attempts() -> None:
    policy = RetryPolicy(max_attempts=3)
    assert not policy.is_exhausted(0)
    assert not policy.is_exhausted(2)
    assert policy.is_exhausted(3)
    assert policy.is_exhausted(4)
    assert RetryPolicy().is_exhausted(10)
    assert not RetryPolicy().is_exhausted(9)


def test_invalid_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="attempt"):
        RetryPolicy().delay_seconds(0)
    with pytest.raises(ValueError, match="initial_seconds"):
        RetryPolicy(initial_seconds=0)
    with pytest.raises(ValueError, match="max_attempts"):
        RetryPolicy(max_attempts=0)


def test_parse_retry_after_seconds_and_dates() -> None:
    from pulse_relay.retry import parse_retry_after

    assert parse_retry_after("120") == 120.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == 10.0
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None
    assert parse_retry_after("999999") == MAX_RETRY_AFTER_SECONDS


@pytest.mark.parametrize("status_code", [408, 425, 429, 500, 502, 503, 504, 599])
def test_throttling_too_early_and_server_errors_are_retryable(status_code: int) -> None:
    assert is_retryable_status(status_code)


@pytest.mark.parametrize("status_code", [200, 301, 400, 401, 403, 404, 409, 410, 413, 422])
def test_other_statuses_are_not_retryable(status_code: int) -> None:
    assert not is_retryable_status(status_code)


def test_an_unjittered_curve_is_its_ceiling_whatever_the_random_source() -> None:
    policy = RetryPolicy(initial_seconds=0.5, max_seconds=10.0, is_jittered=False)
    rng = random.Random(42)
    delays = [policy.delay_seconds(attempt, rng=rng) for attempt in range(1, 8)]
    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    assert policy.floor_seconds == 0.5
    # A Retry-After still wins over a shorter step.
    assert policy.delay_seconds(1, retry_after_seconds=3.0) == 3.0


def test_the_growth_factor_shapes_the_curve() -> None:
    policy = RetryPolicy(initial_seconds=5.0, max_seconds=60.0, growth_factor=1.5)
    assert [policy.ceiling_seconds(n) for n in range(1, 9)] == [
        5.0, 7.5, 11.25, 16.875, 25.3125, 37.96875, 56.953125, 60.0
    ]  # fmt: skip
    assert policy.next_interval_seconds(5.0) == 7.5
    assert policy.next_interval_seconds(56.953125) == 60.0
    # A jittered draw stays inside the window of the slower curve.
    rng = random.Random(9)
    assert all(0.5 <= policy.delay_seconds(2, rng=rng) <= 7.5 for _ in range(500))


@pytest.mark.parametrize("growth_factor", [0.5, 0.99, 10.5])
def test_a_growth_factor_out_of_range_is_refused(growth_factor: float) -> None:
    with pytest.raises(ValueError, match="growth_factor"):
        RetryPolicy(growth_factor=growth_factor)


def test_the_largest_growth_factor_cannot_overflow() -> None:
    policy = RetryPolicy(growth_factor=MAX_GROWTH_FACTOR)
    assert policy.ceiling_seconds(10_000) == 600.0
