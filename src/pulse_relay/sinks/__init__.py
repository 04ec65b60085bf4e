"""Sinks: where envelopes go. `build_sink` turns one `[[sinks]]` table into a sink."""

from __future__ import annotations

import aiohttp

from pulse_relay.config import CommandSinkSettings, FileSinkSettings, HttpSinkSettings
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
from pulse_relay.sinks.http import HttpSink

__all__ = [
    "AnySinkSettings",
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

AnySinkSettings = FileSinkSettings | HttpSinkSettings | CommandSinkSettings


def build_sink(settings: AnySinkSettings, *, session: aiohttp.ClientSession | None = None) -> Sink:
    """The sink for one settings table; `session` is shared by HTTP sinks and never closed by them.

    Raises ValueError for settings only a sink can judge (a filename template
    with unknown fields, a sign_secret that is not valid base64).
    """
    if isinstance(settings, FileSinkSettings):
        return FileSink(settings)
    if isinstance(settings, HttpSinkSettings):
        return HttpSink(settings, session=session)
    if isinstance(settings, CommandSinkSettings):
        return CommandSink(settings)
    raise TypeError(f"unknown sink settings: {type(settings).__name__}")


def retry_policy_for(settings: AnySinkSettings) -> RetryPolicy:
    """The backoff policy a sink's settings ask for (`retry_*_seconds`, `max_attempts`)."""
    return RetryPolicy(
        initial_seconds=settings.retry_initial_seconds,
        max_seconds=settings.retry_max_seconds,
        max_attempts=settings.max_attempts,
    )
