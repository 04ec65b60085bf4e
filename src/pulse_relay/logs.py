"""structlog set-up: console lines on a TTY, JSON lines otherwise; and log sampling.

Lines from other libraries (aiohttp, asyncio) that log through the standard
`logging` module are rendered the same way, so stderr carries one format only.

Lines that can repeat without end go through a `SampledLog`: refusals at the edge
(a flood), and warnings repeated while a dependency is down (`outage_log`).
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import sys
import time
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any, TextIO

import orjson
import structlog

from pulse_relay.redaction import REDACTED, is_secret_name

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}

# Not secrets by name, but a document's content must not reach a log line either.
_BODY_KEYS = frozenset({"body", "payload"})
# The longest text a log line carries in one field: values that come from
# senders (an event type stored before types were bounded, a job status) must
# not make a line of hundreds of kilobytes.
MAX_LOG_VALUE_CHARS = 512


@functools.lru_cache(maxsize=1024)
def _is_hidden_key(key: str) -> bool:
    # Log lines reuse a handful of keys: the regex runs once per key, not once per line.
    return is_secret_name(key) or key.lower() in _BODY_KEYS


def redact_sensitive(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """Replace the value of every secret-looking or body key with a marker.

    A last line of defence behind the rule that secrets, signatures and bodies
    are not logged at all, whoever passes them.
    """
    for key in [key for key in event_dict if _is_hidden_key(key)]:
        event_dict[key] = REDACTED
    return event_dict


def _dumps(event_dict: Any, **dumps_kw: Any) -> str:
    """One JSON line: orjson (a line per accepted webhook is on the request path), else json."""
    try:
        return orjson.dumps(
            event_dict, default=dumps_kw["default"], option=orjson.OPT_NON_STR_KEYS
        ).decode()
    except TypeError:  # orjson.JSONEncodeError: an int beyond 64 bits, for one
        return json.dumps(event_dict, **dumps_kw)


def clip_long_values(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """Cut every text value to MAX_LOG_VALUE_CHARS, saying how much was dropped."""
    for key, value in event_dict.items():
        if isinstance(value, str) and len(value) > MAX_LOG_VALUE_CHARS:
            dropped = len(value) - MAX_LOG_VALUE_CHARS
            event_dict[key] = f"{value[:MAX_LOG_VALUE_CHARS]}...[{dropped} more characters]"
    return event_dict


class UTCTimeStamper:
    """`timestamp` as structlog's TimeStamper(fmt="iso", utc=True) writes it, for less.

    A line per accepted webhook is on the request path, and building a datetime
    to format it costs more than the rest of the line's processing: here the date
    and time are formatted once a second and only the microseconds on each line.
    """

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._second = -1
        self._prefix = ""

    def __call__(
        self, _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        now = self._clock()
        second = int(now)
        if second != self._second:
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._second = second
        micro = int((now - second) * 1_000_000)
        # datetime.isoformat leaves the fraction out when it is zero.
        event_dict["timestamp"] = f"{self._prefix}.{micro:06d}Z" if micro else f"{self._prefix}Z"
        return event_dict


def _add_logger_name(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """A library's line names its logger under `logger_name`, as the relay's own lines do
    (structlog's add_logger_name says `logger`): one key to filter on for every line."""
    record = event_dict.get("_record")
    if record is not None:
        event_dict["logger_name"] = record.name
    return event_dict


class _RelayHandler(logging.StreamHandler[TextIO]):
    """The root handler this module installs (so a reconfiguration replaces only it)."""

    def __init__(self, stream: TextIO | None) -> None:
        super().__init__(stream if stream is not None else sys.stderr)
        self._follows_stderr = stream is None

    def emit(self, record: logging.LogRecord) -> None:
        if self._follows_stderr:
            # Whatever sys.stderr is now (it may have been replaced since set-up).
            self.stream = sys.stderr
        super().emit(record)


def configure_logging(
    *, format: str = "auto", level: str = "info", stream: TextIO | None = None
) -> None:
    """Route structlog (and stdlib logging) to `stream`, stderr by default, as JSON or console.

    Safe to call again (SIGHUP): the new format and level replace the old ones.
    """
    out = stream if stream is not None else sys.stderr
    as_console = format == "console" or (format == "auto" and out.isatty())
    renderer: Any = (
        structlog.dev.ConsoleRenderer(colors=out.isatty())
        if as_console
        else structlog.processors.JSONRenderer(serializer=_dumps)
    )
    threshold = _LEVELS.get(level, logging.INFO)
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        UTCTimeStamper(),
        redact_sensitive,
        clip_long_values,
    ]
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(threshold),
        # WriteLogger writes and flushes the line; PrintLogger goes through print().
        logger_factory=structlog.WriteLoggerFactory(file=out),
        cache_logger_on_first_use=False,
    )
    handler = _RelayHandler(stream)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[_add_logger_name, *shared],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _RelayHandler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    # Other libraries speak at warning and above only, even when debugging: aiosqlite's
    # debug lines, for one, print every SQL parameter (bodies, jobs).
    root.setLevel(max(threshold, logging.WARNING))


