"""Pure decisions shared by every backend: accept / invalid / repeat for a new event, and
what an attempt's outcome leaves in the queue."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pulse_relay.store.model import (
    AWAITING_FETCH,
    Attempt,
    DeliveryOutcome,
    IngestOutcome,
    IngestRecord,
)


def ingest_state(record: IngestRecord, seen_keys: dict[str, str]) -> tuple[str, str | None]:
    """A new event's state and error: invalid, a repeat of its job's status, or accepted.

    An accepted event's job key is added to `seen_keys`, so a later record in the
    same batch is a repeat of it.
    """
    if record.error is not None:
        return "invalid", record.error
    if record.job_key is None:
        return "accepted", None
    if record.job_key in seen_keys:
        return "repeat", (
            f"job {record.job_id} already has a {record.event_type} event "
            f"({seen_keys[record.job_key]}); not delivered twice"
        )
    seen_keys[record.job_key] = record.event_id
    return "accepted", None


@dataclass(frozen=True)
class Decision:
    """What storing one record means: its answer, its state, and the deliveries it starts."""

    record: IngestRecord
    outcome: IngestOutcome
    state: str
    error: str | None
    sinks: tuple[str, ...]
    needs_fetch: bool

    @property
    def due_at(self) -> float:
        """When the record's deliveries are first due (never, until its job is stored)."""
        return AWAITING_FETCH if self.needs_fetch else self.record.received_at


def dedupe_keys(record: IngestRecord) -> tuple[str, ...]:
    """What makes `record` a duplicate when already known: its id, and its body digest if any."""
    if record.body_digest is None:
        return (record.event_id,)
    return (record.event_id, record.body_digest)


def decide_ingest(
    records: Sequence[IngestRecord], known_keys: set[str], seen_keys: dict[str, str]
) -> list[Decision]:
    """Decide a batch: a record any of whose `dedupe_keys` is in `known_keys` is a duplicate;
    `seen_keys` maps accepted job keys to the event holding them. Both are updated, so a
    later record in the batch sees the earlier ones."""
    decisions: list[Decision] = []
    for record in records:
        keys = dedupe_keys(record)
        if not known_keys.isdisjoint(keys):
            decisions.append(Decision(record, "duplicate", "", None, (), False))
            continue
        known_keys.update(keys)
        state, error = ingest_state(record, seen_keys)
        sinks = tuple(record.sinks) if state == "accepted" else ()
        needs_fetch = record.needs_fetch and bool(sinks)
        decisions.append(Decision(record, "accepted", state, error, sinks, needs_fetch))
    return decisions


def delivery_state(outcome: DeliveryOutcome, attempt: Attempt) -> tuple[str, str | None]:
    """The delivery's state and last error after `attempt` ended in `outcome`: a retry is
    pending again, and a delivered one keeps no error."""
    state = "pending" if outcome == "retry" else outcome
    return state, None if outcome == "delivered" else attempt.error


def fetch_failure(attempt: Attempt) -> str:
    """The last error of each pending delivery of an event whose job fetch gave up."""
    return f"job fetch failed: {attempt.error}"
