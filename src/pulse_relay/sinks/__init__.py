"""Sinks: where envelopes go. `build_sink` turns one `[[sinks]]` table into a sink.

Each sink receives its settings validated and parsed by the configuration
(config/types.py: a file mode's bits, a filename template's pieces, a usable
signing secret) and parses none of them again; the configuration imports no
sink. The HTTP sink (and aiohttp with it) is imported when first used: a command
that builds no HTTP sink should not load an HTTP client.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from pulse_relay.retry import RetryPolicy
from pulse_relay.sinks.base import (
    Delivery,
    PermanentSinkError,
    RetryableSinkError,
    Sink,
    SinkError,
    SinkResult,
    matches_any,
)
from pulse_relay.sinks.command import CommandSink
from pulse_relay.sinks.file import FileSink

if TYPE_CHECKING:
    import aiohttp

    from pulse_relay.config import SinkSettings
    from pulse_relay.sinks.http import HttpSink

__all__ = [
    "CommandSink",
    "Delivery",
    "FileSink",
    "HttpSink",
    "PermanentSinkError",
    "RetryableSinkError",
    "Sink",
    "SinkError",
    "SinkResult",
    "build_sink",
    "matches_any",
    "retry_policy_for",
]


def __getattr__(name: str) -> Any:
    if name == "HttpSink":
        return importlib.import_module("pulse_relay.sinks.http").HttpSink
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def build_sink(settings: SinkSettings, *, session: aiohttp.ClientSession | None = None) -> Sink:
    """The sink for one settings table; `session` is shared by HTTP sinks, never closed by them."""
    if settings.type == "file":
        return FileSink(settings)
    if settings.type == "http":
        from pulse_relay.sinks.http import HttpSink

        return HttpSink(settings, session=session)
    if settings.type == "command":
        return CommandSink(settings)
    raise TypeError(f"unknown sink settings: {type(settings).__name__}")


def retry_policy_for(settings: SinkSettings) -> RetryPolicy:
    """The backoff policy a sink's settings ask for (`retry_*_seconds`, `max_attempts`)."""
    return RetryPolicy(
        initial_seconds=settings.retry_initial_seconds,
        max_seconds=settings.retry_max_seconds,
        max_attempts=settings.max_attempts,
    )
