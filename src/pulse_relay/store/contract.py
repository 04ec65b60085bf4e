"""The one contract every store backend keeps; the rest of the relay speaks only this.

`StoreBackend` is composed of one protocol per part, as each backend is composed of
one mixin per part (plumbing, ingest, queue, retention, watches, views): a component
that needs one part alone is typed with that part's protocol.

Lease tokens: on a store that several relays share (PostgreSQL), each claim stamps
the rows it leases with a token of its own, handed back in `FetchTask.token` and
`DeliveryTask.token`. `renew_leases`, `finish_fetch`, `retry_fetch`, `fail_fetch` and
`finish_delivery` change a row only while it still carries the token given to them:
a relay whose lease ran out, and whose work another relay claimed since, changes
nothing when it finally answers. `token=None` matches any row; SQLite claims hand out
None, its one relay owning the whole queue.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol, Self

from pulse_relay.store.model import (
    Attempt,
    ChangeListener,
    DeliveryOutcome,
    DeliveryTask,
    EventCursor,
    EventView,
    FetchTask,
    IngestOutcome,
    IngestRecord,
    StoredEvent,
    Watch,
)


class StoreLifecycle(Protocol):
    """Opening and closing a store, its listeners, its schema and its health."""

    backend: str

    @property
    def location(self) -> str:
        """Where the store is, safe to print (a path, or a URL with its password masked)."""

    def add_listener(self, listener: ChangeListener) -> None:
        """Call `listener` after each committed change of an event."""

    def add_wake_listener(self, listener: Callable[[], None]) -> None:
        """Call `listener` when another relay sharing the store has committed new work."""

    async def open(self) -> None:
        """Connect, migrate, and start whatever background work the backend needs."""

    async def close(self) -> None:
        """Finish queued writes and close every connection."""

    async def __aenter__(self) -> Self: ...

    async def __aexit__(self, *exc_info: object) -> None: ...

    async def check_writable(self) -> None:
        """Raise StoreUnavailableError unless a write can be committed now."""

    async def schema_version(self) -> int:
        """The schema version the store is at."""


class IngestStore(Protocol):
    """Storing webhooks and polled events, deduplicated, in group commits."""

    async def ingest(self, record: IngestRecord) -> IngestOutcome:
        """Store one event and its deliveries; returns after the commit that holds it."""


class QueueStore(Protocol):
    """The work queue: job fetches and deliveries leased, finished, retried, replayed.

    `token` is a claim's lease token (see the module's docstring): given, a call
    changes only the work still leased under it; None changes the work regardless.
    """

    async def take_back_leases(self) -> None:
        """At start: make work leased by a dead predecessor due again, where this relay is
        the queue's only owner (SQLite); a shared store waits for the leases instead."""

    async def claim(
        self,
        *,
        fetch_limit: int,
        free_slots: dict[str, int],
        total_limit: int,
        lease_seconds: float,
    ) -> tuple[list[FetchTask], list[DeliveryTask]]:
        """Lease due job fetches and deliveries within the limits."""

    async def renew_leases(
        self,
        fetches: Sequence[FetchTask],
        deliveries: Sequence[DeliveryTask],
        *,
        lease_seconds: float,
    ) -> None:
        """Extend the leases of work still running here."""

    async def finish_fetch(
        self,
        event_id: str,
        *,
        job: dict[str, Any],
        result_url: str | None,
        attempt: Attempt,
        free_slots: dict[str, int] | None = None,
        total_limit: int = 0,
        lease_seconds: float = 0.0,
        token: str | None = None,
    ) -> list[DeliveryTask]:
        """Persist the fetched job; lease and return its deliveries that have a free slot."""

    async def retry_fetch(
        self, event_id: str, *, next_fetch_at: float, attempt: Attempt, token: str | None = None
    ) -> None:
        """Record a failed fetch and schedule the next one."""

    async def fail_fetch(
        self, event_id: str, *, attempt: Attempt, token: str | None = None
    ) -> None:
        """Give up on the job fetch: the event's pending deliveries go dead."""

    async def finish_delivery(
        self,
        event_id: str,
        sink: str,
        *,
        outcome: DeliveryOutcome,
        attempt: Attempt,
        next_attempt_at: float | None = None,
        token: str | None = None,
    ) -> None:
        """Record one attempt and move the delivery to delivered, pending or dead."""

    async def release_leases(self) -> None:
        """Make the work this relay leased due again at once (graceful shutdown)."""

    async def replay(
        self,
        event_ids: Sequence[str] = (),
        *,
        sink: str | None = None,
        dead_only: bool = False,
        edited_envelope: dict[str, Any] | None = None,
    ) -> int:
        """Make deliveries due again as replays; returns how many were queued.

        With `edited_envelope`, those deliveries send it instead of the envelope built
        from the event, and each attempt keeps it; without, any earlier edit is dropped
        (an edit holds for its own replay only). The event itself never changes."""

    async def next_due_at(self, sinks: Sequence[str], *, include_fetches: bool) -> float | None:
        """When the next claimable fetch or delivery is due; None if none waits."""


