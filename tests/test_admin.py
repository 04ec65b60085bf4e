"""The admin listener on a real port: what moved off the ingress, health, and the control API."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from pulse_relay.admin.context import CachedReadiness
from pulse_relay.app import Relay
from pulse_relay.config import ConfigError, is_loopback_host
from tests.helpers import (
    MakeSettings,
    StartRelay,
    call,
    free_port,
    make_body,
    run_cli,
    signed,
    write_config,
)


async def post_webhook(relay: Relay, webhook_id: str, **body: Any) -> int:
    """POST a signed webhook to the relay's ingress; its status."""
    payload = make_body(**body)
    status, _ = await call(
        "POST", relay.webhook_url, data=payload, headers=signed(payload, webhook_id=webhook_id)
    )
    return status


# -- two listeners -------------------------------------------------------------


async def test_ingress_serves_only_the_webhook_and_healthz(start_relay: StartRelay) -> None:
    relay = await start_relay()
    assert (await call("GET", relay.base_url + "/healthz"))[0] == 200
    for path in ("/readyz", "/metrics", "/api/events", "/api/stats", "/", "/login"):
        assert (await call("GET", relay.base_url + path))[0] == 404, path
    assert (await call("GET", relay.webhook_url))[0] == 405
    assert relay.admin_port is not None and relay.admin_port != relay.port


async def test_admin_serves_health_readiness_and_metrics(start_relay: StartRelay) -> None:
    relay = await start_relay()
    assert await call("GET", relay.admin_url + "/healthz") == (200, {"status": "ok"})
    assert await call("GET", relay.admin_url + "/readyz") == (200, {"status": "ready"})
    status, text = await call("GET", relay.admin_url + "/metrics")
    assert status == 200 and "pulse_relay_webhooks_total" in text
    # The webhook path is not on the admin side.
    assert (await call("POST", relay.admin_url + "/webhooks/pulse"))[0] in (403, 404)


async def test_admin_disabled_binds_one_port(start_relay: StartRelay) -> None:
    relay = await start_relay(admin={"enabled": False})
    assert relay.admin_port is None
    assert (await call("GET", relay.base_url + "/healthz"))[0] == 200


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
    assert (await call("GET", relay.admin_url + "/readyz"))[0] == 200
    probes = 0
    answers = await asyncio.gather(*(call("GET", relay.admin_url + "/readyz") for _ in range(50)))
    assert [status for status, _ in answers] == [200] * 50
    assert probes <= 1


async def test_cached_readiness_probes_once_per_interval() -> None:
    now = 100.0
    probes = 0

    async def probe() -> list[str]:
        nonlocal probes
        probes += 1
        return [] if probes == 1 else ["store not writable"]

    readiness = CachedReadiness(probe, interval_seconds=1.0, clock=lambda: now)
    assert await readiness.problems() == []
    now += 0.999
    assert await readiness.problems() == [] and probes == 1
    now += 0.001
    assert await readiness.problems() == ["store not writable"] and probes == 2


async def test_an_unexpected_failure_is_a_logged_json_500(
    start_relay: StartRelay, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pulse_relay.admin import service

    relay = await start_relay()

    async def broken(*_: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(service, "stats", broken)
    with capture_logs() as logs:
        status, body = await call("GET", relay.admin_url + "/api/stats")
    assert (status, body["error"]) == (500, "internal")
    assert "a bug" not in body["detail"]
    assert [entry["event"] for entry in logs if entry["log_level"] == "error"] == [
        "admin request failed"
    ]


async def test_serve_refuses_an_exposed_admin_listener_without_a_token(
    make_settings: MakeSettings,
) -> None:
    relay = Relay(make_settings(admin={"host": "0.0.0.0"}))
    with pytest.raises(ConfigError, match=r"admin\.token"):
        await relay.start()
    assert relay.admin_port is None and relay.port is None


def test_serve_and_check_config_name_the_missing_token(tmp_path: Path) -> None:
    config = write_config(tmp_path, free_port(), admin_port=free_port(), admin={"host": "0.0.0.0"})
    served = run_cli("serve", config=config)
    assert served.returncode == 1
    assert "admin.token: required when admin.host ('0.0.0.0') is not a loopback" in served.stderr
    checked = run_cli("check-config", config=config)
    assert checked.returncode == 1 and "admin.token" in checked.stderr


@pytest.mark.parametrize(
    ("host", "is_loopback"),
    [
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("LOCALHOST", True),
        ("0.0.0.0", False),
        ("::", False),
        ("10.0.0.5", False),
        ("relay.internal", False),
    ],
)
def test_loopback_means_127_0_0_0_8_and_ipv6_and_localhost(host: str, is_loopback: bool) -> None:
    assert is_loopback_host(host) is is_loopback
