"""The event listing read straight from the file, for `pulse-relay events`.

The store proper (`SQLiteStore`) starts a writer thread, runs its reads on aiosqlite's
thread under an event loop, and migrates the file first: most of a listing's start-up
time, for one command that writes nothing. Here one standard-library connection runs
the same queries (`listing_query`, `deliveries_query`) and maps the rows the same way
(`rows`). Anything this path does not expect (a schema that is not this release's, a
file that is not a database, a lock past the busy timeout) answers None: the caller then
opens the store proper, which migrates, refuses or reports it exactly as before.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any
from urllib.parse import quote

from pulse_relay.store import rows
from pulse_relay.store.listing import SQLITE, listing_query
from pulse_relay.store.sqlite.schema import MIGRATIONS, schema_version
from pulse_relay.store.sqlite.sql import chunks, deliveries_query
from pulse_relay.store.view_model import EventView


def list_events_now(
    path: Path, *, busy_timeout_seconds: float, **query: Any
) -> list[EventView] | None:
    """`SQLiteStore.list_events(**query)` on the store at `path`, which must exist; None
    when the store proper must answer instead (see the module's docstring)."""
    try:
        # mode=rw: a file gone meanwhile is not created here (the store proper says so).
        db = sqlite3.connect(
            f"file:{quote(str(path))}?mode=rw",
            uri=True,
            isolation_level=None,
            timeout=busy_timeout_seconds,
        )
    except sqlite3.Error:
        return None
    try:
        # One read transaction: the deliveries are those of the events listed.
        db.execute("BEGIN")
        if schema_version(db) != len(MIGRATIONS):
            return None
        sql, params = listing_query(SQLITE, **query)
        views = [rows.event_view(row) for row in db.execute(sql, params)]
        for chunk in chunks([view.id for view in views]):
            rows.attach_deliveries(views, db.execute(deliveries_query(len(chunk)), chunk))
        return views
    except sqlite3.Error:
        return None
    finally:
        db.close()
