"""The admin listener on a real port: what moved off the ingress, health, and the control API."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest

from pulse_relay.app import Relay
from pulse_relay.config import ConfigError
from tests.conftest import MakeSettings, StartRelay, make_body, signed, wait_for


async def request(
    method: str, url: str, *, headers: dict[str, str] | None = None, json_body: Any = None
) -> tuple[int, Any]:
    """(status, JSON body or text) of one request."""
    async with (
        aiohttp.ClientSession() as session,
        session.request(
            method, url, headers=headers, json=json_body, allow_redirects=False
        ) as response,
    ):
        text = await response.text()
        if response.content_type == "application/json":
            return response.status, await response.json()
        return response.status, text


async def post_webhook(relay: Relay, webhook_id: str, **body: Any) -> int:
    payload = make_body(**body)
    headers = signed(payload, webhook_id=webhook_id)
    status, _ = await request_raw(relay.webhook_url, payload, headers)
    return status


async def request_raw(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, data=body, headers=headers) as response,
    ):
        return response.status, await response.read()


# -- two listeners -------------------------------------------------------------


async def test_ingress_serves_only_the_webhook_and_healthz(start_relay: StartRelay) -> None:
    relay = await start_relay()
    assert (await request("GET", relay.base_url + "/healthz"))[0] == 200
    for path in ("/readyz", "/metrics", "/api/events", "/api/stats", "/", "/login"):
        assert (await request("GET", relay.base_url + path))[0] == 404, path
    assert (await request("GET", relay.webhook_url))[0] == 405
    assert relay.admin_port is not None and relay.admin_port != relay.port


async def test_admin_serves_health_readiness_and_metrics(start_relay: StartRelay) -> None:
    relay = await start_relay()
    assert await request("GET", relay.admin_url + "/healthz") == (200, {"status": "ok"})
    assert await request("GET", relay.admin_url + "/readyz") == (200, {"status": "ready"})
    status, text = await request("GET", relay.admin_url + "/metrics")
    assert status == 200 and "pulse_relay_webhooks_total" in text
    # The webhook path is not on the admin side.
    assert (await request("POST", relay.admin_url + "/webhooks/pulse"))[0] in (403, 404)


async def test_admin_disabled_binds_one_port(start_relay: StartRelay) -> None:
    relay = await start_relay(admin={"enabled": False})
    assert relay.admin_port is None
    assert (await request("GET", relay.base_url + "/healthz"))[0] == 200


async def test_readiness_probe_runs_at_most_once_per_second(start_relay: StartRelay) -> None:
    relay = await start_relay()
    probes = 0
    real_probe = relay.store.check_writable

    async def counted() -> None:
        nonlocal probes
        probes += 1
        await real_probe()

    relay.store.check_writable = counted  # type: ignore[method-assign]
    # One answer first so the 50 below all fall in the same second as a cached probe.
    assert (await request("GET", relay.admin_url + "/readyz"))[0] == 200
    probes = 0
    answers = await asyncio.gather(
        *(request("GET", relay.admin_url + "/readyz") for _ in range(50))
    )
    assert [status for status, _ in answers] == [200] * 50
    assert probes <= 1


async def test_serve_refuses_an_exposed_admin_listener_without_a_token(
    make_settings: MakeSettings,
) -> None:
    relay = Relay(make_settings(admin={"host": "0.0.0.0"}))
    with pytest.raises(ConfigError, match=r"admin\.token"):
        await relay.start()
    assert relay.admin_port is None and relay.port is None


# -- the control API ------------------------------------------------------------


async def test_events_one_event_and_stats(start_relay: StartRelay, tmp_path: Any) -> None:
    relay = await start_relay(
        sinks=[{"type": "file", "name": "files", "directory": str(tmp_path / "out")}],
        pulse={"fetch_on": []},
    )
    assert await post_webhook(relay, "msg_a", job_id="job-a") == 202

    async def delivered() -> bool:
        view = await relay.store.get_event("msg_a")
        return view is not None and view.deliveries["files"].state == "delivered"

    await wait_for(delivered)
    status, listing = await request("GET", relay.admin_url + "/api/events")
    assert status == 200
    assert listing["next"] is None
    (item,) = listing["events"]
    assert item["id"] == "msg_a" and item["job_id"] == "job-a"
    assert item["deliveries"]["files"]["state"] == "delivered"
    assert "payload" not in item
    status, event = await request("GET", relay.admin_url + "/api/events/msg_a")
    assert status == 200
    assert event["payload"]["data"]["job_id"] == "job-a"
    assert [a["sink"] for a in event["attempts"]] == ["files"]
    status, stats = await request("GET", relay.admin_url + "/api/stats")
    assert status == 200
    assert stats["events"]["accepted"] == 1
    assert stats["deliveries"]["delivered"] == 1
    assert stats["pending"] == {"files": 0}
    assert stats["store_backend"] == "sqlite"


async def test_unknown_event_and_bad_filters_answer_json_errors(start_relay: StartRelay) -> None:
    relay = await start_relay()
    status, body = await request("GET", relay.admin_url + "/api/events/msg_nope")
    assert status == 404 and body["error"] == "not_found" and "msg_nope" in body["detail"]
    for query, param in (("limit=0", "limit"), ("state=lost", "state"), ("before=%%%", "before")):
        status, body = await request("GET", relay.admin_url + "/api/events?" + query)
        assert status == 400, query
        assert body["detail"].startswith(param + ":"), body
    status, body = await request("GET", relay.admin_url + "/api/nowhere")
    assert status == 404 and body["error"] == "not_found"
