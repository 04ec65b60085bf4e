"""What a run sends: the planned events, their permanent faults, and the run's knobs."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

SINKS = ("files", "app", "cmd")

# Permanent faults, carried in the event id so every party can see them.
PERMANENT = {
    "p404": "the job does not exist (GET /job answers 404)",
    "pbad": "GET /job answers a JSON array, not an object",
    "h400": "the HTTP receiver answers 400",
    "cdead": "the command always exits 3",
}
# The sinks a permanent fault kills; the others must still get the event.
PERMANENT_DEAD_SINKS = {
    "p404": frozenset(SINKS),
    "pbad": frozenset(SINKS),
    "h400": frozenset({"app"}),
    "cdead": frozenset({"cmd"}),
}
# Permanent faults that concern the job fetch, so only events that fetch can carry them.
FETCH_FAULTS = ("p404", "pbad")
# At most this many transient faults per (event, party), so max_attempts always suffices.
MAX_TRANSIENT_PER_EVENT = 2
# The event mix: (type, share of all events), drawn in this order.
EVENT_MIX = (("job.completed", 0.7), ("job.failed", 0.1), ("job.processing", 0.2))
FETCHED_TYPES = frozenset({"job.completed", "job.failed"})
# Only completed jobs have a result, so only they can have a large one.
LARGE_RESULT_TYPE = "job.completed"


@dataclass(frozen=True)
class PlannedEvent:
    """One event the senders will send, and what each sink must end with."""

    event_id: str
    event_type: str
    job_id: str
    large: bool
    permanent: str | None

    @property
    def needs_fetch(self) -> bool:
        return self.event_type in FETCHED_TYPES

    def expected(self, sink: str) -> str:
        """`delivered` or `dead` for this sink once the relay has drained."""
        if self.permanent is not None and sink in PERMANENT_DEAD_SINKS[self.permanent]:
            return "dead"
        return "delivered"


@dataclass
class ChaosConfig:
    """Knobs of one run; the defaults are the long version."""

    events: int = 10_000
    senders: int = 8
    kill_rounds: int = 24
    send_rate_per_second: float = 120.0
    fault_rate: float = 0.08
    permanent_rate: float = 0.01
    large_rate: float = 0.1
    sender_retry_probability: float = 0.7
    drain_timeout_seconds: float = 600.0
    seed: int = 20261123
    workdir: Path = field(default_factory=lambda: Path("/tmp/pulse-relay-chaos"))


def _event_type(roll: float) -> str:
    for event_type, share in EVENT_MIX:
        if roll < share:
            return event_type
        roll -= share
    return EVENT_MIX[-1][0]


def make_plan(config: ChaosConfig, rng: random.Random) -> list[PlannedEvent]:
    """The events of a run, each for its own job, in the proportions of `EVENT_MIX`."""
    plan: list[PlannedEvent] = []
    for n in range(config.events):
        event_type = _event_type(rng.random())
        permanent: str | None = None
        if rng.random() < config.permanent_rate:
            kinds = ["h400", "cdead"]
            if event_type in FETCHED_TYPES:
                kinds += FETCH_FAULTS
            permanent = rng.choice(kinds)
        large = event_type == LARGE_RESULT_TYPE and rng.random() < config.large_rate
        suffix = f"-{permanent}" if permanent else ""
        plan.append(
            PlannedEvent(f"evt{n:05d}{suffix}", event_type, f"job{n:05d}{suffix}", large, permanent)
        )
    return plan
