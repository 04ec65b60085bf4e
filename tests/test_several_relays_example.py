"""examples/several-relays: two relays on one PostgreSQL behind nginx, checked and run.

No container engine is needed: the compose file is read as data, the relay
configuration is loaded by the relay's own loader, and the load balancer's nginx
configuration runs under Debian's nginx in front of two real `serve` processes
sharing the test PostgreSQL.
"""

from __future__ import annotations

import signal
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from bench.proxies import Workdir, find_program, start_proxy, stop_proxy, substitute
from pulse_relay.config import load_settings
from tests.helpers import (
    Served,
    free_port,
    post_job_created,
    require_debian_package,
    wait_until,
    write_config,
)

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "several-relays"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load((EXAMPLE / "docker-compose.yml").read_text())
    return document


def test_only_the_load_balancer_is_published(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == {"postgres", "relay-a", "relay-b", "lb"}
    assert {name for name, service in services.items() if "ports" in service} == {"lb"}
    assert services["lb"]["volumes"] == ["./nginx.conf:/etc/nginx/conf.d/default.conf:ro"]


def test_both_relays_share_one_store_and_start_once_it_is_healthy(
    compose: dict[str, Any],
) -> None:
    services = compose["services"]
    relay = services["relay-a"]
    assert services["relay-b"] == relay
    assert relay["environment"]["PULSE_RELAY_STORE__URL_FILE"] == "/run/secrets/store-url"
    assert relay["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    assert "pg_isready" in services["postgres"]["healthcheck"]["test"]
    assert relay["healthcheck"]["test"] == ["CMD", "pulse-relay", "healthcheck", "--ready"]
    assert services["lb"]["depends_on"] == {
        "relay-a": {"condition": "service_healthy"},
        "relay-b": {"condition": "service_healthy"},
    }


def test_secrets_are_files_never_values(compose: dict[str, Any]) -> None:
    assert all(set(secret) == {"file"} for secret in compose["secrets"].values())
    for service in compose["services"].values():
        for value in service.get("environment", {}).values():
            assert "postgresql://" not in value and "whsec_" not in value, value
    assert compose["services"]["postgres"]["environment"]["POSTGRES_PASSWORD_FILE"].startswith(
        "/run/secrets/"
    )


def test_the_relays_trust_the_load_balancer_alone(compose: dict[str, Any]) -> None:
    lb_address = compose["services"]["lb"]["networks"]["internal"]["ipv4_address"]
    config = tomllib.loads((EXAMPLE / "relay.toml").read_text())
    assert config["server"]["trusted_proxies"] == [lb_address]


def test_the_relay_configuration_loads_with_a_postgresql_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, postgres_url: str
) -> None:
    url_file = tmp_path / "store-url"
    url_file.write_text(postgres_url)
    monkeypatch.setenv("PULSE_RELAY_STORE__URL_FILE", str(url_file))
    settings = load_settings(EXAMPLE / "relay.toml")
    assert settings.store.backend == "postgresql"
    assert settings.store.postgres_url == postgres_url
    assert [sink.name for sink in settings.sinks] == ["results"]


# --- the load balancer, run -----------------------------------------------------------------


def _nginx_config(workdir: Workdir, port: int, relay_ports: list[int]) -> Path:
    """The example's nginx.conf with the relays and the listener on 127.0.0.1."""
    server_block = substitute(
        (EXAMPLE / "nginx.conf").read_text(),
        {
            "server relay-a:8787": f"server 127.0.0.1:{relay_ports[0]}",
            "server relay-b:8787": f"server 127.0.0.1:{relay_ports[1]}",
            "listen 8787;": f"listen 127.0.0.1:{port};",
        },
    )
    temp = workdir.path / "temp"
    temp.mkdir()
    config = workdir.path / "nginx.conf"
    config.write_text(
        f"""
daemon off;
worker_processes 1;
pid {workdir.path}/nginx.pid;
error_log {workdir.path}/error.log warn;
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path {temp}/body;
    proxy_temp_path {temp}/proxy;
    fastcgi_temp_path {temp}/fastcgi;
    uwsgi_temp_path {temp}/uwsgi;
    scgi_temp_path {temp}/scgi;
{server_block}
}}
"""
    )
    return config


@pytest.fixture
def balanced(tmp_path: Path, postgres_url: str) -> Iterator[tuple[int, list[Served], Path]]:
    """Two relays on the test database behind the example's nginx: (nginx port, relays,
    the results folder both write to)."""
    nginx = find_program("nginx")
    require_debian_package("nginx", nginx is not None)
    assert nginx is not None
    results = tmp_path / "results"
    sink = {"name": "results", "type": "file", "directory": str(results), "filename": "{id}.json"}
    relays: list[Served] = []
    ports: list[int] = []
    workdir = Workdir()
    process = None
    try:
        for name in ("a", "b"):
            folder = tmp_path / name
            folder.mkdir()
            port = free_port()
            config = write_config(folder, port, sinks=[sink], store={"url": postgres_url})
            relays.append(Served(config, folder / "serve.log"))
            relays[-1].wait_listening(port)
            ports.append(port)
        lb_port = free_port()
        config = _nginx_config(workdir, lb_port, ports)
        log = str(workdir.path / "error.log")
        argv = [nginx, "-p", str(workdir.path), "-e", log, "-c", str(config)]
        process = start_proxy(argv, workdir, lb_port)
        yield lb_port, relays, results
    finally:
        if process is not None:
            stop_proxy(process)
        for relay in relays:
            relay.kill()
        workdir.remove()


def _accepted_by(relay: Served) -> set[str]:
    lines = relay.log_lines()
    return {line["webhook_id"] for line in lines if line["event"] == "webhook accepted"}


@pytest.mark.timeout(120)
def test_webhooks_through_the_load_balancer_survive_losing_a_relay(
    balanced: tuple[int, list[Served], Path],
) -> None:
    lb_port, relays, results = balanced
    first = [f"msg_lb_{n}" for n in range(20)]
    assert [post_job_created(lb_port, event_id)[0] for event_id in first] == [202] * len(first)
    # Both relays took a share.
    wait_until(lambda: len(_accepted_by(relays[0]) | _accepted_by(relays[1])) == len(first))
    assert _accepted_by(relays[0]) and _accepted_by(relays[1])
    # Delivered before the kill, so no delivery waits for a dead relay's lease here.
    wait_until(lambda: len(list(results.glob("*.json"))) == len(first))

    relays[0].process.send_signal(signal.SIGKILL)
    relays[0].process.wait(timeout=10)
    then = [f"msg_after_kill_{n}" for n in range(20)]
    # nginx sends what the dead relay cannot take to the other one: no sender sees it.
    assert [post_job_created(lb_port, event_id)[0] for event_id in then] == [202] * len(then)
    assert set(then) <= _accepted_by(relays[1])

    # A replay through the load balancer is a duplicate whichever relay it reaches.
    assert post_job_created(lb_port, first[0]) == (200, "duplicate")
    wait_until(lambda: len(list(results.glob("*.json"))) == len(first) + len(then))
    assert {path.stem for path in results.glob("*.json")} == set(first) | set(then)
