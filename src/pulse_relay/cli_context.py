"""What the commands share: the configuration they load, the store they open, how they fail.

Kept light (click and the standard library at import time) so `--help` stays quick.
"""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import click

if TYPE_CHECKING:
    from pulse_relay.config import Origins, Settings
    from pulse_relay.store import StoreBackend

T = TypeVar("T")


class CommandContext:
    """What every command is given: the configuration file, and its settings on demand."""

    def __init__(self, config_path: Path | None) -> None:
        self.config_path = config_path

    def settings(self, overrides: dict[str, Any] | None = None) -> Settings:
        from pulse_relay.config import ConfigError, load_settings

        try:
            return load_settings(self.config_path, overrides=overrides)
        except ConfigError as error:
            fail(f"configuration error:\n{error}")

    def settings_with_origins(
        self, overrides: dict[str, Any] | None = None
    ) -> tuple[Settings, Origins]:
        """The settings, and where each value came from (see load_settings_with_origins)."""
        from pulse_relay.config import ConfigError, load_settings_with_origins

        try:
            return load_settings_with_origins(self.config_path, overrides=overrides)
        except ConfigError as error:
            fail(f"configuration error:\n{error}")


def problem_line(text: str, origin: str | None) -> str:
    """One problem as one line, naming where the value came from when it was set."""
    # A quoted message (a database driver's) may span lines; the README promises one each.
    line = " ".join(text.split())
    return f"{line} ({origin})" if origin else line


def fail(message: str) -> NoReturn:
    """Print `message` to stderr and exit 1 (a user or configuration error)."""
    click.echo(f"pulse-relay: {message}", err=True)
    sys.exit(1)


def with_store(
    settings: Settings, action: Callable[[StoreBackend], Awaitable[T]], *, create: bool = False
) -> T:
    """Run `action` against the configured store, which must already exist unless `create`."""
    import asyncio

    from pulse_relay.store import StoreUnavailableError, StoreVersionError
    from pulse_relay.wiring import build_store

    path = settings.store.sqlite_file
    if not create and path is not None and not path.exists():
        fail(f"no store at {path} (start `pulse-relay serve` with this configuration first)")

    async def run() -> T:
        async with build_store(settings) as store:
            return await action(store)

    try:
        return asyncio.run(run())
    except (StoreUnavailableError, StoreVersionError) as error:
        fail(str(error))


def with_service(
    settings: Settings, action: Callable[[StoreBackend], Awaitable[T]], *, create: bool = False
) -> T:
    """`with_store` for the admin API's own functions: a refusal exits 1 with its reason."""
    from pulse_relay.admin.errors import ServiceError

    try:
        return with_store(settings, action, create=create)
    except ServiceError as error:
        fail(error.detail)
