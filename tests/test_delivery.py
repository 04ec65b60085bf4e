"""End to end: a relay on a real port, the emulator as Pulse, real sinks on loopback."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families
from standardwebhooks.webhooks import Webhook
from structlog.testing import capture_logs

from pulse_relay.app import Relay
from pulse_relay.config.types import parse_filename_template
from pulse_relay.emulator import Fault, PulseEmulator
from tests.helpers import (
    SECRET,
    SINK_SECRET,
    MakeSettings,
    PipelineSettings,
    Receiver,
    StartRelay,
    call,
    wait_for,
)


@pytest.fixture
def command_out(tmp_path: Path) -> Path:
    return tmp_path / "command-out"


async def send(
    relay: Relay, emulator: PulseEmulator, event_type: str, job_id: str | None, **kwargs: Any
) -> tuple[int, dict[str, Any]]:
    return await emulator.send_webhook(relay.webhook_url, SECRET, event_type, job_id, **kwargs)


def delivery_states(view: Any) -> dict[str, str]:
    return {sink: d["state"] for sink, d in view.deliveries.items()}


async def settled(relay: Relay, event_id: str) -> dict[str, str]:
    """Wait until no delivery of the event is pending; return each sink's final state."""
    states: dict[str, str] = {}

    async def done() -> bool:
        nonlocal states
        view = await relay.store.get_event(event_id)
        states = delivery_states(view) if view else {}
        return bool(states) and "pending" not in states.values()

    await wait_for(done, timeout_seconds=20)
    return states


async def test_completed_job_reaches_every_sink_with_the_same_envelope(
    start_relay: StartRelay,
    pipeline_settings: PipelineSettings,
    emulator: PulseEmulator,
    receiver: Receiver,
    tmp_path: Path,
    command_out: Path,
) -> None:
    emulator.add_job("job-ok")
    relay = await start_relay(pipeline_settings())
    status, answer = await send(relay, emulator, "job.completed", "job-ok", webhook_id="msg_ok")
    assert (status, answer["status"]) == (202, "accepted")
    assert await settled(relay, "msg_ok") == {
        "app": "delivered",
        "cmd": "delivered",
        "files": "delivered",
    }

    from_file = (tmp_path / "files" / "job-ok.json").read_bytes()
    from_command = (command_out / "msg_ok.json").read_bytes()
    assert len(receiver.received) == 1
    from_http = receiver.received[0].body
    assert from_file == from_http == from_command
    envelope = json.loads(from_file)
    assert envelope["id"] == "msg_ok"
    assert envelope["type"] == "job.completed"
    assert envelope["job_id"] == "job-ok"
    assert envelope["source"] == "webhook"
    assert envelope["event"]["data"]["job_id"] == "job-ok"
    assert envelope["job"]["status"] == "completed"
    assert envelope["job"]["result"]["extraction_id"]
    assert envelope["relay"]["result_url"] is None
    assert envelope["relay"]["metadata"] == {}
    assert envelope["received_at"].endswith("Z")
    # The HTTP sink's request verifies with an independent Standard Webhooks library.
    headers = receiver.received[0].headers
    assert headers["webhook-id"] == "msg_ok"
    Webhook(SINK_SECRET).verify(from_http, headers)
    env = json.loads((command_out / "msg_ok.env").read_text())
    assert env == {
        "PULSE_EVENT_ID": "msg_ok",
        "PULSE_EVENT_TYPE": "job.completed",
        "PULSE_JOB_ID": "job-ok",
        "PULSE_JOB_STATUS": "completed",
    }
    assert emulator.get_count("job-ok") == 1


async def test_non_terminal_events_are_delivered_without_a_fetch(
    start_relay: StartRelay,
    pipeline_settings: PipelineSettings,
    emulator: PulseEmulator,
    tmp_path: Path,
) -> None:
    emulator.add_job("job-early", status="processing")
    relay = await start_relay(pipeline_settings())
    for event_type, webhook_id in [("job.created", "msg_c"), ("job.processing", "msg_p")]:
        assert (await send(relay, emulator, event_type, "job-early", webhook_id=webhook_id))[
            0
        ] == 202
        assert set((await settled(relay, webhook_id)).values()) == {"delivered"}
    envelope = json.loads((tmp_path / "files" / "job-early.json").read_bytes())
    assert envelope["job"] is None
    assert emulator.get_count("job-early") == 0


