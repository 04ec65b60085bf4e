"""Addresses, the store and its retention step from settings, without the server stack.

The CLI's store commands need these and nothing of aiohttp or the admin side:
importing them from here keeps `pulse-relay events` from loading the daemon.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pulse_relay.config import Settings
    from pulse_relay.store import StoreBackend

DAY_SECONDS = 86_400.0


def listener_base_url(host: str, port: int | None, *, scheme: str = "http") -> str:
    """http://host:port of a listener, an IPv6 host in brackets."""
    shown = f"[{host}]" if ":" in host else host
    return f"{scheme}://{shown}:{port}"


def local_url(host: str, port: int | None, *, scheme: str = "http") -> str:
    """http(s)://host:port to reach a listener bound to `host` from this machine."""
    if host in ("0.0.0.0", "::", ""):  # noqa: S104 - only to build a URL to reach ourselves
        host = "127.0.0.1"
    return listener_base_url(host, port, scheme=scheme)


def ingress_url(settings: Settings, port: int | None = None) -> str:
    """http(s)://host:port to reach the ingress from this machine (`port` once bound)."""
    server = settings.server
    scheme = "https" if server.is_tls else "http"
    return local_url(server.host, server.port if port is None else port, scheme=scheme)


def build_store(settings: Settings, *, clock: Callable[[], float] = time.time) -> StoreBackend:
    """The configured store backend; the caller opens it (or enters it with `async with`)."""
    store = settings.store
    if store.postgres_url is not None:
        # Imported here: psycopg and its pool are for PostgreSQL URLs only.
        from pulse_relay.store.postgres import PostgresStore

        return PostgresStore(store.postgres_url, pool_size=store.pool_size, clock=clock)
    assert store.sqlite_file is not None
    from pulse_relay.store.sqlite import SQLiteStore

    return SQLiteStore(
        store.sqlite_file,
        synchronous=store.synchronous,
        busy_timeout_seconds=store.busy_timeout_seconds,
        clock=clock,
    )


@dataclass(frozen=True)
class PruneOutcome:
    """What one prune did: events deleted, and ids of pruned events no longer remembered."""

    events: int
    forgotten_ids: int


async def prune_store(
    store: StoreBackend, *, now: float, older_than_days: float, dedupe_days: float
) -> PruneOutcome:
    """Delete finished events older than `older_than_days` (0: every finished event); the
    ids of pruned events stay known for `dedupe_days` after they were pruned."""
    events = await store.prune(received_before=now - older_than_days * DAY_SECONDS)
    forgotten = await store.forget_ids(pruned_before=now - dedupe_days * DAY_SECONDS)
    return PruneOutcome(events=events, forgotten_ids=forgotten)
