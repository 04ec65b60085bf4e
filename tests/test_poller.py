"""Polling fallback end to end: watched jobs, recovery, bounded concurrency, polling-only mode."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any, cast

import aiohttp
import pytest
from structlog.testing import capture_logs

from pulse_relay.app import Relay
from pulse_relay.config import Settings
from pulse_relay.emulator import PulseEmulator
from pulse_relay.metrics import Metrics
from pulse_relay.poller import Poller, PollerConfig
from pulse_relay.pulse import PulseClient
from pulse_relay.store import StoreBackend, Watch
from tests.helpers import (
    FAST_RETRY,
    SECRET,
    MakeSettings,
    PipelineSettings,
    Receiver,
    StartRelay,
    deep_merge,
    free_port,
    make_body,
    signed,
    wait_for,
)

FAST_POLL = {"interval_seconds": 0.05, "max_interval_seconds": 0.2}


@pytest.fixture
def poll_settings(pipeline_settings: PipelineSettings) -> PipelineSettings:
    """The pipeline's settings, polling fast."""

    def make(**extra: Any) -> Settings:
        return pipeline_settings(**deep_merge({"poll": FAST_POLL}, extra))

    return make


async def events_by_id(relay: Relay) -> dict[str, Any]:
    return {view.id: view for view in await relay.store.list_events(limit=1000)}


async def all_delivered(relay: Relay, event_id: str) -> bool:
    view = await relay.store.get_event(event_id)
    return (
        view is not None
        and bool(view.deliveries)
        and all(d["state"] == "delivered" for d in view.deliveries.values())
    )


async def test_watched_job_is_delivered_once_to_every_sink_with_source_poll(
    start_relay: StartRelay,
    poll_settings: Any,
    emulator: PulseEmulator,
    receiver: Receiver,
    tmp_path: Path,
) -> None:
    emulator.add_job("job-w", statuses=["pending", "processing", "completed"])
    relay = await start_relay(poll_settings())
    await relay.store.add_watches(
        ["job-w"], metadata={"user": "u-42", "source": "s3://bucket/a.pdf"}, interval_seconds=0.05
    )
    relay.poller.notify()  # type: ignore[union-attr]
    await wait_for(lambda: all_delivered(relay, "poll:job-w:completed"))

    envelope = json.loads((tmp_path / "files" / "job-w.json").read_bytes())
    assert envelope["id"] == "poll:job-w:completed"
    assert envelope["source"] == "poll"
    assert envelope["type"] == "job.completed"
    assert envelope["job"]["status"] == "completed"
    assert envelope["relay"]["metadata"] == {"user": "u-42", "source": "s3://bucket/a.pdf"}
    assert [r.envelope["id"] for r in receiver.received] == ["poll:job-w:completed"]
    assert (tmp_path / "command-out" / "poll_job-w_completed.json").exists()
    # Polled until terminal, then not again.
    watches = await relay.store.list_watches()
    assert [(w.job_id, w.state, w.last_status) for w in watches] == [("job-w", "done", "completed")]
    polls = emulator.get_count("job-w")
    assert polls == 4  # pending, processing, completed, then the fetch for the envelope
    assert list(await events_by_id(relay)) == ["poll:job-w:completed"]


async def test_webhook_and_poll_for_the_same_status_deliver_once(
    start_relay: StartRelay,
    poll_settings: Any,
    emulator: PulseEmulator,
    receiver: Receiver,
) -> None:
    emulator.add_job("job-both")
    relay = await start_relay(poll_settings())
    status, _ = await emulator.send_webhook(
        relay.webhook_url, SECRET, "job.completed", "job-both", webhook_id="msg_both"
    )
    assert status == 202
    await wait_for(lambda: all_delivered(relay, "msg_both"))
    await relay.store.add_watches(["job-both"], interval_seconds=0.05)
    relay.poller.notify()  # type: ignore[union-attr]

    async def polled() -> bool:
        view = await relay.store.get_event("poll:job-both:completed")
        return view is not None

    await wait_for(polled)
    repeat = await relay.store.get_event("poll:job-both:completed")
    assert repeat is not None
    assert (repeat.state, repeat.deliveries) == ("repeat", {})
    assert "msg_both" in (repeat.error or "")
    assert [r.envelope["id"] for r in receiver.received] == ["msg_both"]


