"""What a claimed delivery sends: its envelope and exact bytes, and the `Delivery` its
sink is handed (docs/envelope.md; an edited replay's envelope: docs/api.md)."""

from __future__ import annotations

from typing import Any

from pulse_relay.events import build_envelope, envelope_source, format_timestamp, sendable_envelope
from pulse_relay.sinks.base import Delivery
from pulse_relay.store import DeliveryTask

# An event's envelope and its bytes, or what building them raised.
Prepared = tuple[dict[str, Any], bytes] | Exception


def prepare(task: DeliveryTask) -> Prepared:
    """The envelope `task` sends and its bytes, or what building them raised: a document
    no rule foresaw fails that event's deliveries, never the claim (the work claimed
    beside it would wait for its leases to run out). An edited replay sends its own
    envelope, under the same rules (lone surrogates replaced)."""
    try:
        if task.edited_envelope is not None:
            return sendable_envelope(task.edited_envelope)
        return sendable_envelope(
            build_envelope(
                event_id=task.event_id,
                event_type=task.event_type,
                job_id=task.job_id,
                received_at=task.received_at,
                source=envelope_source(task.source, is_replay=task.is_replay),
                body=task.body,
                job=task.job,
                result_url=task.result_url,
                metadata=task.metadata,
            )
        )
    except Exception as error:
        return error


def envelope_job(envelope: dict[str, Any]) -> dict[str, Any] | None:
    """The envelope's `job` when it is an object (an edited envelope may hold anything)."""
    job = envelope.get("job")
    return job if isinstance(job, dict) else None


def delivery_of(task: DeliveryTask, envelope: dict[str, Any], body: bytes) -> Delivery:
    """What `task`'s sink is handed for `envelope` and its exact `body`."""
    # The job status from the envelope, whose text the sinks can take (the stored job's
    # may not be); the event's id, type, job id and time from the store, never from an
    # edited envelope: file names and commands' variables are made of them.
    job_status = (envelope_job(envelope) or {}).get("status")
    return Delivery(
        event_id=task.event_id,
        event_type=task.event_type,
        job_id=task.job_id,
        job_status=job_status if isinstance(job_status, str) else None,
        envelope=envelope,
        body=body,
        received_at=format_timestamp(task.received_at),
    )