class RetentionStore(Protocol):
    """Pruning finished events, and remembering the ids pruned for a while."""

    async def prune(self, *, received_before: float, batch_size: int = ...) -> int:
        """Delete finished events received before `received_before`; returns how many."""

    async def forget_ids(self, *, pruned_before: float, batch_size: int = ...) -> int:
        """Forget the ids of events pruned before `pruned_before` (never within a day)."""

    async def is_pruned(self, event_id: str) -> bool:
        """Whether `event_id` was stored once and pruned since."""


class WatchStore(Protocol):
    """The jobs the poller follows, each leased to one poll at a time."""

    async def add_watches(
        self,
        job_ids: Sequence[str],
        *,
        metadata: dict[str, Any] | None = None,
        origin: str = "watch",
        interval_seconds: float,
    ) -> None:
        """Watch jobs (again) from now on; `metadata` is merged into what a job has."""

    async def remove_watches(self, job_ids: Sequence[str]) -> int:
        """Stop watching jobs; returns how many were watched."""

    async def list_watches(self) -> list[Watch]:
        """Every watch, active first, newest first."""

    async def get_watch(self, job_id: str) -> Watch | None:
        """One watch; None when the job is not watched."""

    async def claim_watches(self, *, limit: int, lease_seconds: float) -> list[Watch]:
        """Lease up to `limit` watches whose poll is due."""

    async def update_watch(
        self,
        job_id: str,
        *,
        state: str,
        next_poll_at: float,
        interval_seconds: float,
        last_status: str | None,
        last_error: str | None,
    ) -> None:
        """Record one poll of a watched job."""

    async def recover_stalled_jobs(
        self, *, older_than: float, since: float, interval_seconds: float, limit: int = 1000
    ) -> list[str]:
        """Watch jobs seen created/processing before `older_than` with no terminal event."""


class ViewStore(Protocol):
    """What the CLI and the admin API read: listings, one event in full, counts."""

    async def list_events(
        self,
        *,
        event_type: str | None = None,
        state: str | None = None,
        limit: int = 50,
        sink: str | None = None,
        job_id: str | None = None,
        source: str | None = None,
        text: str | None = None,
        before: EventCursor | None = None,
        event_id: str | None = None,
    ) -> list[EventView]:
        """Newest events first, with each sink's delivery state."""

    async def get_event(self, event_id: str) -> EventView | None:
        """One event with headers, body, job and every attempt; None if unknown."""

    async def get_events(self, event_ids: Sequence[str]) -> list[EventView]:
        """Several events as `get_event` gives them, in the order of `event_ids`; an
        unknown id is left out. For a page of a listing: a few queries for the lot."""

    async def state_counts(self) -> tuple[dict[str, int], dict[str, int]]:
        """Events per event state, deliveries per delivery state."""

    async def pending_counts(self) -> dict[str, int]:
        """Pending deliveries per sink."""

    async def due_counts(self, sinks: Sequence[str]) -> dict[str, int]:
        """Deliveries of each of `sinks` that could be claimed now (due, not leased)."""

    async def oldest_pending_received_at(self) -> float | None:
        """When the oldest event with pending work arrived; None if none."""


class TransferStore(Protocol):
    """Writing a whole exported event back (docs/cli.md, `pulse-relay import`)."""

    async def insert_event(self, event: StoredEvent) -> bool:
        """Store `event` with its deliveries, attempts and watch metadata in one transaction,
        its states as given; False (nothing written) when its id, or its body digest, is
        already stored or remembered from a pruned event."""


class StoreBackend(
    StoreLifecycle,
    IngestStore,
    QueueStore,
    RetentionStore,
    WatchStore,
    ViewStore,
    TransferStore,
    Protocol,
):
    """A durable store: ingest with dedupe, a leased work queue, watches, read views.

    Every write is committed before its coroutine returns. Errors that mean "the
    store cannot be reached or written now" are StoreUnavailableError.
    """
