"""The embedded backend's store: its mixins, put together."""

from __future__ import annotations

from pulse_relay.store.sqlite.queue import QueueMixin
from pulse_relay.store.sqlite.retention import RetentionMixin
from pulse_relay.store.sqlite.transfer import TransferMixin
from pulse_relay.store.sqlite.views import ViewsMixin


class SQLiteStore(ViewsMixin, QueueMixin, RetentionMixin, TransferMixin):
    """The relay's SQLite store; open() before use, close() after (or `async with`)."""

    backend = "sqlite"
