"""Event listing filters, written once for both backends."""

from __future__ import annotations

from typing import Any

from pulse_relay.store.model import DELIVERY_STATES


def _like_pattern(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def event_filters(
    *,
    event_id: str | None,
    event_type: str | None,
    state: str | None,
    sink: str | None,
    job_id: str | None,
    source: str | None,
    text: str | None,
    body_text: str = "CAST(e.body AS TEXT)",
) -> tuple[list[str], list[Any]]:
    """The WHERE clauses (on `events e`, `?` placeholders) and their parameters for
    `list_events`; `body_text` is the backend's expression for the body as text."""
    clauses: list[str] = []
    params: list[Any] = []
    for column, value in (
        ("e.id", event_id),
        ("e.type", event_type),
        ("e.job_id", job_id),
        ("e.source", source),
    ):
        if value is not None:
            clauses.append(f"{column} = ?")
            params.append(value)
    delivery: list[str] = []
    if sink is not None:
        delivery.append("d.sink = ?")
        params.append(sink)
    if state in DELIVERY_STATES:
        delivery.append("d.state = ?")
        params.append(state)
    elif state is not None:
        clauses.append("e.state = ?")
        params.append(state)
    if delivery:
        clauses.append(
            "EXISTS (SELECT 1 FROM deliveries d WHERE d.event_id = e.id AND "
            + " AND ".join(delivery)
            + ")"
        )
    if text:
        clauses.append(
            "(e.id LIKE ? ESCAPE '\\' OR e.type LIKE ? ESCAPE '\\' "
            f"OR e.job_id LIKE ? ESCAPE '\\' OR {body_text} LIKE ? ESCAPE '\\')"
        )
        params += [_like_pattern(text)] * 4
    return clauses, params
