"""Metrics after a scripted run, and logs that carry context but never a secret or a body."""

from __future__ import annotations

import asyncio
import base64
import json
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from pulse_relay.emulator import PulseEmulator
from pulse_relay.logs import REDACTED, UTCTimeStamper, configure_logging, get_logger
from tests.helpers import (
    OTHER_SECRET,
    SECRET,
    UNAUTHORIZED_CASES,
    Receiver,
    Served,
    StartRelay,
    free_port,
    make_body,
    signed,
    wait_for,
    write_config,
)

SINK_SECRET = "whsec_" + base64.b64encode(b"sink-secret-for-observability-00").decode()
SINK_TOKEN = "Bearer sink-token-" + uuid.uuid4().hex


async def http(method: str, url: str, **kwargs: Any) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session, session.request(method, url, **kwargs) as r:
        return r.status, await r.text()


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the exposition, keyed by (name, sorted labels)."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def test_metrics_after_a_scripted_run(
    start_relay: StartRelay, emulator: PulseEmulator, receiver: Receiver, tmp_path: Path
) -> None:
    emulator.add_job("job-m1")
    emulator.add_job("job-m2")
    receiver.answers = [500]  # the first delivery is retried once
    relay = await start_relay(
        pulse={"base_url": emulator.base_url, "api_key": emulator.api_key},
        sinks=[
            {
                "type": "http",
                "name": "app",
                "url": receiver.url,
                "retry_initial_seconds": 0.05,
                "retry_max_seconds": 0.1,
            }
        ],
    )
    url = relay.webhook_url
    assert (await emulator.send_webhook(url, SECRET, "job.completed", "job-m1", webhook_id="m1"))[
        0
    ] == 202
    assert (await emulator.send_webhook(url, SECRET, "job.completed", "job-m2", webhook_id="m2"))[
        0
    ] == 202
    assert (await emulator.send_webhook(url, SECRET, "job.completed", "job-m1", webhook_id="m1"))[
        0
    ] == 200
    forged = make_body()
    assert (await http("POST", url, data=forged, headers=signed(forged, secret=OTHER_SECRET)))[
        0
    ] == 401
    assert (await http("POST", url, data=b"[1, 2]", headers=signed(b"[1, 2]")))[0] == 200

    async def settled() -> bool:
        views = [await relay.store.get_event(i) for i in ("m1", "m2")]
        return all(v is not None and v.deliveries["app"]["state"] == "delivered" for v in views)

    await wait_for(settled, timeout_seconds=20)
    status, text = await http("GET", relay.admin_url + "/metrics")
    assert status == 200
    values = samples(text)

    def value(name: str, **labels: str) -> float | None:
        return values.get((name, tuple(sorted(labels.items()))))

    assert value("pulse_relay_webhooks_total", outcome="accepted") == 2
    assert value("pulse_relay_webhooks_total", outcome="duplicate") == 1
    assert value("pulse_relay_webhooks_total", outcome="unauthorized") == 1
    assert value("pulse_relay_webhooks_total", outcome="invalid") == 1
    assert value("pulse_relay_ack_seconds_count") == 5
    assert value("pulse_relay_ack_seconds_bucket", le="+Inf") == 5
    assert value("pulse_relay_job_fetches_total", outcome="ok") == 2
    assert value("pulse_relay_deliveries_total", sink="app", outcome="delivered") == 2
    assert value("pulse_relay_deliveries_total", sink="app", outcome="retry") == 1
    assert value("pulse_relay_deliveries_total", sink="app", outcome="dead") == 0
    assert value("pulse_relay_delivery_seconds_count", sink="app") == 3
    assert value("pulse_relay_pending", sink="app") == 0
    assert value("pulse_relay_oldest_pending_seconds") == 0
    assert value("pulse_relay_pruned_events_total") == 0

    types = {family.name: family.type for family in text_string_to_metric_families(text)}
    assert types["pulse_relay_webhooks"] == "counter"
    assert types["pulse_relay_ack_seconds"] == "histogram"
    assert types["pulse_relay_job_fetches"] == "counter"
    assert types["pulse_relay_deliveries"] == "counter"
    assert types["pulse_relay_delivery_seconds"] == "histogram"
    assert types["pulse_relay_pending"] == "gauge"
    assert types["pulse_relay_oldest_pending_seconds"] == "gauge"


