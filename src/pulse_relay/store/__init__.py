"""The only package that speaks SQL: one contract (StoreBackend), two backends
(SQLiteStore embedded, PostgresStore shared).

Every name here is imported on first use (module `__getattr__`): everything that
needs one type (`pulse-relay events` a view, config.py the URL rules) enters this
package, and the PostgreSQL backend alone costs psycopg, its pool and the logging
stack, which a SQLite relay never uses; the write side's records and the contract's
protocols cost start-up time a command that only reads does not need to pay.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pulse_relay.lazy import lazy_attributes

if TYPE_CHECKING:
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
    from pulse_relay.store.decide import (
        Decision,
        decide_ingest,
        ingest_state,
    )
    from pulse_relay.store.errors import (
        StoreUnavailableError,
        StoreVersionError,
    )
    from pulse_relay.store.model import (
        PRUNE_BATCH,
        PRUNED_IDS_MIN_SECONDS,
        ChangeListener,
        DeliveryOutcome,
        DeliveryTask,
        FetchTask,
        IngestOutcome,
        IngestRecord,
        StoredDelivery,
        StoredEvent,
        UnwritableRecordError,
        record_problem,
        text_problem,
    )
    from pulse_relay.store.postgres import PostgresStore
    from pulse_relay.store.sqlite import MIGRATIONS, SQLiteStore
    from pulse_relay.store.view_model import (
        AWAITING_FETCH,
        DELIVERY_STATES,
        Attempt,
        DeliveryView,
        EventCursor,
        EventView,
        Watch,
    )

# name -> (module, attribute) of what is imported when first asked for.
_LAZY = {
    "IngestStore": ("pulse_relay.store.contract", "IngestStore"),
    "QueueStore": ("pulse_relay.store.contract", "QueueStore"),
    "RetentionStore": ("pulse_relay.store.contract", "RetentionStore"),
    "StoreBackend": ("pulse_relay.store.contract", "StoreBackend"),
    "StoreLifecycle": ("pulse_relay.store.contract", "StoreLifecycle"),
    "TransferStore": ("pulse_relay.store.contract", "TransferStore"),
    "ViewStore": ("pulse_relay.store.contract", "ViewStore"),
    "WatchStore": ("pulse_relay.store.contract", "WatchStore"),
    "Decision": ("pulse_relay.store.decide", "Decision"),
    "decide_ingest": ("pulse_relay.store.decide", "decide_ingest"),
    "ingest_state": ("pulse_relay.store.decide", "ingest_state"),
    "StoreUnavailableError": ("pulse_relay.store.errors", "StoreUnavailableError"),
    "StoreVersionError": ("pulse_relay.store.errors", "StoreVersionError"),
    "PRUNE_BATCH": ("pulse_relay.store.model", "PRUNE_BATCH"),
    "PRUNED_IDS_MIN_SECONDS": ("pulse_relay.store.model", "PRUNED_IDS_MIN_SECONDS"),
    "ChangeListener": ("pulse_relay.store.model", "ChangeListener"),
    "DeliveryOutcome": ("pulse_relay.store.model", "DeliveryOutcome"),
    "DeliveryTask": ("pulse_relay.store.model", "DeliveryTask"),
    "FetchTask": ("pulse_relay.store.model", "FetchTask"),
    "IngestOutcome": ("pulse_relay.store.model", "IngestOutcome"),
    "IngestRecord": ("pulse_relay.store.model", "IngestRecord"),
    "StoredDelivery": ("pulse_relay.store.model", "StoredDelivery"),
    "StoredEvent": ("pulse_relay.store.model", "StoredEvent"),
    "UnwritableRecordError": ("pulse_relay.store.model", "UnwritableRecordError"),
    "record_problem": ("pulse_relay.store.model", "record_problem"),
    "text_problem": ("pulse_relay.store.model", "text_problem"),
    "AWAITING_FETCH": ("pulse_relay.store.view_model", "AWAITING_FETCH"),
    "DELIVERY_STATES": ("pulse_relay.store.view_model", "DELIVERY_STATES"),
    "Attempt": ("pulse_relay.store.view_model", "Attempt"),
    "DeliveryView": ("pulse_relay.store.view_model", "DeliveryView"),
    "EventCursor": ("pulse_relay.store.view_model", "EventCursor"),
    "EventView": ("pulse_relay.store.view_model", "EventView"),
    "Watch": ("pulse_relay.store.view_model", "Watch"),
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


__getattr__ = lazy_attributes(__name__, _LAZY)
