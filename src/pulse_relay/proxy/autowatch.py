"""Recording the watches the pass-through finds, with a retry queue for a store that is down.

By the time the relay sees a job id, the job exists upstream and is paid for: the
answer must reach the app whatever happens to the watch (failing it would make
the app submit again). A watch the store cannot take now is kept in memory and
retried, with backoff, for as long as the relay runs.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from pulse_relay.logs import get_logger
from pulse_relay.metrics import Metrics
from pulse_relay.retry import RetryPolicy
from pulse_relay.store import StoreUnavailableError, WatchStore

log = get_logger("pulse_relay.proxy")

RETRY_INITIAL_SECONDS: Final = 0.5
RETRY_MAX_SECONDS: Final = 10.0
# Beyond this many unrecorded watches the oldest is given up (and logged): memory is bounded.
MAX_PENDING_WATCHES: Final = 10_000


@dataclass(frozen=True)
class _PendingWatch:
    job_ids: tuple[str, ...]
    metadata: dict[str, Any]


class WatchRecorder:
    """Adds watches to the store; what fails is queued and retried in the background."""

    def __init__(
        self,
        store: WatchStore,
        *,
        metrics: Metrics,
        interval_seconds: Callable[[], float],
        on_recorded: Callable[[], None],
        retry_initial_seconds: float = RETRY_INITIAL_SECONDS,
        retry_max_seconds: float = RETRY_MAX_SECONDS,
        max_pending: int = MAX_PENDING_WATCHES,
    ) -> None:
        self._store = store
        self._metrics = metrics
        self._interval_seconds = interval_seconds
        self._on_recorded = on_recorded
        # One loop retrying one store: nothing to spread, so no jitter; it never gives up.
        self._retry_policy = RetryPolicy(
            initial_seconds=retry_initial_seconds,
            max_seconds=retry_max_seconds,
            is_jittered=False,
        )
        self._pending: deque[_PendingWatch] = deque()
        self._max_pending = max_pending
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        metrics.proxy_pending_watches.set_function(lambda: len(self._pending))

    @property
    def pending(self) -> int:
        """Watches waiting to be recorded."""
        return len(self._pending)

    def start(self) -> None:
        """Start the background retries."""
        self._task = asyncio.create_task(self._retry_loop(), name="proxy-watch-retries")

    async def stop(self) -> None:
        """Stop retrying after one last try; watches still pending are named in an error line."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._pending and not await self._drain():
            log.error(
                "stopping with watches never recorded; watch these jobs by hand",
                job_ids=[job_id for watch in self._pending for job_id in watch.job_ids],
            )

    async def record(self, job_ids: Sequence[str], metadata: dict[str, Any]) -> bool:
        """Add the watch now; False (and queued for retries) when the store cannot take it."""
        watch = _PendingWatch(tuple(job_ids), metadata)
        try:
            await self._add(watch)
        except StoreUnavailableError as error:
            self._queue(watch)
            log.error(
                "could not record the watch of a submitted job; retrying in the background",
                job_ids=list(job_ids),
                reason=error.reason,
            )
            return False
        return True

    async def _add(self, watch: _PendingWatch) -> None:
        await self._store.add_watches(
            watch.job_ids,
            metadata=watch.metadata,
            origin="proxy",
            interval_seconds=self._interval_seconds(),
        )
        self._on_recorded()

    def _queue(self, watch: _PendingWatch) -> None:
        if len(self._pending) >= self._max_pending:
            dropped = self._pending.popleft()
            log.error(
                "too many unrecorded watches; giving up the oldest",
                job_ids=list(dropped.job_ids),
                max_pending=self._max_pending,
            )
        self._pending.append(watch)
        self._wake.set()

    async def _retry_loop(self) -> None:
        failed_drains = 0
        while True:
            if not self._pending:
                self._wake.clear()
                await self._wake.wait()
                failed_drains = 0
            await asyncio.sleep(self._retry_policy.delay_seconds(failed_drains + 1))
            failed_drains = 0 if await self._drain() else failed_drains + 1

    async def _drain(self) -> bool:
        """Record the queued watches in order; False when the store still refuses."""
        while self._pending:
            watch = self._pending[0]
            try:
                await self._add(watch)
            except StoreUnavailableError as error:
                log.warning("store still unavailable; watch not recorded yet", reason=error.reason)
                return False
            # Not popleft(): an overflow may have dropped it while the write was waited for.
            with contextlib.suppress(ValueError):
                self._pending.remove(watch)
            log.info("watch recorded after a retry", job_ids=list(watch.job_ids))
        return True
