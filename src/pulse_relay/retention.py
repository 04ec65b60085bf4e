"""The retention task: prunes finished events a minute after start, then daily.

What is pruned and when is documented with `store.retention_days` in
docs/configuration.md; `pulse-relay prune` (docs/cli.md) does one run by hand.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from pulse_relay.logs import get_logger
from pulse_relay.store import StoreUnavailableError
from pulse_relay.wiring import DAY_SECONDS, PruneOutcome

# The name its lines always had (they were the composition root's): filters keep working.
log = get_logger("pulse_relay.app")

# The first retention run comes shortly after start, so a relay restarted daily still prunes.
RETENTION_FIRST_RUN_SECONDS = 60.0
RETENTION_RETRY_SECONDS = 600.0


async def run_retention(
    prune: Callable[[float], Awaitable[PruneOutcome]],
    *,
    retention_days: Callable[[], float],
    dedupe_days: Callable[[], float],
    first_run_seconds: float = RETENTION_FIRST_RUN_SECONDS,
) -> None:
    """Call `prune(older_than_days)` after `first_run_seconds`, then daily, until cancelled.

    A store that is unavailable is tried again after RETENTION_RETRY_SECONDS. The days
    are read at each run, so a run uses the configuration of its time.
    """
    delay_seconds = first_run_seconds
    while True:
        await asyncio.sleep(delay_seconds)
        days = retention_days()
        try:
            outcome = await prune(days)
        except StoreUnavailableError as error:
            log.error("retention run failed; retried later", reason=error.reason)
            delay_seconds = RETENTION_RETRY_SECONDS
            continue
        log.info(
            "retention run",
            pruned_events=outcome.events,
            forgotten_ids=outcome.forgotten_ids,
            retention_days=days,
            dedupe_days=dedupe_days(),
        )
        delay_seconds = DAY_SECONDS
