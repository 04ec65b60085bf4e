"""SQLite import: a whole event written in one savepoint of the writer's transaction."""

from __future__ import annotations

import sqlite3

from pulse_relay.store import insert, rows
from pulse_relay.store.model import StoredEvent
from pulse_relay.store.sqlite.plumbing import SQLitePlumbing


class TransferMixin(SQLitePlumbing):
    """Write exported events back."""

    async def insert_event(self, event: StoredEvent) -> bool:
        """Store `event` whole, its states as given; False when its id or body digest is
        already known (see `TransferStore`)."""
        now = self._clock()

        def op(db: sqlite3.Connection) -> bool:
            # The one writer: nothing can store the id between this check and the insert.
            if db.execute(insert.KNOWN_QUERY, insert.known_values(event)).fetchone():
                return False
            db.execute(insert.INSERT_EVENT, insert.event_values(event))
            db.executemany(insert.INSERT_DELIVERY, insert.delivery_rows(event, now))
            db.executemany(
                rows.INSERT_ATTEMPT,
                [rows.attempt_values(event.event_id, attempt) for attempt in event.attempts],
            )
            watch = insert.watch_values(event, now)
            if watch is not None:
                db.execute(insert.insert_watch("TEXT"), watch)
            return True

        stored: bool = await self.write(op)
        if stored:
            self._changed("event", event.event_id)
        return stored
