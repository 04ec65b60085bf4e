"""The shared backend: any number of relays on one PostgreSQL database."""

from __future__ import annotations

import psycopg

from pulse_relay.redaction import mask_url
from pulse_relay.store.migrations import newer_schema_problem
from pulse_relay.store.postgres.queue import QueueMixin
from pulse_relay.store.postgres.retention import RetentionMixin
from pulse_relay.store.postgres.schema import MIGRATIONS, schema_version
from pulse_relay.store.postgres.transfer import TransferMixin
from pulse_relay.store.postgres.views import ViewsMixin


class PostgresStore(ViewsMixin, QueueMixin, RetentionMixin, TransferMixin):
    """The relay's store on PostgreSQL; open() before use, close() after (or `async with`)."""


__all__ = ["MIGRATIONS", "PostgresStore", "postgres_problem"]


async def postgres_problem(url: str) -> str | None:
    """Why the relay cannot use the database at `url` (unreachable, newer schema); None if
    it can. Reads only: a missing or older schema is migrated by `serve`."""
    try:
        async with await psycopg.AsyncConnection.connect(
            url, autocommit=True, connect_timeout=5
        ) as conn:
            version = await schema_version(conn)
    except psycopg.Error as error:
        return f"cannot reach {mask_url(url)}: {error}"
    return newer_schema_problem(mask_url(url), version, MIGRATIONS)
