"""PostgreSQL stopped under a live relay, then started again: what the README promises.

A sender posts unique events without pause and retries anything but a 2xx, as
Svix does; midway its server stops. While it is down the ingress answers
`503 unavailable` and `/readyz` 503; once it is back the same relay process
answers 202 and is ready again; every acknowledged id is delivered, and a
second delivery of an id happens only for a delivery whose outcome could not be
recorded (its lease ran out and it was made again: at least once).
"""

from __future__ import annotations

import asyncio
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from pulse_relay.store import PostgresStore, StoreUnavailableError
from pulse_relay.store.postgres.plumbing import CONNECT_TIMEOUT_SECONDS
from tests.helpers import (
    Served,
    free_port,
    ingest_record,
    post_job_created,
    wait_until,
    write_config,
)
from tests.postgres import ThrowawayPostgres

# The fixture throwaway_postgres comes from tests.postgres (a plugin of conftest.py).
pytestmark = pytest.mark.timeout(240)

LEASE_SECONDS = 3.0
ACKED_BEFORE_OUTAGE = 60
ACKED_AFTER_RECOVERY = 60
MAX_EVENTS = 1000
SEND_INTERVAL_SECONDS = 0.02
RETRY_SECONDS = 0.1
MIN_OUTAGE_SECONDS = 2.0
REQUEST_TIMEOUT_SECONDS = 15.0
# Longer than the pool's first four reconnection delays (1 + 2 + 4 + 8 s): left to its
# doubling backoff, the pool would next try about 15 s after the server is back.
LONG_OUTAGE_SECONDS = 16.0


def post(port: int, event_id: str) -> tuple[int, str]:
    """POST one signed job.created event (no fetch); its status and body "status", or 0
    and the error's name when no answer came."""
    try:
        return post_job_created(port, event_id, timeout_seconds=REQUEST_TIMEOUT_SECONDS)
    except OSError as error:
        return 0, type(error).__name__


def readyz(admin_port: int) -> int:
    try:
        with urllib.request.urlopen(
            f"http://127.0.0.1:{admin_port}/readyz", timeout=REQUEST_TIMEOUT_SECONDS
        ) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)
    except OSError:
        return 0


@dataclass
class Answer:
    at: float
    event_id: str
    status: int
    body_status: str


@dataclass
class Sender:
    """Posts msg_0, msg_1, … one after another, each until it gets a 2xx."""

    port: int
    answers: list[Answer] = field(default_factory=list)
    acknowledged: list[str] = field(default_factory=list)
    stopping: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        for n in range(MAX_EVENTS):
            event_id = f"msg_{n}"
            while not self.stopping.is_set():
                status, body_status = post(self.port, event_id)
                self.answers.append(Answer(time.monotonic(), event_id, status, body_status))
                if 200 <= status < 300:
                    self.acknowledged.append(event_id)
                    break
                time.sleep(RETRY_SECONDS)
            if self.stopping.is_set():
                return
            time.sleep(SEND_INTERVAL_SECONDS)

    def acked_after(self, moment: float) -> list[Answer]:
        return [a for a in list(self.answers) if a.at > moment and 200 <= a.status < 300]

    def refusals(self) -> list[Answer]:
        return [a for a in list(self.answers) if not 200 <= a.status < 300]


def start_relay(tmp_path: Path, url: str) -> tuple[Served, int, int, Path]:
    """A relay on `url` whose command sink appends one line per delivery: the relay,
    its ingress and admin ports, and the delivery log."""
    delivered = tmp_path / "delivered.log"
    script = f'cat > /dev/null; echo "$PULSE_EVENT_ID" >> {delivered}'
    sink = {"name": "lines", "type": "command", "argv": ["/bin/sh", "-c", script]}
    port, admin_port = free_port(), free_port()
    config = write_config(
        tmp_path,
        port,
        sinks=[sink],
        admin_port=admin_port,
        store={"url": url},
        delivery={"lease_seconds": LEASE_SECONDS},
        log={"level": "warning"},
    )
    return Served.start(config, port, tmp_path / "serve.log"), port, admin_port, delivered


def delivered_ids(path: Path) -> Counter[str]:
    return Counter(path.read_text().split()) if path.exists() else Counter()


def unrecorded_deliveries(relay: Served) -> int:
    """Deliveries made whose outcome the relay could not write: each may be made again."""
    return sum(
        line.get("event") == "could not record delivery outcome" for line in relay.log_lines()
    )


