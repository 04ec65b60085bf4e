"""Everything the admin listener's handlers need, in one object built by the relay."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from aiohttp import web

from pulse_relay import __version__

if TYPE_CHECKING:
    from pulse_relay.admin.auth import AdminAuth
    from pulse_relay.admin.changes import ChangeHub
    from pulse_relay.config import Settings
    from pulse_relay.metrics import Metrics
    from pulse_relay.store import StoreBackend

ProblemsCheck = Callable[[], Awaitable[list[str]]]
READINESS_INTERVAL_SECONDS = 1.0


class CachedReadiness:
    """A readiness check that runs at most once per interval, whatever the number of callers.

    The check commits a write to the store; unthrottled, every `GET /readyz` would
    cost an fsync on the path that acks webhooks. Callers that arrive while a check
    runs wait for it and share its answer.
    """

    def __init__(
        self,
        check: ProblemsCheck,
        *,
        interval_seconds: float = READINESS_INTERVAL_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._check = check
        self._interval_seconds = interval_seconds
        self._clock = clock
        self._lock = asyncio.Lock()
        self._checked_at: float | None = None
        self._problems: list[str] = []

    async def problems(self) -> list[str]:
        """Reasons the relay is not ready (empty when it is), at most `interval_seconds` old."""
        async with self._lock:
            now = self._clock()
            if self._checked_at is None or now - self._checked_at >= self._interval_seconds:
                self._problems = await self._check()
                self._checked_at = self._clock()
            return list(self._problems)


@dataclass
class AdminContext:
    """What the API, the UI and the pass-through use; fields are read, never replaced.

    `settings` is a property because SIGHUP replaces the relay's settings (sinks).
    """

    get_settings: Callable[[], Settings]
    store: StoreBackend
    metrics: Metrics
    hub: ChangeHub
    readiness: CachedReadiness
    auth: AdminAuth
    # Update the backlog gauges before /metrics renders them.
    refresh_metrics: Callable[[], Awaitable[None]]
    # Look at the queue / the watches now (after a replay / a new watch).
    wake_dispatcher: Callable[[], None]
    wake_poller: Callable[[], None]
    # The URL of the ingress's webhook endpoint as the relay itself reaches it.
    ingress_url: Callable[[], str]
    version: str = __version__
    store_backend: str = "sqlite"
    clock: Callable[[], float] = field(default=time.time)

    @property
    def settings(self) -> Settings:
        """The relay's current settings."""
        return self.get_settings()


CONTEXT_KEY = web.AppKey("admin_context", AdminContext)
