"""logs.py's sampling: refusals in a flood, and warnings repeated while a dependency is down."""

from __future__ import annotations

import asyncio

from structlog.testing import capture_logs

from pulse_relay.logs import OUTAGE_WINDOW_SECONDS, LogSampler, SampledLog, get_logger, outage_log
from tests.helpers import FakeClock


def test_sampler_admits_a_few_lines_a_second_per_key_and_counts_the_rest() -> None:
    clock = FakeClock()
    sampler = LogSampler(per_window=3, clock=clock)

    admitted = [sampler.admit("401:bad") for _ in range(10)]
    other = sampler.admit("413:big")

    assert admitted == [True] * 3 + [False] * 7
    assert other
    assert sampler.take_suppressed() == {"401:bad": 7}
    assert sampler.take_suppressed() == {}
    clock.now += 1.0
    assert [sampler.admit("401:bad") for _ in range(4)] == [True, True, True, False]
    assert sampler.take_suppressed() == {"401:bad": 1}


def test_sampler_bounds_the_number_of_keys() -> None:
    sampler = LogSampler(per_window=1, clock=FakeClock())
    for number in range(200):
        sampler.admit(f"401:reason {number}")
    assert sampler.take_suppressed() == {"401:other": 200 - 64 - 1}


async def test_sampled_log_writes_a_few_lines_then_one_count() -> None:
    sampled = SampledLog(get_logger("test"), sampler=LogSampler(per_window=2))
    with capture_logs() as logs:
        for _ in range(50):
            sampled.emit("401:no matching signature", "warning", "webhook rejected", reason="x")
        sampled.flush()
        await asyncio.sleep(0)
    events = [(line["event"], line.get("suppressed")) for line in logs]
    assert events == [
        ("webhook rejected", None),
        ("webhook rejected", None),
        ("similar log lines suppressed", 48),
    ]


LOST = "store listener lost its connection; reconnecting"


async def test_an_outage_warning_is_written_once_a_window_then_counted() -> None:
    clock = FakeClock()
    sampled = outage_log(get_logger("test"), clock=clock)
    with capture_logs() as logs:
        # The listener retries each second: a minute of outage is one line and a count.
        for _ in range(int(OUTAGE_WINDOW_SECONDS)):
            sampled.emit("store:listener", "warning", LOST, reason="down")
            clock.now += 1.0
        sampled.emit("store:listener", "warning", LOST, reason="down")
        sampled.emit("pulse:retry", "warning", "job fetch failed; will retry", reason="down")
        sampled.flush()

    assert [(line["event"], line.get("suppressed")) for line in logs] == [
        (LOST, None),
        (LOST, None),
        ("job fetch failed; will retry", None),
        ("similar log lines suppressed", OUTAGE_WINDOW_SECONDS - 1),
    ]
