"""The embedded backend: one SQLite file, one relay owning its queue."""

from __future__ import annotations

from pulse_relay.store.sqlite.queue import QueueMixin
from pulse_relay.store.sqlite.retention import RetentionMixin
from pulse_relay.store.sqlite.schema import MIGRATIONS
from pulse_relay.store.sqlite.transfer import TransferMixin
from pulse_relay.store.sqlite.views import ViewsMixin


class SQLiteStore(ViewsMixin, QueueMixin, RetentionMixin, TransferMixin):
    """The relay's SQLite store; open() before use, close() after (or `async with`)."""

    backend = "sqlite"


__all__ = ["MIGRATIONS", "SQLiteStore"]
