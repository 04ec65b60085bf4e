"""Event listing filters: what a valid filter is, for the API and the command line alike
(the SQL that applies them is `pulse_relay.store.listing`)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pulse_relay.store.view_model import DELIVERY_STATES, EventCursor

EVENT_STATES = ("accepted", "invalid", "repeat")
SOURCES = ("webhook", "poll")
DEFAULT_LIMIT = 50
MAX_LIMIT = 500
MAX_FILTER_CHARS = 256
# ASCII digits only: str.isdigit() also accepts "²", which int() refuses.
_DECIMAL = re.compile(r"[0-9]{1,9}")


class FilterError(ValueError):
    """A listing filter is invalid; `name` is the filter, `problem` what a valid one is."""

    def __init__(self, name: str, problem: str) -> None:
        super().__init__(f"{name}: {problem}")
        self.name = name
        self.problem = problem


@dataclass(frozen=True)
class EventFilters:
    """The filters of an event listing (every one optional)."""

    type: str | None = None
    state: str | None = None
    sink: str | None = None
    job_id: str | None = None
    source: str | None = None
    q: str | None = None
    limit: int = DEFAULT_LIMIT
    before: EventCursor | None = None

    def query(self) -> dict[str, Any]:
        """The store's `list_events` arguments for these filters, the page size aside."""
        return {
            "event_type": self.type,
            "state": self.state,
            "sink": self.sink,
            "job_id": self.job_id,
            "source": self.source,
            "text": self.q,
            "before": self.before,
        }


def text_filter(values: Mapping[str, str | None], name: str) -> str | None:
    """The filter `name` as given (None when absent or empty); FilterError when unusable."""
    value = values.get(name)
    if value is None or value == "":
        return None
    if len(value) > MAX_FILTER_CHARS or "\x00" in value:
        raise FilterError(name, f"at most {MAX_FILTER_CHARS} characters, no NUL")
    return value


def _choice_filter(
    values: Mapping[str, str | None], name: str, allowed: tuple[str, ...]
) -> str | None:
    value = text_filter(values, name)
    if value is not None and value not in allowed:
        raise FilterError(name, f"must be one of {', '.join(allowed)}")
    return value


def parse_limit(raw: str | None) -> int:
    """`limit` as text: 1 to MAX_LIMIT, DEFAULT_LIMIT when absent; FilterError otherwise."""
    if raw is None or raw == "":
        return DEFAULT_LIMIT
    if not _DECIMAL.fullmatch(raw) or not 1 <= int(raw) <= MAX_LIMIT:
        raise FilterError("limit", f"must be an integer from 1 to {MAX_LIMIT}")
    return int(raw)


def parse_event_filters(values: Mapping[str, str | None]) -> EventFilters:
    """Validate an event listing's filters, given as text by name (a query string, the
    command line's options); FilterError names the first bad one. `before` is the
    caller's to decode: its form belongs to the API."""
    return EventFilters(
        type=text_filter(values, "type"),
        state=_choice_filter(values, "state", EVENT_STATES + DELIVERY_STATES),
        sink=text_filter(values, "sink"),
        job_id=text_filter(values, "job_id"),
        source=_choice_filter(values, "source", SOURCES),
        q=text_filter(values, "q"),
        limit=parse_limit(values.get("limit")),
    )