async def test_unknown_event_types_go_only_to_sinks_whose_filter_matches(
    start_relay: StartRelay,
    pipeline_settings: PipelineSettings,
    emulator: PulseEmulator,
    receiver: Receiver,
    tmp_path: Path,
) -> None:
    settings = pipeline_settings()
    settings.sinks[1].events = ["job.*", "credits.*"]
    relay = await start_relay(settings)
    status, _ = await send(
        relay, emulator, "credits.low_balance", None, webhook_id="msg_credits", data={"balance": 3}
    )
    assert status == 202
    assert await settled(relay, "msg_credits") == {"app": "delivered"}
    envelope = receiver.received[0].envelope
    assert (envelope["type"], envelope["job_id"], envelope["job"]) == (
        "credits.low_balance",
        None,
        None,
    )


async def test_large_result_is_downloaded_once_for_three_sinks_across_a_restart(
    make_settings: MakeSettings,
    pipeline_settings: PipelineSettings,
    emulator: PulseEmulator,
    receiver: Receiver,
    tmp_path: Path,
    command_out: Path,
) -> None:
    emulator.add_job("job-big", large_result=True)
    # The HTTP sink is down at first, so the event is still pending across the restart.
    receiver.answers = [503] * 3
    settings = pipeline_settings()
    first = Relay(settings)
    await first.start()
    try:
        assert (await send(first, emulator, "job.completed", "job-big", webhook_id="msg_big"))[
            0
        ] == 202

        async def fetched() -> bool:
            view = await first.store.get_event("msg_big")
            return view is not None and view.fetch_state == "done"

        await wait_for(fetched)
    finally:
        await first.stop()
    second = Relay(settings)
    await second.start()
    try:
        assert set((await settled(second, "msg_big")).values()) == {"delivered"}
    finally:
        await second.stop()
    assert emulator.downloads == 1
    assert emulator.get_count("job-big") == 1
    documents = [
        (tmp_path / "files" / "job-big.json").read_bytes(),
        (command_out / "msg_big.json").read_bytes(),
        receiver.received[-1].body,
    ]
    assert documents[0] == documents[1] == documents[2]
    envelope = json.loads(documents[0])
    assert "is_url" not in envelope["job"]["result"]
    assert envelope["job"]["result"]["extraction_id"]
    assert envelope["relay"]["result_url"].startswith(emulator.base_url + "/results/")


@pytest.mark.parametrize(
    "faults",
    [
        [Fault.http(429, retry_after="1")],
        [Fault.http(500), Fault.http(503)],
        [Fault.slow(3.0)],
        [Fault.reset()],
        [Fault.truncated()],
    ],
    ids=["429-retry-after", "5xx", "timeout", "reset", "truncated-json"],
)
async def test_pulse_faults_are_retried_then_delivered(
    start_relay: StartRelay,
    pipeline_settings: PipelineSettings,
    emulator: PulseEmulator,
    faults: list[Fault],
) -> None:
    emulator.add_job("job-flaky")
    emulator.fail_next("job-flaky", *faults)
    relay = await start_relay(pipeline_settings(pulse={"timeout_seconds": 1}))
    assert (await send(relay, emulator, "job.completed", "job-flaky", webhook_id="msg_f"))[0] == 202
    assert set((await settled(relay, "msg_f")).values()) == {"delivered"}
    view = await relay.store.get_event("msg_f")
    assert view is not None
    outcomes = [a.outcome for a in view.attempts if a.sink is None]
    assert emulator.get_count("job-flaky") == len(faults) + 1
    # aiohttp itself retries a GET once when the connection is reset before an answer.
    retried_by_client = faults == [Fault.reset()]
    assert outcomes == ["retry"] * (0 if retried_by_client else len(faults)) + ["fetched"]


async def test_job_still_processing_is_fetched_again_until_terminal(
    start_relay: StartRelay, pipeline_settings: PipelineSettings, emulator: PulseEmulator
) -> None:
    emulator.add_job("job-lag", statuses=["processing", "processing", "completed"])
    relay = await start_relay(pipeline_settings())
    assert (await send(relay, emulator, "job.completed", "job-lag", webhook_id="msg_lag"))[0] == 202
    assert set((await settled(relay, "msg_lag")).values()) == {"delivered"}
    view = await relay.store.get_event("msg_lag")
    assert view is not None and view.job["status"] == "completed"
    assert emulator.get_count("job-lag") == 3


