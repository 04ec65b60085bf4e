"""Small SQL helpers shared by the SQLite modules."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

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