async def test_processing_webhook_without_terminal_one_is_recovered_by_polling(
    start_relay: StartRelay,
    poll_settings: Any,
    emulator: PulseEmulator,
    receiver: Receiver,
) -> None:
    emulator.add_job("job-lost", statuses=["processing", "completed"])
    relay = await start_relay(poll_settings(poll={"recover_after_seconds": 0.3}))
    status, _ = await emulator.send_webhook(
        relay.webhook_url, SECRET, "job.processing", "job-lost", webhook_id="msg_proc"
    )
    assert status == 202
    await wait_for(lambda: all_delivered(relay, "poll:job-lost:completed"), timeout_seconds=15)
    watches = await relay.store.list_watches()
    assert [(w.job_id, w.origin, w.state) for w in watches] == [("job-lost", "recovery", "done")]
    assert sorted(r.envelope["id"] for r in receiver.received) == [
        "msg_proc",
        "poll:job-lost:completed",
    ]


async def test_a_job_with_its_terminal_webhook_is_not_recovered(
    start_relay: StartRelay, poll_settings: Any, emulator: PulseEmulator
) -> None:
    emulator.add_job("job-fine")
    relay = await start_relay(poll_settings(poll={"recover_after_seconds": 0.2}))
    for event_type, webhook_id in [("job.processing", "msg_p1"), ("job.completed", "msg_c1")]:
        status, _ = await emulator.send_webhook(
            relay.webhook_url, SECRET, event_type, "job-fine", webhook_id=webhook_id
        )
        assert status == 202
    await wait_for(lambda: all_delivered(relay, "msg_c1"))
    recovered = await relay.store.recover_stalled_jobs(older_than=1e12, since=0, interval_seconds=1)
    assert recovered == []
    assert await relay.store.list_watches() == []


async def test_many_watched_jobs_are_polled_with_bounded_concurrency(
    start_relay: StartRelay, poll_settings: Any, emulator: PulseEmulator, tmp_path: Path
) -> None:
    job_ids = [f"job-{n:03d}" for n in range(100)]
    for job_id in job_ids:
        emulator.add_job(job_id, statuses=["pending", "completed"])
    settings = poll_settings(
        poll={"concurrency": 4},
        # No fetch: every GET /job the emulator sees comes from the poller.
        pulse={"fetch_on": []},
        sinks=[
            {"type": "file", "name": "files", "directory": str(tmp_path / "many"), **FAST_RETRY}
        ],
    )
    relay = await start_relay(settings)
    emulator.hold_requests()
    await relay.store.add_watches(job_ids, interval_seconds=0.05)
    relay.poller.notify()  # type: ignore[union-attr]
    await wait_for(lambda: emulator.in_flight == 4)
    emulator.release_requests()

    async def delivered() -> bool:
        views = await relay.store.list_events(state="delivered", limit=1000)
        return len(views) == 100

    await wait_for(delivered, timeout_seconds=30)
    assert emulator.max_in_flight == 4
    assert sorted(p.name for p in (tmp_path / "many").iterdir()) == [f"{j}.json" for j in job_ids]


async def test_unknown_watched_job_is_given_up_with_a_reason(
    start_relay: StartRelay, poll_settings: Any, emulator: PulseEmulator
) -> None:
    relay = await start_relay(poll_settings())
    await relay.store.add_watches(["job-typo"], interval_seconds=0.01)
    relay.poller.notify()  # type: ignore[union-attr]

    async def given_up() -> bool:
        watches = await relay.store.list_watches()
        return watches[0].state == "dead"

    await wait_for(given_up, timeout_seconds=15)
    watch = (await relay.store.list_watches())[0]
    assert watch.polls == 5
    assert watch.last_error
    assert await relay.store.list_events() == []


async def test_a_watched_job_whose_status_holds_a_lone_surrogate_is_followed_to_its_end(
    start_relay: StartRelay, poll_settings: Any, emulator: PulseEmulator
) -> None:
    # The emulator answers the status as a `\ud800` escape, as a hostile server can.
    emulator.add_job("job-odd", statuses=["running\ud800", "running\ud800", "completed"])
    relay = await start_relay(poll_settings())
    await relay.store.add_watches(["job-odd"], interval_seconds=0.01)
    relay.poller.notify()  # type: ignore[union-attr]

    async def running() -> bool:
        return [w.last_status for w in await relay.store.list_watches()] == ["running\ufffd"]

    await wait_for(running)
    await wait_for(lambda: all_delivered(relay, "poll:job-odd:completed"), timeout_seconds=15)
    watches = await relay.store.list_watches()
    assert [(w.state, w.last_status) for w in watches] == [("done", "completed")]


async def test_a_watched_job_the_api_can_never_answer_is_given_up_at_once(
    start_relay: StartRelay, poll_settings: Any, emulator: PulseEmulator
) -> None:
    emulator.add_job("job-refused", statuses=["completed"])
    emulator.fail_next("job-refused", 400)
    relay = await start_relay(poll_settings())
    await relay.store.add_watches(["job-refused"], interval_seconds=0.01)
    relay.poller.notify()  # type: ignore[union-attr]

    async def dead() -> list[Any]:
        return [w for w in await relay.store.list_watches() if w.state == "dead"]

    await wait_for(dead, timeout_seconds=15)
    (watch,) = await dead()
    assert (watch.job_id, watch.polls) == ("job-refused", 1)
    assert "HTTP 400" in (watch.last_error or "")
    assert await relay.store.list_events() == []