async def test_rejected_api_key_keeps_the_event_and_logs_loudly(
    start_relay: StartRelay,
    pipeline_settings: PipelineSettings,
    emulator: PulseEmulator,
) -> None:
    emulator.add_job("job-auth")
    relay = await start_relay(pipeline_settings(pulse={"api_key": "wrong-key"}))

    async def tried() -> bool:
        view = await relay.store.get_event("msg_a")
        return view is not None and any(a.status_code == 401 for a in view.attempts)

    with capture_logs() as logs:
        sent = await send(relay, emulator, "job.completed", "job-auth", webhook_id="msg_a")
        assert sent[0] == 202
        await wait_for(tried)
    (rejected,) = [line for line in logs if line.get("status_code") == 401]
    assert rejected["log_level"] == "error"
    assert "rejected the API key" in rejected["event"]
    assert (rejected["webhook_id"], rejected["job_id"]) == ("msg_a", "job-auth")
    view = await relay.store.get_event("msg_a")
    assert view is not None
    assert view.fetch_state == "pending"
    assert set(delivery_states(view).values()) == {"pending"}
    # Retried on the slow schedule, not hammered.
    assert emulator.get_count("job-auth") == 1


async def test_unknown_job_goes_dead_with_a_reason_after_a_few_tries(
    start_relay: StartRelay, pipeline_settings: PipelineSettings, emulator: PulseEmulator
) -> None:
    relay = await start_relay(pipeline_settings())
    assert (await send(relay, emulator, "job.completed", "job-missing", webhook_id="msg_404"))[
        0
    ] == 202
    states = await settled(relay, "msg_404")
    assert set(states.values()) == {"dead"}
    view = await relay.store.get_event("msg_404")
    assert view is not None
    assert all("job fetch failed" in d["last_error"] for d in view.deliveries.values())
    assert emulator.get_count("job-missing") == 5


async def test_http_sink_failures_retry_or_die_without_touching_other_sinks(
    start_relay: StartRelay,
    pipeline_settings: PipelineSettings,
    emulator: PulseEmulator,
    receiver: Receiver,
    tmp_path: Path,
) -> None:
    emulator.add_job("job-a")
    emulator.add_job("job-b")
    relay = await start_relay(pipeline_settings())
    receiver.answers = [500]
    assert (await send(relay, emulator, "job.completed", "job-a", webhook_id="msg_500"))[0] == 202
    assert set((await settled(relay, "msg_500")).values()) == {"delivered"}
    receiver.answers = [400]
    assert (await send(relay, emulator, "job.completed", "job-b", webhook_id="msg_400"))[0] == 202
    states = await settled(relay, "msg_400")
    assert states == {"app": "dead", "cmd": "delivered", "files": "delivered"}
    view = await relay.store.get_event("msg_400")
    assert view is not None
    assert "400" in view.deliveries["app"]["last_error"]
    assert view.deliveries["app"]["attempts"] == 1
    assert (tmp_path / "files" / "job-b.json").exists()


async def test_http_sink_down_for_a_while_gets_its_events_after_it_returns(
    start_relay: StartRelay,
    pipeline_settings: PipelineSettings,
    emulator: PulseEmulator,
    receiver: Receiver,
    tmp_path: Path,
) -> None:
    emulator.add_job("job-down")
    port = int(receiver.url.rsplit(":", 1)[1].split("/")[0])
    await receiver.stop()
    relay = await start_relay(pipeline_settings())
    assert (await send(relay, emulator, "job.completed", "job-down", webhook_id="msg_down"))[
        0
    ] == 202

    async def file_written_and_http_retrying() -> bool:
        view = await relay.store.get_event("msg_down")
        return (
            view is not None
            and view.deliveries["files"]["state"] == "delivered"
            and view.deliveries["app"]["attempts"] >= 2
        )

    await wait_for(file_written_and_http_retrying)
    await receiver.start(port)
    assert set((await settled(relay, "msg_down")).values()) == {"delivered"}
    assert receiver.received[0].envelope["id"] == "msg_down"


async def test_command_failing_once_is_delivered_on_retry(
    start_relay: StartRelay,
    pipeline_settings: PipelineSettings,
    emulator: PulseEmulator,
    command_out: Path,
) -> None:
    emulator.add_job("job-cmd")
    relay = await start_relay(pipeline_settings())
    (command_out / "fail-next").touch()
    assert (await send(relay, emulator, "job.completed", "job-cmd", webhook_id="msg_cmd"))[0] == 202
    assert (await settled(relay, "msg_cmd"))["cmd"] == "delivered"
    view = await relay.store.get_event("msg_cmd")
    assert view is not None
    cmd_attempts = [a for a in view.attempts if a.sink == "cmd"]
    assert [a.outcome for a in cmd_attempts] == ["retry", "delivered"]
    assert "failing on purpose" in (cmd_attempts[0].output_tail or "")
    assert (command_out / "msg_cmd.json").exists()