async def test_pending_gauges_show_backlog_and_its_age(start_relay: StartRelay) -> None:
    clock_now = time.time()
    relay = await start_relay(
        sinks=[{"type": "http", "name": "down", "url": "http://127.0.0.1:9/", "enabled": True}]
    )
    # Stop dispatching so the backlog stays put.
    assert relay.dispatcher is not None
    await relay.dispatcher.stop(grace_seconds=0)
    body = make_body("job.created")
    assert (await http("POST", relay.webhook_url, data=body, headers=signed(body)))[0] == 202
    assert (await http("GET", relay.admin_url + "/readyz"))[0] == 503
    _, text = await http("GET", relay.admin_url + "/metrics")
    values = samples(text)
    assert values[("pulse_relay_pending", (("sink", "down"),))] == 1
    age = values[("pulse_relay_oldest_pending_seconds", ())]
    assert 0 <= age <= time.time() - clock_now


async def test_readyz_reports_a_closed_store(start_relay: StartRelay) -> None:
    relay = await start_relay(sinks=[])
    assert (await http("GET", relay.admin_url + "/readyz"))[0] == 200
    await relay.store.close()

    async def unready() -> bool:
        return (await http("GET", relay.admin_url + "/readyz"))[0] == 503

    # The readiness probe runs at most once a second: the 200 above may be repeated once.
    await wait_for(unready, timeout_seconds=5)
    status, text = await http("GET", relay.admin_url + "/readyz")
    assert status == 503
    reasons = json.loads(text)["reasons"]
    assert any(r.startswith("store not writable") for r in reasons)
    # Every reason says why, never a bare "store not writable: ".
    assert all(r.partition(": ")[2].strip() for r in reasons if ": " in r), reasons


def test_secret_looking_keys_are_redacted_whoever_logs_them(tmp_path: Path) -> None:
    out = (tmp_path / "log").open("w+")
    try:
        configure_logging(format="json", level="info", stream=out)
        get_logger("test").info(
            "careless", api_key="k-123", webhook_signature="v1,abc", body="{}", job_id="j"
        )
        import logging

        logging.getLogger("aiohttp.server").error("from the standard library")
        out.seek(0)
        lines = [json.loads(line) for line in out.read().splitlines()]
    finally:
        configure_logging(format="json", level="info")
        out.close()
    assert lines[0]["api_key"] == lines[0]["webhook_signature"] == lines[0]["body"] == REDACTED
    assert lines[0]["job_id"] == "j"
    assert lines[1]["event"] == "from the standard library"
    assert lines[1]["level"] == "error"
    # Both name their logger under the same key, so one filter finds either.
    assert lines[0]["logger_name"] == "test"
    assert lines[1]["logger_name"] == "aiohttp.server"
    assert "logger" not in lines[1]


def test_json_lines_hold_values_the_fast_encoder_refuses(tmp_path: Path) -> None:
    # orjson renders the usual line; an int beyond 64 bits or an object without a JSON
    # form must still give one valid JSON line, not an exception in the caller.
    out = (tmp_path / "log").open("w+")
    try:
        configure_logging(format="json", level="info", stream=out)
        get_logger("test").info("odd values", big=2**70, thing=object(), numbers={1: "one"})
        out.seek(0)
        lines = [json.loads(line) for line in out.read().splitlines()]
    finally:
        configure_logging(format="json", level="info")
        out.close()
    assert len(lines) == 1
    assert lines[0]["big"] == 2**70
    assert lines[0]["thing"].startswith("<object object at")
    assert lines[0]["numbers"] == {"1": "one"}
    assert lines[0]["event"] == "odd values"


def test_timestamps_read_as_structlogs_iso_utc_stamps() -> None:
    # The line's timestamp is formatted once a second; it must read exactly as a
    # datetime's isoformat would, on both sides of a second and of midnight.
    for moment in (1_700_000_000.0, 1_700_000_000.25, 1_700_000_001.999999, 1_735_689_599.5):
        stamp = UTCTimeStamper(clock=lambda moment=moment: moment)
        expected = datetime.fromtimestamp(moment, tz=UTC).isoformat().replace("+00:00", "Z")
        assert stamp(None, "info", {})["timestamp"] == expected


def test_long_values_are_clipped_whoever_logs_them(tmp_path: Path) -> None:
    out = (tmp_path / "log").open("w+")
    try:
        configure_logging(format="json", level="info", stream=out)
        get_logger("test").warning("replayed", type="x" * 400_000, job_id="j")
        out.seek(0)
        (line,) = out.read().splitlines()
    finally:
        configure_logging(format="json", level="info")
        out.close()
    assert len(line) < 1_000
    document = json.loads(line)
    assert document["type"] == "x" * 512 + "...[399488 more characters]"
    assert document["job_id"] == "j"


