"""Small SQL helpers shared by the SQLite modules."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from pulse_relay.store.rows import DELIVERY_VIEW_COLUMNS

# SQLite's default limit on host parameters in one statement is 999 on old builds, so
# every "IN (...)" list of caller-given length is bound in chunks of this many.
_CHUNK = 500


def placeholders(count: int) -> str:
    """`?,?,…` for `count` parameters."""
    return ",".join("?" * count)


def chunks(items: Sequence[str]) -> Iterable[Sequence[str]]:
    """`items` in slices small enough to bind in one statement."""
    for start in range(0, len(items), _CHUNK):
        yield items[start : start + _CHUNK]


def deliveries_query(count: int) -> str:
    """The deliveries (DELIVERY_VIEW_COLUMNS) of `count` events, by sink: `rows.attach_deliveries`
    reads them."""
    return (
        f"SELECT {DELIVERY_VIEW_COLUMNS} FROM deliveries "
        f"WHERE event_id IN ({placeholders(count)}) ORDER BY sink"
    )
