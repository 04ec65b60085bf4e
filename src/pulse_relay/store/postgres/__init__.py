"""The shared backend: any number of relays on one PostgreSQL database."""

from __future__ import annotations

from pulse_relay.store.postgres.queue import QueueMixin
from pulse_relay.store.postgres.retention import RetentionMixin
from pulse_relay.store.postgres.schema import MIGRATIONS
from pulse_relay.store.postgres.views import ViewsMixin


class PostgresStore(ViewsMixin, QueueMixin, RetentionMixin):
    """The relay's store on PostgreSQL; open() before use, close() after (or `async with`)."""


__all__ = ["MIGRATIONS", "PostgresStore"]
