"""Native TLS on the ingress: real clients, a certificate the test makes, renewal by SIGHUP."""

from __future__ import annotations

import asyncio
import signal
import ssl
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cryptography.hazmat.primitives import serialization

from bench.certs import CertificateAuthority, Issued
from pulse_relay.config import ConfigError, load_settings
from pulse_relay.ingress.tls import tls_problem
from tests import helpers
from tests.helpers import Served, StartRelay, free_port, make_body, run_cli, signed, wait_for
from tests.rawhttp import close, read_answer, request_bytes


@pytest.fixture
def ca(tmp_path: Path) -> CertificateAuthority:
    directory = tmp_path / "pki"
    directory.mkdir()
    return CertificateAuthority(directory)


def client_context(ca: CertificateAuthority) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(ca.cert_file))


def tls_settings(issued: Issued) -> dict[str, str]:
    return {"tls_cert_file": str(issued.cert_file), "tls_key_file": str(issued.key_file)}


async def test_signed_webhook_over_https_is_accepted(
    start_relay: StartRelay, ca: CertificateAuthority
) -> None:
    relay = await start_relay(server=tls_settings(ca.issue("relay")))
    body = make_body()

    assert relay.webhook_url.startswith("https://127.0.0.1:")
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            relay.webhook_url,
            data=body,
            headers=signed(body, webhook_id="msg_tls"),
            ssl=client_context(ca),
        ) as answer,
    ):
        assert answer.status == 202
        assert await answer.json() == {"status": "accepted", "id": "msg_tls"}


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
async def test_tls_1_2_and_1_3_clients_connect_and_nothing_older_is_offered(
    start_relay: StartRelay, ca: CertificateAuthority, version: ssl.TLSVersion
) -> None:
    relay = await start_relay(server=tls_settings(ca.issue("relay")))
    pinned = client_context(ca)
    pinned.minimum_version = pinned.maximum_version = version

    _, writer = await asyncio.open_connection("127.0.0.1", relay.port, ssl=pinned)

    assert writer.get_extra_info("ssl_object").version() == version.name.replace("_", ".")
    await close(writer)
    assert relay.tls_context is not None
    assert relay.tls_context.minimum_version == ssl.TLSVersion.TLSv1_2


async def test_plain_http_to_the_tls_port_gets_no_answer_and_harms_nothing(
    start_relay: StartRelay, ca: CertificateAuthority
) -> None:
    relay = await start_relay(server=tls_settings(ca.issue("relay")))
    reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert await asyncio.wait_for(reader.read(), 30) == b""
    await close(writer)
    async with (
        aiohttp.ClientSession() as session,
        session.get(relay.base_url + "/healthz", ssl=client_context(ca)) as answer,
    ):
        assert answer.status == 200


REQUIRED_TOKEN = "token-svix-sends"


def write_config(
    tmp_path: Path, port: int, issued: Issued, *, admin_port: int | None = None
) -> Path:
    """A serve configuration with TLS and a required header; the admin side only if a port."""
    return helpers.write_config(
        tmp_path,
        port,
        sinks=[],
        admin_port=admin_port or 0,
        server={
            "tls_cert_file": str(issued.cert_file),
            "tls_key_file": str(issued.key_file),
            # Long enough that the kept-open connection is not closed as idle during the test.
            "read_timeout_seconds": 60,
        },
        admin={"enabled": admin_port is not None},
        verify={"required_headers": {"X-Relay-Token": REQUIRED_TOKEN}},
    )


class KeptConnection:
    """One TLS connection kept open across requests, as a sender's pool would keep it."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, port: int, ca: CertificateAuthority) -> KeptConnection:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=client_context(ca), server_hostname="127.0.0.1"
        )
        return cls(reader, writer)

    @property
    def serial(self) -> int:
        return int(self.writer.get_extra_info("peercert")["serialNumber"], 16)

    async def post(self, webhook_id: str) -> int:
        body = make_body()
        headers = signed(body, webhook_id=webhook_id) | {"X-Relay-Token": REQUIRED_TOKEN}
        self.writer.write(request_bytes(body, headers, keep_alive=True))
        return (await asyncio.wait_for(read_answer(self.reader), 30)).status

    async def close(self) -> None:
        await close(self.writer)


def renew(issued: Issued, new: Issued) -> None:
    """Replace the files in place, as certbot's deploy hook or a secret mount would."""
    issued.cert_file.write_bytes(new.cert_file.read_bytes())
    issued.key_file.write_bytes(new.key_file.read_bytes())


@dataclass
class ServedTLS:
    """`pulse-relay serve` over TLS as a subprocess, with the certificate it started with."""

    served: Served
    port: int
    certificate: Issued

    async def hang_up_until_logged(self, event: str) -> dict[str, Any]:
        """Send SIGHUP and return the first log line whose event starts with `event`."""
        self.served.process.send_signal(signal.SIGHUP)

        def logged() -> dict[str, Any] | None:
            lines = self.served.log_lines()
            return next((line for line in lines if line["event"].startswith(event)), None)

        await wait_for(lambda: logged() is not None)
        line = logged()
        assert line is not None
        return line


@pytest.fixture
def served_tls(tmp_path: Path, ca: CertificateAuthority) -> Iterator[ServedTLS]:
    port = free_port()
    first = ca.issue("relay")
    served = Served.start(write_config(tmp_path, port, first), port, tmp_path / "serve.log")
    try:
        yield ServedTLS(served, port, first)
    finally:
        assert served.terminate() == 0, served.log()


