"""The embedded backend: one SQLite file, one relay owning its queue.

`SQLiteStore` (store.py) is imported on first use (module `__getattr__`): `reader`,
the read-only path of `pulse-relay events`, enters this package without loading the
writer, aiosqlite or the queue.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pulse_relay.lazy import lazy_attributes

if TYPE_CHECKING:
    from pulse_relay.store.sqlite.schema import MIGRATIONS
    from pulse_relay.store.sqlite.store import SQLiteStore

# name -> (module, attribute) of what is imported when first asked for.
_LAZY = {
    "SQLiteStore": ("pulse_relay.store.sqlite.store", "SQLiteStore"),
    "MIGRATIONS": ("pulse_relay.store.sqlite.schema", "MIGRATIONS"),
}

__all__ = ["MIGRATIONS", "SQLiteStore"]


__getattr__ = lazy_attributes(__name__, _LAZY)
