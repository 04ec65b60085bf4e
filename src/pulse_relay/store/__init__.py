"""The only package that speaks SQL: one contract (StoreBackend), two backends
(SQLiteStore embedded, PostgresStore shared).

The backends are imported on first use (module `__getattr__`): everything that
needs a model type (`pulse-relay events`, config.py's URL rules) imports this
package, and the PostgreSQL backend alone costs psycopg, its pool and the
logging stack, which a SQLite relay never uses.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from pulse_relay.store.contract import (
    IngestStore,
    QueueStore,
    RetentionStore,
    StoreBackend,
    StoreLifecycle,
    TransferStore,
    ViewStore,
    WatchStore,
)
from pulse_relay.store.decide import Decision, decide_ingest, ingest_state
from pulse_relay.store.model import (
    AWAITING_FETCH,
    DELIVERY_STATES,
    PRUNE_BATCH,
    PRUNED_IDS_MIN_SECONDS,
    Attempt,
    ChangeListener,
    DeliveryOutcome,
    DeliveryTask,
    DeliveryView,
    EventCursor,
    EventView,
    FetchTask,
    IngestOutcome,
    IngestRecord,
    StoredDelivery,
    StoredEvent,
    StoreUnavailableError,
    StoreVersionError,
    UnwritableRecordError,
    Watch,
    record_problem,
    text_problem,
)

if TYPE_CHECKING:
    from pulse_relay.store.postgres import PostgresStore
    from pulse_relay.store.sqlite import MIGRATIONS, SQLiteStore

# name -> (module, attribute) of what is imported when first asked for.
_LAZY = {
    "PostgresStore": ("pulse_relay.store.postgres", "PostgresStore"),
    "SQLiteStore": ("pulse_relay.store.sqlite", "SQLiteStore"),
    "MIGRATIONS": ("pulse_relay.store.sqlite", "MIGRATIONS"),
}

__all__ = [
    "AWAITING_FETCH",
    "DELIVERY_STATES",
    "MIGRATIONS",
    "PRUNED_IDS_MIN_SECONDS",
    "PRUNE_BATCH",
    "Attempt",
    "ChangeListener",
    "Decision",
    "DeliveryOutcome",
    "DeliveryTask",
    "DeliveryView",
    "EventCursor",
    "EventView",
    "FetchTask",
    "IngestOutcome",
    "IngestRecord",
    "IngestStore",
    "PostgresStore",
    "QueueStore",
    "RetentionStore",
    "SQLiteStore",
    "StoreBackend",
    "StoreLifecycle",
    "StoreUnavailableError",
    "StoreVersionError",
    "StoredDelivery",
    "StoredEvent",
    "TransferStore",
    "UnwritableRecordError",
    "ViewStore",
    "Watch",
    "WatchStore",
    "decide_ingest",
    "ingest_state",
    "record_problem",
    "text_problem",
]


def __getattr__(name: str) -> Any:
    """A backend (or the SQLite MIGRATIONS), imported when first named."""
    try:
        module, attribute = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value
    return value