async def test_polling_only_mode_runs_without_a_secret_and_refuses_webhooks(
    start_relay: StartRelay, poll_settings: Any, emulator: PulseEmulator, tmp_path: Path
) -> None:
    emulator.add_job("job-local", statuses=["processing", "completed"])
    relay = await start_relay(poll_settings(verify={"secrets": []}))
    body = make_body(job_id="job-local")
    async with aiohttp.ClientSession() as session:
        for headers in ({}, signed(body)):
            async with session.post(relay.webhook_url, data=body, headers=headers) as response:
                assert response.status == 503
                assert "polling-only" in (await response.json())["reason"]
    await relay.store.add_watches(["job-local"], interval_seconds=0.05)
    relay.poller.notify()  # type: ignore[union-attr]
    await wait_for(lambda: all_delivered(relay, "poll:job-local:completed"))
    assert list(await events_by_id(relay)) == ["poll:job-local:completed"]


async def test_polls_failing_while_the_pulse_api_is_down_are_logged_once_a_window(
    make_settings: MakeSettings,
) -> None:
    unreachable = f"http://127.0.0.1:{free_port()}"
    settings = make_settings(pulse={"base_url": unreachable, "api_key": "key"}, poll=FAST_POLL)
    now = time.time()
    relay = Relay(settings, clock=lambda: now)
    await relay.start()
    jobs = [f"job-down-{n}" for n in range(8)]

    async def all_failed() -> bool:
        return all(watch.last_error for watch in await relay.store.list_watches())

    try:
        with capture_logs() as logs:
            await relay.store.add_watches(jobs, interval_seconds=0.01)
            relay.poller.notify()  # type: ignore[union-attr]
            await wait_for(all_failed, timeout_seconds=15)
    finally:
        await relay.stop()

    # Every watch records its failure; the clock stands still, so one line tells it.
    failed = [line for line in logs if line["event"] == "poll failed; will retry"]
    assert len(failed) == 1
    assert failed[0]["job_id"] in jobs


class _OneWatchStore:
    """Just enough store for the poller: one running watch, its updates recorded."""

    def __init__(self, interval_seconds: float) -> None:
        self.watch = Watch(
            job_id="job-slow",
            metadata={},
            origin="watch",
            state="active",
            added_at=0.0,
            next_poll_at=0.0,
            interval_seconds=interval_seconds,
            polls=0,
            last_status=None,
            last_error=None,
        )
        self.updates: list[dict[str, Any]] = []

    async def recover_stalled_jobs(self, **_: Any) -> list[str]:
        return []

    async def claim_watches(self, *, limit: int, lease_seconds: float) -> list[Watch]:
        return [self.watch] if self.watch.polls < 9 else []

    async def update_watch(self, job_id: str, **fields: Any) -> None:
        self.updates.append(fields)
        self.watch = dataclasses.replace(
            self.watch, interval_seconds=fields["interval_seconds"], polls=self.watch.polls + 1
        )


class _RunningJobClient:
    async def get_job(self, job_id: str) -> dict[str, Any]:
        return {"job_id": job_id, "status": "processing"}


async def test_a_running_job_is_polled_at_the_documented_growing_interval() -> None:
    now = 1_000.0
    store = _OneWatchStore(interval_seconds=5.0)
    config = PollerConfig(
        interval_seconds=5.0,
        max_interval_seconds=60.0,
        recover_after_seconds=600.0,
        concurrency=1,
        fetch_on=frozenset(),
    )
    poller = Poller(
        store=cast(StoreBackend, store),
        pulse=cast(PulseClient, _RunningJobClient()),
        config=config,
        route=lambda _: [],
        metrics=Metrics(),
        clock=lambda: now,
    )
    poller.start()
    try:
        await wait_for(lambda: len(store.updates) == 9, timeout_seconds=10)
    finally:
        await poller.stop()

    # Each poll waits the interval it was claimed with; the next one is 1.5 times
    # as long, never beyond poll.max_interval_seconds, never jittered.
    waits = [update["next_poll_at"] - now for update in store.updates]
    assert waits == [5.0, 7.5, 11.25, 16.875, 25.3125, 37.96875, 56.953125, 60.0, 60.0]
    assert [update["interval_seconds"] for update in store.updates] == [*waits[1:], 60.0]
    assert {update["state"] for update in store.updates} == {"active"}
