"""bench/common.py's statistics: the percentile every report uses."""

from __future__ import annotations

import math
import random

import pytest

from bench.common import percentile

ONE_TO_HUNDRED = [float(n) for n in range(1, 101)]


@pytest.mark.parametrize(
    ("fraction", "expected"),
    [(0.0, 1.0), (0.01, 1.0), (0.07, 7.0), (0.5, 50.0), (0.9, 90.0), (0.99, 99.0), (1.0, 100.0)],
)
def test_percentile_is_the_nearest_rank(fraction: float, expected: float) -> None:
    shuffled = random.Random(7).sample(ONE_TO_HUNDRED, len(ONE_TO_HUNDRED))
    assert percentile(shuffled, fraction) == expected


def test_percentile_is_always_a_measured_value_never_interpolated() -> None:
    # At least half of the values are ≤ 2, and 2 is the smallest such value.
    assert percentile([4.0, 1.0, 3.0, 2.0], 0.5) == 2.0
    assert percentile([4.0, 1.0, 3.0, 2.0], 0.51) == 3.0
    assert percentile([5.0], 0.99) == 5.0


def test_percentile_of_nothing_is_nan() -> None:
    assert math.isnan(percentile([], 0.5))
