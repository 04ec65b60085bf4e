"""PostgreSQL import: a whole event written in one transaction, other relays woken."""

from __future__ import annotations

from pulse_relay.store import insert, rows
from pulse_relay.store.listing import POSTGRES
from pulse_relay.store.model import StoredEvent
from pulse_relay.store.postgres.plumbing import PostgresPlumbing

_KNOWN = POSTGRES.sql(insert.KNOWN_QUERY)
# A relay ingesting the same id meanwhile wins the primary key: this insert then stores
# nothing and the event counts as present.
_INSERT_EVENT = POSTGRES.sql(insert.INSERT_EVENT) + " ON CONFLICT DO NOTHING RETURNING id"
_INSERT_DELIVERY = POSTGRES.sql(insert.INSERT_DELIVERY)
_INSERT_ATTEMPT = POSTGRES.sql(rows.INSERT_ATTEMPT)
_INSERT_WATCH = POSTGRES.sql(insert.insert_watch("jsonb"))


class TransferMixin(PostgresPlumbing):
    """Write exported events back."""

    async def insert_event(self, event: StoredEvent) -> bool:
        """Store `event` whole, its states as given; False when its id or body digest is
        already known (see `TransferStore`)."""
        now = self._clock()
        async with self.connection() as conn, conn.transaction():
            cursor = await conn.execute(_KNOWN.encode(), insert.known_values(event))
            if await cursor.fetchone() is not None:
                return False
            cursor = await conn.execute(_INSERT_EVENT.encode(), insert.event_values(event))
            if await cursor.fetchone() is None:
                return False
            async with conn.cursor() as many:
                await many.executemany(_INSERT_DELIVERY.encode(), insert.delivery_rows(event, now))
                await many.executemany(
                    _INSERT_ATTEMPT.encode(),
                    [rows.attempt_values(event.event_id, attempt) for attempt in event.attempts],
                )
            watch = insert.watch_values(event, now)
            if watch is not None:
                await conn.execute(_INSERT_WATCH.encode(), watch)
            await self.notify_work(conn)
        self._wake()
        self._changed("event", event.event_id)
        return True
