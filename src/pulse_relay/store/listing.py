"""The event listing's SQL, written once for both backends: the filters, the page cursor,
the order. What differs between the backends (placeholders, a case-insensitive LIKE,
the body as text, the order of ids) is a `Dialect`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from pulse_relay.store.rows import EVENT_COLUMNS
from pulse_relay.store.view_model import DELIVERY_STATES, EventCursor, EventView


@dataclass(frozen=True)
class Dialect:
    """How one backend spells what the shared SQL leaves open."""

    # A query parameter: sqlite3's `?`, psycopg's `%s`.
    placeholder: str
    # LIKE matching case-insensitively: SQLite's LIKE is (for ASCII), PostgreSQL's is not.
    like: str
    # The body (bytes) as text, for the text search.
    body_text: str
    # Ids in byte order, the order of a page's cursor on both backends.
    id_order: str

    def sql(self, query: str) -> str:
        """`query`, written with `?` placeholders, in this dialect."""
        return query.replace("?", self.placeholder)


SQLITE = Dialect(placeholder="?", like="LIKE", body_text="CAST(e.body AS TEXT)", id_order="e.id")
POSTGRES = Dialect(
    placeholder="%s",
    like="ILIKE",
    body_text="encode(e.body, 'escape')",
    id_order='e.id COLLATE "C"',
)


def _like_pattern(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def event_filters(
    dialect: Dialect,
    *,
    event_id: str | None,
    event_type: str | None,
    state: str | None,
    sink: str | None,
    job_id: str | None,
    source: str | None,
    text: str | None,
) -> tuple[list[str], list[Any]]:
    """The WHERE clauses (on `events e`, `?` placeholders) and their parameters for
    `list_events`."""
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
        like = dialect.like
        clauses.append(
            f"(e.id {like} ? ESCAPE '\\' OR e.type {like} ? ESCAPE '\\' "
            f"OR e.job_id {like} ? ESCAPE '\\' OR {dialect.body_text} {like} ? ESCAPE '\\')"
        )
        params += [_like_pattern(text)] * 4
    return clauses, params


def after_cursor(before: EventCursor) -> tuple[str, list[Any]]:
    """The clause (`?` placeholders) and parameters of the events listed after `before`,
    in the listing's order: newest first, then by id."""
    clause = "(e.received_at < ? OR (e.received_at = ? AND e.id > ?))"
    return clause, [before.received_at, before.received_at, before.event_id]


def listing_query(
    dialect: Dialect,
    *,
    event_type: str | None = None,
    state: str | None = None,
    limit: int = 50,
    sink: str | None = None,
    job_id: str | None = None,
    source: str | None = None,
    text: str | None = None,
    before: EventCursor | None = None,
    event_id: str | None = None,
) -> tuple[str, list[Any]]:
    """The query (in `dialect`, selecting EVENT_COLUMNS) and parameters of
    `EventListing.list_events`, which says what each filter means."""
    clauses, params = event_filters(
        dialect,
        event_id=event_id,
        event_type=event_type,
        state=state,
        sink=sink,
        job_id=job_id,
        source=source,
        text=text,
    )
    if before is not None:
        clause, cursor_params = after_cursor(before)
        clauses.append(clause)
        params += cursor_params
    where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
    sql = (
        f"SELECT {EVENT_COLUMNS} FROM events e {where} "
        f"ORDER BY e.received_at DESC, {dialect.id_order} LIMIT ?"
    )
    return dialect.sql(sql), [*params, limit]


class EventListing:
    """`list_events` for a backend that runs the listing's query (`_listed_events`)."""

    dialect: ClassVar[Dialect]

    async def list_events(
        self,
        *,
        event_type: str | None = None,
        state: str | None = None,
        limit: int = 50,
        sink: str | None = None,
        job_id: str | None = None,
        source: str | None = None,
        text: str | None = None,
        before: EventCursor | None = None,
        event_id: str | None = None,
    ) -> list[EventView]:
        """Newest events first, with each sink's delivery state.

        `state` is an event state (accepted, invalid, repeat) or a delivery state
        (pending, delivered, dead: some delivery, to `sink` if given, is in it);
        `text` is matched case-insensitively in the id, type, job id and body;
        `before` continues a listing after the last event of its previous page.
        """
        sql, params = listing_query(
            self.dialect,
            event_type=event_type,
            state=state,
            limit=limit,
            sink=sink,
            job_id=job_id,
            source=source,
            text=text,
            before=before,
            event_id=event_id,
        )
        return await self._listed_events(sql, params)

    async def _listed_events(self, sql: str, params: list[Any]) -> list[EventView]:
        """The events `sql` selects (EVENT_COLUMNS), with their deliveries."""
        raise NotImplementedError