async def test_file_template_escaping_the_directory_goes_dead_with_the_reason(
    start_relay: StartRelay,
    pipeline_settings: PipelineSettings,
    emulator: PulseEmulator,
    tmp_path: Path,
) -> None:
    emulator.add_job("job-esc")
    settings = pipeline_settings()
    outside = tmp_path / "outside"
    outside.mkdir()
    (tmp_path / "files").mkdir()
    (tmp_path / "files" / "link").symlink_to(outside)
    template = parse_filename_template("link/{job_id}.json")
    settings.sinks[0].filename = template  # type: ignore[union-attr]
    relay = await start_relay(settings)
    assert (await send(relay, emulator, "job.completed", "job-esc", webhook_id="msg_esc"))[0] == 202
    states = await settled(relay, "msg_esc")
    assert states["files"] == "dead"
    view = await relay.store.get_event("msg_esc")
    assert view is not None
    assert "'link' is a symbolic link" in view.deliveries["files"]["last_error"]
    assert list(outside.iterdir()) == []


async def test_replay_delivers_again_with_source_replay(
    start_relay: StartRelay,
    pipeline_settings: PipelineSettings,
    emulator: PulseEmulator,
    receiver: Receiver,
) -> None:
    emulator.add_job("job-r")
    relay = await start_relay(pipeline_settings())
    receiver.answers = [400]
    assert (await send(relay, emulator, "job.completed", "job-r", webhook_id="msg_r"))[0] == 202
    assert (await settled(relay, "msg_r"))["app"] == "dead"
    assert await relay.store.replay(dead_only=True) == 1
    relay.dispatcher.notify()  # type: ignore[union-attr]
    assert (await settled(relay, "msg_r"))["app"] == "delivered"
    assert receiver.received[-1].envelope["source"] == "replay"
    assert await relay.store.replay(["msg_r"], sink="files") == 1
    relay.dispatcher.notify()  # type: ignore[union-attr]
    assert (await settled(relay, "msg_r"))["files"] == "delivered"
    assert emulator.get_count("job-r") == 1


async def test_lone_surrogates_in_a_job_and_a_payload_reach_the_sinks_as_replacements(
    start_relay: StartRelay,
    pipeline_settings: PipelineSettings,
    emulator: PulseEmulator,
    receiver: Receiver,
    tmp_path: Path,
    command_out: Path,
) -> None:
    # The emulator answers `\ud800` escapes, as a hostile document can make Pulse do.
    emulator.add_job("job-hostile", result={"text": "caf\ud800", "\udfff": ["\ud800"]})
    relay = await start_relay(pipeline_settings())
    status, answer = await send(
        relay,
        emulator,
        "job.completed",
        "job-hostile",
        webhook_id="msg_hostile",
        data={"note": "\udfff"},
    )
    assert (status, answer["status"]) == (202, "accepted")
    assert await settled(relay, "msg_hostile") == {
        "app": "delivered",
        "cmd": "delivered",
        "files": "delivered",
    }

    from_file = (tmp_path / "files" / "job-hostile.json").read_bytes()
    from_command = (command_out / "msg_hostile.json").read_bytes()
    (from_http,) = [received.body for received in receiver.received]
    assert from_file == from_http == from_command
    envelope = json.loads(from_file)
    assert envelope["job"]["result"] == {"text": "caf\ufffd", "\ufffd": ["\ufffd"]}
    assert envelope["event"]["data"]["note"] == "\ufffd"
    # The stored copy is the job as fetched; only what is sent is replaced.
    view = await relay.store.get_event("msg_hostile")
    assert view is not None and view.job["result"]["text"] == "caf\ud800"


# -- rate limits ---------------------------------------------------------------


async def test_a_rate_limited_http_sink_gets_a_backlog_no_faster_than_its_rate(
    start_relay: StartRelay,
    pipeline_settings: PipelineSettings,
    emulator: PulseEmulator,
    receiver: Receiver,
) -> None:
    rate_per_second, count = 20.0, 40
    relay = await start_relay(
        pipeline_settings(
            sinks=[
                {
                    "type": "http",
                    "name": "app",
                    "url": receiver.url,
                    "concurrency": 16,
                    "rate_per_second": rate_per_second,
                }
            ]
        )
    )
    async with aiohttp.ClientSession() as session:
        for n in range(count):
            answer = await emulator.send_webhook(
                relay.webhook_url, SECRET, "job.created", f"job-{n}", session=session
            )
            assert answer[0] == 202
    await wait_for(lambda: len(receiver.received) == count, timeout_seconds=30)
    starts = []
    for received in receiver.received:
        view = await relay.store.get_event(received.envelope["id"])
        assert view is not None
        starts += [attempt.started_at for attempt in view.attempts]
    # A burst of one second's worth, then `rate_per_second`: the last of `count` attempts
    # starts at least (count - burst) / rate after the first. Only a lower bound: a slow
    # machine may take longer, never less.
    least_seconds = (count - rate_per_second) / rate_per_second
    assert max(starts) - min(starts) >= least_seconds - 0.05