@pytest.mark.timeout(90)
async def test_sighup_renews_the_certificate_without_dropping_connections(
    served_tls: ServedTLS, ca: CertificateAuthority
) -> None:
    first = served_tls.certificate
    kept = await KeptConnection.open(served_tls.port, ca)
    assert kept.serial == first.serial
    assert await kept.post("msg_before") == 202

    renewed = ca.issue("renewed")
    renew(first, renewed)
    await served_tls.hang_up_until_logged("TLS certificate reloaded")

    # The connection opened before the renewal still works...
    assert await kept.post("msg_after_on_old_connection") == 202
    assert kept.serial == first.serial
    # ...and a new connection is shown the new certificate.
    fresh = await KeptConnection.open(served_tls.port, ca)
    assert fresh.serial == renewed.serial
    assert await fresh.post("msg_after_on_new_connection") == 202
    await kept.close()
    await fresh.close()


@pytest.mark.timeout(90)
async def test_a_broken_renewal_keeps_the_running_certificate(
    served_tls: ServedTLS, ca: CertificateAuthority
) -> None:
    first = served_tls.certificate
    # A half-finished renewal: the new certificate, but the key not yet replaced.
    first.cert_file.write_bytes(ca.issue("half").cert_file.read_bytes())

    refused = await served_tls.hang_up_until_logged("TLS reload refused")

    assert "does not match" in refused["reason"]
    fresh = await KeptConnection.open(served_tls.port, ca)
    assert fresh.serial == first.serial
    assert await fresh.post("msg_still_served") == 202
    await fresh.close()


def test_check_config_validates_the_certificate_and_key(
    tmp_path: Path, ca: CertificateAuthority
) -> None:
    first, other = ca.issue("relay"), ca.issue("other")
    config = write_config(tmp_path, 8787, first)
    assert run_cli("check-config", config=config).returncode == 0

    mismatched = write_config(tmp_path, 8787, Issued(first.cert_file, other.key_file, 0))
    result = run_cli("check-config", config=mismatched)
    assert result.returncode == 1
    assert "server.tls_cert_file / server.tls_key_file" in result.stderr
    assert f"the key in {other.key_file} does not match {first.cert_file}" in result.stderr

    first.cert_file.unlink()
    result = run_cli("check-config", config=config)
    assert result.returncode == 1
    assert f"cannot read certificate {first.cert_file}" in result.stderr


def test_serve_refuses_to_start_with_an_unusable_pair(
    tmp_path: Path, ca: CertificateAuthority
) -> None:
    first, other = ca.issue("relay"), ca.issue("other")
    config = write_config(tmp_path, free_port(), Issued(first.cert_file, other.key_file, 0))

    result = run_cli("serve", config=config)

    assert result.returncode == 1
    assert "configuration error:\nserver.tls_cert_file:" in result.stderr
    assert "does not match" in result.stderr


@pytest.mark.parametrize("given", ["tls_cert_file", "tls_key_file"])
def test_a_certificate_without_its_key_is_a_configuration_error(tmp_path: Path, given: str) -> None:
    config = tmp_path / "relay.toml"
    config.write_text(f'[server]\n{given} = "x.pem"\n')
    missing = "tls_key_file" if given == "tls_cert_file" else "tls_cert_file"

    with pytest.raises(ConfigError) as excinfo:
        load_settings(config)

    assert f"server.{missing}: required when server.{given} is set" in str(excinfo.value)


def test_healthcheck_and_send_test_reach_their_own_https_listener(
    served_tls: ServedTLS,
) -> None:
    config = served_tls.served.config

    health = run_cli("healthcheck", config=config)
    sent = run_cli("send-test", config=config)

    assert health.returncode == 0, health.stderr
    assert f"healthy: https://127.0.0.1:{served_tls.port}/healthz answered 200" in health.stdout
    # Signed and carrying the required header, over HTTPS to the relay's own port.
    assert sent.returncode == 0, sent.stderr
    assert sent.stdout.startswith("202 ")


async def test_the_admin_send_test_reaches_the_https_ingress(
    tmp_path: Path, ca: CertificateAuthority
) -> None:
    port, admin_port = free_port(), free_port()
    config = write_config(tmp_path, port, ca.issue("relay"), admin_port=admin_port)
    served = Served.start(config, port, tmp_path / "serve.log")
    try:
        served.wait_listening(admin_port)
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                f"http://127.0.0.1:{admin_port}/api/send-test",
                json={},
                headers={"X-Pulse-Relay": "1"},
            ) as answer,
        ):
            document = await answer.json()
        assert answer.status == 202, document
        assert document["answer"]["status"] == "accepted"
    finally:
        assert served.terminate() == 0, served.log()


@pytest.mark.parametrize(
    ("spoil", "problem"),
    [
        (lambda issued: issued.cert_file.write_text("not pem"), "holds no PEM certificate"),
        (lambda issued: issued.key_file.write_text("not pem"), "holds no usable PEM private key"),
        (lambda issued: replace_by_directory(issued.key_file), "cannot read key"),
        (lambda issued: encrypt_key(issued.key_file), "encrypted with a passphrase"),
    ],
    ids=["certificate not PEM", "key not PEM", "key unreadable", "key with a passphrase"],
)
def test_tls_problem_says_what_is_wrong(
    ca: CertificateAuthority, spoil: Callable[[Issued], object], problem: str
) -> None:
    issued = ca.issue("relay")
    assert tls_problem(issued.cert_file, issued.key_file) is None

    spoil(issued)

    found = tls_problem(issued.cert_file, issued.key_file)
    assert found is not None and problem in found


def replace_by_directory(path: Path) -> None:
    path.unlink()
    path.mkdir()


def encrypt_key(key_file: Path) -> None:
    key = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"passphrase"),
        )
    )