async def test_logs_never_show_secrets_signatures_or_bodies(
    tmp_path: Path, emulator: PulseEmulator, receiver: Receiver
) -> None:
    result_canary = "RESULT-CANARY-" + uuid.uuid4().hex
    emulator.add_job("job-logs", result={"extraction_id": "ext_logs", "text": result_canary})
    receiver.answers = [503]
    port = free_port()
    sinks = [
        {
            "name": "app",
            "type": "http",
            "url": receiver.url,
            "sign_secret": SINK_SECRET,
            "headers": {"Authorization": SINK_TOKEN},
            "retry_initial_seconds": 0.05,
            "retry_max_seconds": 0.1,
        },
        {"name": "files", "type": "file", "directory": str(tmp_path / "files")},
    ]
    config = write_config(
        tmp_path,
        port,
        server={"max_body_bytes": 4096},
        pulse={"base_url": emulator.base_url, "api_key": emulator.api_key},
        log={"level": "debug"},
        sinks=sinks,
    )
    served = Served(config, tmp_path / "serve.log")
    try:
        # In a thread: the relay may call the emulator in this event loop while it starts.
        await asyncio.to_thread(served.wait_listening, port)
        url = f"http://127.0.0.1:{port}/webhooks/pulse"
        sent_signatures: list[str] = []
        body_canaries: list[str] = []

        async def post(body: bytes, headers: dict[str, str]) -> int:
            if "webhook-signature" in headers:
                sent_signatures.append(headers["webhook-signature"])
            return (await http("POST", url, data=body, headers=headers))[0]

        # The suite's hostile requests, each carrying a body canary.
        for name, case in sorted(UNAUTHORIZED_CASES.items()):
            body, headers = case(signed(make_body(), webhook_id="msg_hostile"))
            assert await post(body, headers) == 401, name
        for kind, status in (("not-json", 200), ("too-large", 413)):
            canary = f"BODY-CANARY-{kind}-{uuid.uuid4().hex}"
            body_canaries.append(canary)
            body = canary.encode() * (1 if kind == "not-json" else 400)
            assert await post(body, signed(body)) == status
        accepted_canary = "BODY-CANARY-accepted-" + uuid.uuid4().hex
        body_canaries.append(accepted_canary)
        body = make_body("job.completed", job_id="job-logs", note=accepted_canary)
        assert await post(body, signed(body, webhook_id="msg_logs")) == 202
        assert await post(body, signed(body, webhook_id="msg_logs")) == 200
        await wait_for(lambda: len(receiver.received) == 1, timeout_seconds=20)
        await wait_for((tmp_path / "files" / "job-logs.json").exists)
    finally:
        returncode = await asyncio.to_thread(served.terminate)
    log_text = served.log()
    assert returncode == 0, log_text
    lines = [json.loads(line) for line in log_text.splitlines()]

    forbidden = [
        SECRET,
        SECRET.removeprefix("whsec_"),
        OTHER_SECRET.removeprefix("whsec_"),
        emulator.api_key,
        SINK_SECRET.removeprefix("whsec_"),
        SINK_TOKEN,
        SINK_TOKEN.removeprefix("Bearer "),
        result_canary,
        *body_canaries,
        *[sig.partition(",")[2] for sig in sent_signatures if len(sig.partition(",")[2]) > 8],
        *[h for r in receiver.received for k, h in r.headers.items() if k == "webhook-signature"],
    ]
    assert len(forbidden) > 20
    leaked = [item for item in forbidden if item in log_text]
    assert leaked == []

    # The lines about the event carry its context.
    delivered = [
        line for line in lines if line["event"] == "delivered" and line.get("sink") == "app"
    ]
    assert len(delivered) == 1
    assert delivered[0]["webhook_id"] == "msg_logs"
    assert delivered[0]["job_id"] == "job-logs"
    assert delivered[0]["type"] == "job.completed"
    assert delivered[0]["status"] == "completed"
    assert delivered[0]["attempt"] == 2
    assert delivered[0]["extraction_id"] == "ext_logs"
    assert isinstance(delivered[0]["duration_ms"], float)
    retried = [line for line in lines if line["event"] == "delivery failed; will retry"]
    assert retried and retried[0]["attempt"] == 1 and retried[0]["sink"] == "app"
    rejected = [line["http_status"] for line in lines if line["event"] == "webhook rejected"]
    # Every refusal is logged, the 413 too.
    assert sorted(rejected) == [401] * len(UNAUTHORIZED_CASES) + [413]
