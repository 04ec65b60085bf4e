"""What both backends' migrations share: which scripts bring a store to the newest schema,
and the refusal of a store written by a newer release."""

from __future__ import annotations

from collections.abc import Sequence

from pulse_relay.store.errors import StoreVersionError


def newer_schema_problem(where: str, version: int, migrations: Sequence[str]) -> str | None:
    """Why the store at `where`, at schema `version`, is not for this release (a newer one
    wrote it), given this release's `migrations`; None if it is."""
    if version <= len(migrations):
        return None
    return (
        f"{where} has schema version {version}; this pulse-relay knows "
        f"{len(migrations)}: upgrade pulse-relay"
    )


def pending_migrations(
    where: str, version: int, migrations: Sequence[str]
) -> list[tuple[int, str]]:
    """The (version reached, script) of each migration the store at `where` still needs,
    oldest first; StoreVersionError when a newer release wrote it."""
    problem = newer_schema_problem(where, version, migrations)
    if problem is not None:
        raise StoreVersionError(problem)
    return list(enumerate(migrations[version:], start=version + 1))
