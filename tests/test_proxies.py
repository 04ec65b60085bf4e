"""The README's reverse-proxy recipes, run for real in front of a real relay.

Each test takes the nginx or Caddy block from the README's "HTTPS and reverse
proxies" section, swaps the example host, ports and certificate for test ones
(failing loudly if the README no longer holds what it swaps), and runs Debian's
`nginx` or `caddy` as an unprivileged foreground process on 127.0.0.1. Clients
connect from 127.0.0.2, so that the proxy (127.0.0.1) and the client differ.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import aiohttp
import pytest

from pulse_relay.app import Relay
from tests.certs import CertificateAuthority
from tests.conftest import StartRelay, make_body, signed, wait_for
from tests.helpers import free_port
from tests.rawhttp import close, request_bytes

README = Path(__file__).resolve().parent.parent / "README.md"
CLIENT = "127.0.0.2"
OTHER_CLIENT = "127.0.0.3"
FORGED = "203.0.113.66"


def readme_block(language: str) -> str:
    """The first ```{language} block of the README's "HTTPS and reverse proxies" section."""
    section = README.read_text().split("## HTTPS and reverse proxies", 1)[1].split("\n## ", 1)[0]
    return section.split(f"```{language}\n", 1)[1].split("```", 1)[0]


def substitute(text: str, replacements: dict[str, str]) -> str:
    for old, new in replacements.items():
        assert old in text, f"the README recipe no longer contains {old!r}"
        text = text.replace(old, new)
    return text


def require(program: str) -> str:
    path = shutil.which(program) or (f"/usr/sbin/{program}" if program == "nginx" else None)
    if path is None or not Path(path).exists():
        if os.environ.get("CI"):
            pytest.fail(f"{program} is not installed (.ci/run installs it)")
        pytest.skip(f"{program} is not installed (apt-get install {program})")
    return path


class Workdir:
    """A private directory the proxy may use, owned by the user it runs as."""

    def __init__(self) -> None:
        self.path = Path(tempfile.mkdtemp(prefix="pulse-relay-proxy-"))
        self.ca = CertificateAuthority(self.path)
        self.issued = self.ca.issue("proxy")
        self._user = pwd.getpwnam("nobody") if os.geteuid() == 0 else None

    def hand_over(self) -> None:
        """Give everything to the unprivileged user the proxy runs as (when the test is root)."""
        if self._user is None:
            return
        for path in [self.path, *self.path.rglob("*")]:
            os.chown(path, self._user.pw_uid, self._user.pw_gid)

    def demote(self) -> Callable[[], None] | None:
        user = self._user
        if user is None:
            return None

        def drop_privileges() -> None:
            os.setgroups([])
            os.setgid(user.pw_gid)
            os.setuid(user.pw_uid)

        return drop_privileges

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def start_proxy(argv: list[str], workdir: Workdir, port: int) -> subprocess.Popen[bytes]:
    workdir.hand_over()
    with (workdir.path / "proxy.log").open("wb") as log:
        process = subprocess.Popen(
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=workdir.path,
            env={
                "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                "HOME": str(workdir.path),
                "XDG_CONFIG_HOME": str(workdir.path / "config"),
                "XDG_DATA_HOME": str(workdir.path / "data"),
            },
            preexec_fn=workdir.demote(),
        )
    deadline = time.monotonic() + 20
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return process
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                output = (workdir.path / "proxy.log").read_text(errors="replace")
                raise AssertionError(f"{argv[0]} did not start:\n{output}") from None
            time.sleep(0.05)


def stop_proxy(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@pytest.fixture
def workdir() -> Iterator[Workdir]:
    made = Workdir()
    yield made
    made.remove()


def nginx_config(workdir: Workdir, port: int, relay_port: int) -> Path:
    recipe = substitute(
        readme_block("nginx"),
        {
            "listen 443 ssl;": f"listen 127.0.0.1:{port} ssl;",
            "/etc/letsencrypt/live/webhooks.example.com/fullchain.pem": str(
                workdir.issued.cert_file
            ),
            "/etc/letsencrypt/live/webhooks.example.com/privkey.pem": str(workdir.issued.key_file),
            "proxy_pass http://127.0.0.1:8787;": f"proxy_pass http://127.0.0.1:{relay_port};",
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
{recipe}
}}
"""
    )
    return config


def caddy_config(workdir: Workdir, port: int, relay_port: int) -> Path:
    recipe = substitute(
        readme_block("caddy"),
        {
            "webhooks.example.com {": (
                f"https://127.0.0.1:{port} {{\n"
                f"\ttls {workdir.issued.cert_file} {workdir.issued.key_file}"
            ),
            "reverse_proxy 127.0.0.1:8787": f"reverse_proxy 127.0.0.1:{relay_port}",
        },
    )
    config = workdir.path / "Caddyfile"
    config.write_text(
        f"{{\n\tadmin off\n\tauto_https off\n\thttp_port {free_port()}\n}}\n\n{recipe}"
    )
    return config


@pytest.fixture
async def relay(start_relay: StartRelay) -> Relay:
    return await start_relay(
        server={"trusted_proxies": ["127.0.0.1"], "allow_from": [f"{CLIENT}/32"]}
    )


@contextlib.asynccontextmanager
async def running_proxy(name: str, relay: Relay, workdir: Workdir) -> AsyncIterator[str]:
    """Run nginx or caddy with the README's recipe; yield the webhook URL through it."""
    program = require(name)
    port = free_port()
    assert relay.port is not None
    if name == "nginx":
        config = nginx_config(workdir, port, relay.port)
        log = str(workdir.path / "error.log")
        argv = [program, "-p", str(workdir.path), "-e", log, "-c", str(config)]
    else:
        config = caddy_config(workdir, port, relay.port)
        argv = [program, "run", "--config", str(config), "--adapter", "caddyfile"]
    process = await asyncio.to_thread(start_proxy, argv, workdir, port)
    try:
        yield f"https://127.0.0.1:{port}/webhooks/pulse"
    finally:
        await asyncio.to_thread(stop_proxy, process)


@pytest.fixture(params=["nginx", "caddy"])
async def proxy_url(
    request: pytest.FixtureRequest, relay: Relay, workdir: Workdir
) -> AsyncIterator[str]:
    """The webhook URL through the proxy the test is parametrized with."""
    async with running_proxy(request.param, relay, workdir) as url:
        yield url


async def post(
    url: str, workdir: Workdir, body: bytes, headers: dict[str, str], *, source: str = CLIENT
) -> tuple[int, str, bytes]:
    connector = aiohttp.TCPConnector(local_addr=(source, 0))
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        session.post(
            url, data=io.BytesIO(body), headers=headers, ssl=workdir.ca.client_context()
        ) as answer,
    ):
        return answer.status, answer.headers.get("Content-Type", ""), await answer.read()


async def test_a_signed_webhook_through_the_proxy_keeps_the_real_client_address(
    proxy_url: str, relay: Relay, workdir: Workdir
) -> None:
    body = make_body()
    headers = signed(body, webhook_id="msg_proxied") | {"X-Forwarded-For": FORGED}

    status, _, _ = await post(proxy_url, workdir, body, headers)

    assert status == 202
    view = await relay.store.get_event("msg_proxied")
    assert view is not None
    assert view.client_address == CLIENT


async def test_allow_from_sees_the_client_behind_the_proxy(
    proxy_url: str, relay: Relay, workdir: Workdir
) -> None:
    body = make_body()
    # Not allowed, and claiming to be the allowed client does not help.
    headers = signed(body) | {"X-Forwarded-For": CLIENT}

    status, content_type, answer = await post(
        proxy_url, workdir, body, headers, source=OTHER_CLIENT
    )

    assert (status, content_type) == (403, "application/json; charset=utf-8")
    assert json.loads(answer)["status"] == "forbidden"


async def test_a_body_over_the_relay_limit_gets_the_relay_json_413(
    proxy_url: str, relay: Relay, workdir: Workdir
) -> None:
    body = b"x" * (relay.settings.server.max_body_bytes + 512 * 1024)

    status, content_type, answer = await post(proxy_url, workdir, body, signed(body))

    assert status == 413
    assert content_type.startswith("application/json")
    assert b'"too_large"' in answer


async def test_nginx_caps_the_connections_of_one_source(relay: Relay, workdir: Workdir) -> None:
    body = make_body()
    # The headers of a request whose body never comes.
    request = request_bytes(b"", signed(body) | {"Content-Length": str(len(body))})
    async with running_proxy("nginx", relay, workdir) as url:
        port = int(url.split(":")[2].split("/")[0])
        held: list[asyncio.StreamWriter] = []
        try:
            # 20 requests whose bodies never come: each holds its connection open.
            for _ in range(20):
                _, writer = await asyncio.open_connection(
                    "127.0.0.1", port, ssl=workdir.ca.client_context(), local_addr=(CLIENT, 0)
                )
                writer.write(request)
                await writer.drain()
                held.append(writer)
            await wait_for(lambda: len(relay_connections(relay)) >= 20)
            status, _, _ = await post(url, workdir, body, signed(body))
        finally:
            for writer in held:
                await close(writer)

    assert status == 429


def relay_connections(relay: Relay) -> list[object]:
    server = relay._runner.server if relay._runner is not None else None
    return list(server.connections) if server is not None else []