@pytest.mark.parametrize("mode", ["fast", "immediate"])
def test_a_postgres_outage_is_answered_503_and_survived_without_loss(
    tmp_path: Path, throwaway_postgres: ThrowawayPostgres, mode: str
) -> None:
    server = throwaway_postgres
    relay, port, admin_port, delivered = start_relay(tmp_path, server.url)
    sender = Sender(port)
    thread = threading.Thread(target=sender.run, daemon=True)
    try:
        wait_until(lambda: readyz(admin_port) == 200)
        thread.start()
        wait_until(lambda: len(sender.acknowledged) >= ACKED_BEFORE_OUTAGE, timeout_seconds=60)

        stopped_at = time.monotonic()
        server.stop(mode=mode)
        wait_until(lambda: readyz(admin_port) == 503, timeout_seconds=30)
        wait_until(
            lambda: any(a.status == 503 and a.at > stopped_at for a in sender.refusals()),
            timeout_seconds=30,
        )
        wait_until(lambda: time.monotonic() - stopped_at >= MIN_OUTAGE_SECONDS)
        server.start()
        restarted_at = time.monotonic()

        wait_until(lambda: sender.acked_after(restarted_at), timeout_seconds=60)
        first_ack_seconds = sender.acked_after(restarted_at)[0].at - restarted_at
        wait_until(lambda: readyz(admin_port) == 200, timeout_seconds=60)
        ready_seconds = time.monotonic() - restarted_at
        acked_at_recovery = len(sender.acknowledged)
        wait_until(
            lambda: len(sender.acknowledged) >= acked_at_recovery + ACKED_AFTER_RECOVERY,
            timeout_seconds=60,
        )
        sender.stopping.set()
        thread.join(timeout=REQUEST_TIMEOUT_SECONDS + 5)
        assert relay.process.poll() is None, "the relay must survive the outage by itself"

        acknowledged = set(sender.acknowledged)
        wait_until(lambda: acknowledged <= set(delivered_ids(delivered)), timeout_seconds=90)
        # A duplicate made now would show within one more lease.
        time.sleep(LEASE_SECONDS + 1)
        counts = delivered_ids(delivered)
    finally:
        sender.stopping.set()
        relay.kill()

    refusals = sender.refusals()
    statuses = Counter((a.status, a.body_status) for a in refusals)
    assert set(statuses) == {(503, "unavailable")}, statuses
    retried = {a.event_id for a in refusals}
    assert retried <= acknowledged
    duplicates = sum(count - 1 for count in counts.values())
    assert set(counts) <= {a.event_id for a in sender.answers}
    assert duplicates <= unrecorded_deliveries(relay), counts.most_common(5)
    print(
        f"\n{mode}: outage {restarted_at - stopped_at:.1f} s, {len(refusals)} x 503 for "
        f"{len(retried)} ids, first 202 {first_ack_seconds:.1f} s and ready "
        f"{ready_seconds:.1f} s after the restart, {len(acknowledged)} acknowledged, "
        f"{duplicates} duplicate deliveries, {unrecorded_deliveries(relay)} unrecorded outcomes"
    )


def test_a_relay_started_while_postgres_is_down_exits_naming_it(
    tmp_path: Path, throwaway_postgres: ThrowawayPostgres
) -> None:
    server = throwaway_postgres
    server.stop(mode="fast")
    config_dir = tmp_path / "down"
    config_dir.mkdir()
    relay, *_ = _start_without_waiting(config_dir, server.url)
    returncode = relay.process.wait(timeout=60)
    relay.kill()
    assert returncode == 1
    masked = f"postgresql://**********@127.0.0.1:{server.port}/relay"
    assert f"cannot reach {masked}" in relay.log(), relay.log()
    assert "relay:relay" not in relay.log()

    server.start()
    relay, port, admin_port, _ = start_relay(tmp_path, server.url)
    try:
        wait_until(lambda: readyz(admin_port) == 200)
        assert post(port, "msg_after_start") == (202, "accepted")
    finally:
        relay.kill()


def _start_without_waiting(folder: Path, url: str) -> tuple[Served, Any]:
    config = write_config(folder, free_port(), store={"url": url}, log={"level": "warning"})
    return Served(config, folder / "serve.log"), config


async def test_once_the_store_has_failed_ingest_is_refused_without_the_full_wait(
    throwaway_postgres: ThrowawayPostgres,
) -> None:
    server = throwaway_postgres
    async with PostgresStore(server.url) as store:
        assert await store.ingest(ingest_record("msg_before")) == "accepted"
        server.stop(mode="immediate")
        with pytest.raises(StoreUnavailableError):
            await store.ingest(ingest_record("msg_first"))
        began = time.monotonic()
        with pytest.raises(StoreUnavailableError):
            await store.ingest(ingest_record("msg_second"))
        # The first failure waited for the pool; the next answers without that wait.
        assert time.monotonic() - began < CONNECT_TIMEOUT_SECONDS / 2
        server.start()
        wait_seconds = await _seconds_until_writable(store)
        assert await store.ingest(ingest_record("msg_second")) == "accepted"
    assert wait_seconds < CONNECT_TIMEOUT_SECONDS


async def test_after_a_long_outage_the_store_is_writable_soon_after_the_restart(
    throwaway_postgres: ThrowawayPostgres,
) -> None:
    server = throwaway_postgres
    async with PostgresStore(server.url) as store:
        await store.check_writable()
        server.stop(mode="fast")
        stopped_at = time.monotonic()
        while time.monotonic() - stopped_at < LONG_OUTAGE_SECONDS:
            with pytest.raises(StoreUnavailableError):
                await store.check_writable()
        server.start()
        wait_seconds = await _seconds_until_writable(store)
    assert wait_seconds < LONG_OUTAGE_SECONDS / 2


async def _seconds_until_writable(store: PostgresStore) -> float:
    """How long after now `store` first commits a write (callers retrying each second)."""
    began = time.monotonic()
    while True:
        try:
            await store.check_writable()
        except StoreUnavailableError:
            assert time.monotonic() - began < 60, "the store never came back"
            await asyncio.sleep(0.1)
        else:
            return time.monotonic() - began