async def test_stats_and_metrics_show_what_a_rate_holds_back_and_other_sinks_go_on(
    start_relay: StartRelay,
    pipeline_settings: PipelineSettings,
    emulator: PulseEmulator,
    receiver: Receiver,
    tmp_path: Path,
) -> None:
    # One attempt every 100 s: after the first, the others wait for the whole test.
    app = {"type": "http", "name": "app", "url": receiver.url, "rate_per_second": 0.01}
    files = {"type": "file", "name": "files", "directory": str(tmp_path / "files")}
    relay = await start_relay(pipeline_settings(sinks=[app, files]))
    for n in range(3):
        answer = await send(relay, emulator, "job.created", f"job-{n}", webhook_id=f"msg_{n}")
        assert answer[0] == 202
    stats: dict[str, Any] = {}

    async def held_back() -> bool:
        nonlocal stats
        _, stats = await call("GET", relay.admin_url + "/api/stats")
        return bool(stats["rate_limited"]["app"]["held_back"] == 2)

    await wait_for(held_back)
    assert stats["rate_limited"] == {"app": {"rate_per_second": 0.01, "held_back": 2}}
    await wait_for(lambda: len(receiver.received) == 1)
    # The unlimited sinks are not held up by it.
    await wait_for(lambda: len(list((tmp_path / "files").glob("*.json"))) == 3)
    _, text = await call("GET", relay.admin_url + "/metrics")
    gauges = {
        (sample.name, tuple(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "pulse_relay_rate_limited"
    }
    assert gauges == {("pulse_relay_rate_limited", (("sink", "app"),)): 2.0}


# -- edit and replay ------------------------------------------------------------


async def test_an_edited_replay_is_re_signed_for_http_and_piped_to_the_command(
    start_relay: StartRelay,
    pipeline_settings: PipelineSettings,
    emulator: PulseEmulator,
    receiver: Receiver,
    tmp_path: Path,
    command_out: Path,
) -> None:
    emulator.add_job("job-e", status="failed")
    relay = await start_relay(pipeline_settings())
    assert (await send(relay, emulator, "job.failed", "job-e", webhook_id="msg_e"))[0] == 202
    assert set((await settled(relay, "msg_e")).values()) == {"delivered"}
    original = (tmp_path / "files" / "job-e.json").read_bytes()
    edited = {**json.loads(original), "job": {"status": "completed", "fixed": "caf\ud800"}}
    # A plain replay to the file sink, claimed with the edited ones: it keeps its own.
    assert await relay.store.replay(["msg_e"], sink="files") == 1
    status, _ = await call(
        "POST",
        relay.admin_url + "/api/events/msg_e/replay",
        headers={"X-Pulse-Relay": "1"},
        json_body={"sinks": ["app", "cmd"], "envelope": edited},
    )
    assert status == 202

    await wait_for(lambda: len(receiver.received) == 2)
    assert set((await settled(relay, "msg_e")).values()) == {"delivered"}
    sent = {**edited, "job": {"status": "completed", "fixed": "caf\ufffd"}}
    body = receiver.received[-1].body
    assert json.loads(body) == sent
    headers = receiver.received[-1].headers
    assert headers["webhook-id"] == "msg_e"
    assert Webhook(SINK_SECRET).verify(body, headers) == sent
    assert (command_out / "msg_e.json").read_bytes() == body
    env = json.loads((command_out / "msg_e.env").read_text())
    assert (env["PULSE_EVENT_ID"], env["PULSE_JOB_STATUS"]) == ("msg_e", "completed")
    # The file sink, replayed without an edit, got the event's envelope; the stored job
    # is as fetched.
    replayed = json.loads((tmp_path / "files" / "job-e.json").read_bytes())
    assert replayed == {**json.loads(original), "source": "replay"}
    view = await relay.store.get_event("msg_e")
    assert view is not None and view.job["status"] == "failed"
    assert emulator.get_count("job-e") == 1
