"""The store's errors, apart from its records: a command that only reads the store
(`pulse-relay events`) catches them without loading the write side's types."""

from __future__ import annotations


class StoreUnavailableError(Exception):
    """The store cannot take writes now (locked past the timeout, disk full, read-only)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class StoreVersionError(Exception):
    """The database was written by a newer pulse-relay."""
