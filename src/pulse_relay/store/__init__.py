"""The only package that speaks SQL: one contract (StoreBackend), two backends.

`Store` is the embedded SQLite backend, kept under its former name for the code
and tools that build one from a path.
"""

from __future__ import annotations

from pulse_relay.store.contract import StoreBackend
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
    StoreUnavailableError,
    StoreVersionError,
    Watch,
)
from pulse_relay.store.postgres import PostgresStore
from pulse_relay.store.sqlite import MIGRATIONS, SQLiteStore

Store = SQLiteStore

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
    "PostgresStore",
    "SQLiteStore",
    "Store",
    "StoreBackend",
    "StoreUnavailableError",
    "StoreVersionError",
    "Watch",
    "decide_ingest",
    "ingest_state",
]
