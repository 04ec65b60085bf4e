"""The dispatcher's claimed work running here: one run per key, and the token it answers with.

The store hands work back once its lease runs out, and that can happen to work still
running here: when this relay's event loop stalls past a lease (a loaded machine, a
slow renewal during a store outage), the heartbeat renews too late. Starting it again
would run it twice at once; instead the running attempt carries on, and renews and
writes its outcome under the newest claim's lease token, the one the store now
matches (see `pulse_relay.store.contract`).
"""

from __future__ import annotations

from typing import TypeVar

from pulse_relay.logs import get_logger
from pulse_relay.store import DeliveryTask, FetchTask

log = get_logger("pulse_relay.dispatcher")

K = TypeVar("K")
T = TypeVar("T", FetchTask, DeliveryTask)


class RunningWork:
    """The newest claim of each job fetch and each delivery running here."""

    def __init__(self) -> None:
        self._fetches: dict[str, FetchTask] = {}
        self._deliveries: dict[tuple[str, str], DeliveryTask] = {}

    def start_fetch(self, task: FetchTask) -> bool:
        """Whether to start `task`: False when its fetch already runs here."""
        return _start(self._fetches, task.event_id, task, webhook_id=task.event_id)

    def start_delivery(self, task: DeliveryTask) -> bool:
        """Whether to start `task`: False when its delivery already runs here."""
        key = (task.event_id, task.sink)
        return _start(self._deliveries, key, task, webhook_id=task.event_id, sink=task.sink)

    def fetch_token(self, task: FetchTask) -> str | None:
        """The lease token to write `task`'s outcome with: its newest claim's."""
        return self._fetches.get(task.event_id, task).token

    def delivery_token(self, task: DeliveryTask) -> str | None:
        """The lease token to write `task`'s outcome with: its newest claim's."""
        return self._deliveries.get((task.event_id, task.sink), task).token

    def end_fetch(self, task: FetchTask) -> None:
        self._fetches.pop(task.event_id, None)

    def end_delivery(self, task: DeliveryTask) -> None:
        self._deliveries.pop((task.event_id, task.sink), None)

    def leases(self) -> tuple[list[FetchTask], list[DeliveryTask]]:
        """The newest claim of everything running here: what the heartbeat renews."""
        return list(self._fetches.values()), list(self._deliveries.values())


def _start(running: dict[K, T], key: K, task: T, **context: str) -> bool:
    claimed_again = key in running
    running[key] = task
    if claimed_again:
        log.warning("claimed again while still running; the running attempt carries on", **context)
    return not claimed_again