class _ModuleLogger:
    """A module's logger, assembled once per structlog configuration.

    structlog's lazy proxy assembles a new bound logger on every call unless told to
    cache it, and a cached one keeps the set-up it was built with: a SIGHUP's new level
    or format, or a test's `capture_logs`, would not reach it. This one rebuilds when
    the configuration's parts are no longer the ones it was built from, which costs a
    few identity checks per line instead of an assembly (a line per accepted webhook is
    on the request path).
    """

    __slots__ = ("_bound", "_built_from", "_name")

    def __init__(self, name: str) -> None:
        self._name = name
        self._built_from: tuple[Any, ...] = (None, None, None, None)
        self._bound: Any = None

    def _current(self) -> Any:
        config = structlog.get_config()
        processors, wrapper_class, logger_factory, context_class = self._built_from
        if (
            config["processors"] is not processors
            or config["wrapper_class"] is not wrapper_class
            or config["logger_factory"] is not logger_factory
            or config["context_class"] is not context_class
        ):
            self._bound = structlog.get_logger(logger_name=self._name).bind()
            self._built_from = (
                config["processors"],
                config["wrapper_class"],
                config["logger_factory"],
                config["context_class"],
            )
        return self._bound

    # The levels the relay logs at, as methods: an attribute that is not found costs a
    # failed lookup before __getattr__ is asked.
    def debug(self, event: str, **fields: Any) -> Any:
        return self._current().debug(event, **fields)

    def info(self, event: str, **fields: Any) -> Any:
        return self._current().info(event, **fields)

    def warning(self, event: str, **fields: Any) -> Any:
        return self._current().warning(event, **fields)

    def error(self, event: str, **fields: Any) -> Any:
        return self._current().error(event, **fields)

    def __getattr__(self, name: str) -> Any:
        # exception, log, bind, ...: the current logger's own.
        return getattr(self._current(), name)


def get_logger(name: str) -> Any:
    """A structlog logger whose lines carry `logger_name`."""
    return _ModuleLogger(name)


# --- sampling ------------------------------------------------------------------------------

# Past this many distinct sampling keys, lines share one budget per kind.
MAX_SAMPLING_KEYS = 64
# While a dependency is down, a warning repeats on every retry (the PostgreSQL
# listener's each second, a fetch's for every job): one line per key in this long.
OUTAGE_WINDOW_SECONDS = 60.0


@dataclass
class _Window:
    started_at: float
    logged: int = 0
    suppressed: int = 0


@dataclass
class LogSampler:
    """At most `per_window` lines per `window_seconds` for each key; the rest are only counted.

    A key reads `kind:detail`; past MAX_SAMPLING_KEYS keys, new ones share `kind:other`.
    """

    per_window: int = 5
    window_seconds: float = 1.0
    clock: Callable[[], float] = time.monotonic
    _windows: dict[str, _Window] = field(default_factory=dict)

    def admit(self, key: str) -> bool:
        """Whether a line for `key` may be written now; a refused one is counted as suppressed."""
        now = self.clock()
        if key not in self._windows and len(self._windows) >= MAX_SAMPLING_KEYS:
            key = key.partition(":")[0] + ":other"
        window = self._windows.get(key)
        if window is None or now - window.started_at >= self.window_seconds:
            suppressed = window.suppressed if window is not None else 0
            window = self._windows[key] = _Window(started_at=now, suppressed=suppressed)
        if window.logged < self.per_window:
            window.logged += 1
            return True
        window.suppressed += 1
        return False

    def take_suppressed(self) -> dict[str, int]:
        """The number of lines suppressed per key since the last call, then forget them."""
        taken = {key: w.suppressed for key, w in self._windows.items() if w.suppressed}
        for key in taken:
            self._windows[key].suppressed = 0
        return taken


class SampledLog:
    """Log lines that cannot multiply: a few per window and key, then one count of the rest."""

    def __init__(self, logger: Any, *, sampler: LogSampler | None = None) -> None:
        self._log = logger
        self._sampler = sampler or LogSampler()
        self._flush_scheduled = False

    def emit(self, key: str, level: str | int, event: str, **fields: Any) -> None:
        """Write `event` at `level` (a name, or a `logging` number) unless `key` has used
        its budget for this window."""
        if self._sampler.admit(key):
            name = logging.getLevelName(level).lower() if isinstance(level, int) else level
            getattr(self._log, name)(event, **fields)
        elif not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_later(self._sampler.window_seconds, self.flush)

    def flush(self) -> None:
        """One line per key with the number of lines suppressed since the last flush."""
        self._flush_scheduled = False
        for key, count in self._sampler.take_suppressed().items():
            self._log.warning("similar log lines suppressed", kind=key, suppressed=count)


def outage_log(logger: Any, *, clock: Callable[[], float] = time.monotonic) -> SampledLog:
    """Sampling for warnings repeated while a dependency is down: the first line for each
    key, then one per OUTAGE_WINDOW_SECONDS, with the number of those left out."""
    sampler = LogSampler(per_window=1, window_seconds=OUTAGE_WINDOW_SECONDS, clock=clock)
    return SampledLog(logger, sampler=sampler)
