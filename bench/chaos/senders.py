"""Concurrent webhook senders that retry as Svix does while the relay is being killed."""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections import Counter
from dataclasses import dataclass, field

import aiohttp

from bench.chaos.plan import ChaosConfig, PlannedEvent
from bench.common import SECRET
from pulse_relay.emulator import PulseEmulator
from pulse_relay.ingress.signature import sign_headers

# Attempts per event before a sender gives it up, whatever the dice say.
MAX_SEND_ATTEMPTS = 8
# What a sender waits before it tries a failed POST again, in seconds.
RETRY_PAUSE_SECONDS = (0.2, 0.6)


@dataclass
class SendLog:
    """What the senders know: which events got a 2xx, which were given up."""

    acked: set[str] = field(default_factory=set)
    abandoned: set[str] = field(default_factory=set)
    statuses: Counter[int] = field(default_factory=Counter)
    connection_errors: int = 0
    in_flight: int = 0
    done: bool = False

    @property
    def settled(self) -> int:
        """Events acknowledged or given up so far."""
        return len(self.acked) + len(self.abandoned)


@dataclass
class Senders:
    """`config.senders` workers sharing one queue of planned events, paced in total."""

    url: str
    emulator: PulseEmulator
    config: ChaosConfig
    rng: random.Random
    sent: SendLog

    async def run(self, plan: list[PlannedEvent]) -> None:
        """Send every planned event; each failed attempt is retried or the event abandoned."""
        queue: asyncio.Queue[PlannedEvent] = asyncio.Queue()
        for event in plan:
            queue.put_nowait(event)
        await asyncio.gather(*(self._worker(queue) for _ in range(self.config.senders)))
        self.sent.done = True

    async def _worker(self, queue: asyncio.Queue[PlannedEvent]) -> None:
        interval_seconds = self.config.senders / self.config.send_rate_per_second
        connector = aiohttp.TCPConnector(limit=1, force_close=False)
        timeout = aiohttp.ClientTimeout(total=10)
        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
            while not queue.empty():
                event = queue.get_nowait()
                began = time.monotonic()
                await self._send(session, event)
                await asyncio.sleep(max(0.0, interval_seconds - (time.monotonic() - began)))

    async def _send(self, session: aiohttp.ClientSession, event: PlannedEvent) -> None:
        body = json.dumps(self.emulator.webhook_payload(event.event_type, event.job_id)).encode()
        for _ in range(MAX_SEND_ATTEMPTS):
            status = await self._post(session, event.event_id, body)
            self.sent.statuses[status] += 1
            if status in (200, 202):
                self.sent.acked.add(event.event_id)
                return
            if status not in (0, 503):
                raise AssertionError(f"{event.event_id}: unexpected HTTP {status}")
            if self.rng.random() > self.config.sender_retry_probability:
                break
            await asyncio.sleep(self.rng.uniform(*RETRY_PAUSE_SECONDS))
        self.sent.abandoned.add(event.event_id)

    async def _post(self, session: aiohttp.ClientSession, event_id: str, body: bytes) -> int:
        """One attempt: the HTTP status, 0 when the connection failed."""
        # Signed afresh on every attempt, as Svix does.
        headers = {**sign_headers(SECRET, event_id, body), "content-type": "application/json"}
        self.sent.in_flight += 1
        try:
            async with session.post(self.url, data=body, headers=headers) as response:
                await response.read()
                return response.status
        except (aiohttp.ClientError, TimeoutError):
            self.sent.connection_errors += 1
            return 0
        finally:
            self.sent.in_flight -= 1
