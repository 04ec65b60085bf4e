"""A raw HTTP/1.1 client and a relay process for bench/chaos/edge.py.

The probes control every byte they send (framing, `Expect`, repeated headers),
so they speak HTTP over plain sockets.
"""

from __future__ import annotations

import json
import socket
import ssl
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import PYTHON, SECRET, WEBHOOK_PATH, Process, free_port, metric_value
from pulse_relay.ingress.signature import sign_headers

READ_TIMEOUT_SECONDS = 1.0
MAX_BODY_BYTES = 65536
# The soft file limit systemd gives a unit that sets no LimitNOFILE, and the unit's own.
DEFAULT_FILE_LIMIT = 1024
UNIT_FILE_LIMIT = 65536


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml(item) for item in value) + "]"
    return json.dumps(str(value))


def config_text(document: dict[str, dict[str, Any]]) -> str:
    return "".join(
        f"[{section}]\n" + "".join(f"{key} = {_toml(value)}\n" for key, value in table.items())
        for section, table in document.items()
    )


class EdgeRelay:
    """`pulse-relay serve` logging at info, with its ingress, admin port and log at hand."""

    def __init__(
        self,
        workdir: Path,
        *,
        file_limit: int | None = None,
        admin: dict[str, Any] | None = None,
        **server: Any,
    ) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.port, self.admin_port = free_port(), free_port()
        self.log_path = workdir / "relay.log"
        self.max_body_bytes = int(server.pop("max_body_bytes", MAX_BODY_BYTES))
        document = {
            "server": {
                "host": "127.0.0.1",
                "port": self.port,
                "read_timeout_seconds": READ_TIMEOUT_SECONDS,
                "max_body_bytes": self.max_body_bytes,
                **server,
            },
            "admin": {"port": self.admin_port, **(admin or {})},
            "verify": {"secrets": [SECRET]},
            "store": {"path": workdir / "relay.db"},
            "log": {"format": "json", "level": "info"},
        }
        self.config = workdir / "relay.toml"
        self.config.write_text(config_text(document))
        argv = [PYTHON, "-m", "pulse_relay", "--config", str(self.config), "serve"]
        if file_limit is not None:
            argv = ["sh", "-c", f'ulimit -n {file_limit} && exec "$@"', "sh", *argv]
        self._process = Process(
            argv, log_path=self.log_path, health_url=f"http://127.0.0.1:{self.admin_port}/healthz"
        ).start()

    def stop(self) -> None:
        self._process.stop(timeout_seconds=20)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.log_text().splitlines() if line.startswith("{")]

    def metric(self, outcome: str) -> float:
        return metric_value(self.admin_port, "pulse_relay_webhooks_total", f'outcome="{outcome}"')

    def event(self, event_id: str) -> dict[str, Any]:
        """The admin API's document of one event."""
        url = f"http://127.0.0.1:{self.admin_port}/api/events/{event_id}"
        with urllib.request.urlopen(url, timeout=10) as answer:
            document: dict[str, Any] = json.loads(answer.read())
        return document


# -- the raw client -----------------------------------------------------------------------


def signed(body: bytes, webhook_id: str | None = None) -> dict[str, str]:
    webhook_id = webhook_id or f"msg_edge_{time.monotonic_ns()}"
    return {**sign_headers(SECRET, webhook_id, body), "content-type": "application/json"}


def job_body() -> bytes:
    return json.dumps({"type": "job.completed", "data": {"job_id": "job-edge"}}).encode()


def head(headers: list[tuple[str, str]] | dict[str, str], *, length: int | None) -> bytes:
    pairs = list(headers.items()) if isinstance(headers, dict) else list(headers)
    pairs.append(("Host", "127.0.0.1"))
    if length is not None:
        pairs.append(("Content-Length", str(length)))
    lines = "".join(f"{name}: {value}\r\n" for name, value in pairs)
    return f"POST {WEBHOOK_PATH} HTTP/1.1\r\n{lines}\r\n".encode("latin-1")


@dataclass
class Answer:
    status: int
    document: dict[str, Any]
    seconds: float

    def __str__(self) -> str:
        word = self.document.get("status", "-")
        return f"{self.status} `{word}`"


def read_answer(sock: socket.socket, started: float) -> Answer:
    """One response off the socket: status, JSON body, seconds since `started`."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return Answer(0, {}, time.monotonic() - started)
        data += chunk
    head_bytes, _, rest = data.partition(b"\r\n\r\n")
    lines = head_bytes.decode("latin-1").split("\r\n")
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            length = int(value)
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        rest += chunk
    try:
        document = json.loads(rest[:length]) if length else {}
    except ValueError:
        document = {}
    return Answer(int(lines[0].split()[1]), document, time.monotonic() - started)


def exchange(port: int, data: bytes, *, timeout: float = 30.0) -> Answer:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        started = time.monotonic()
        sock.sendall(data)
        return read_answer(sock, started)


def expect_continue(port: int, headers: dict[str, str], length: int) -> tuple[Answer, bool]:
    """Headers with `Expect: 100-continue`; the first answer, and whether it was 100."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        started = time.monotonic()
        sock.sendall(head(headers | {"Expect": "100-continue"}, length=length))
        first = read_answer(sock, started)
        return first, first.status == 100


def tls_exchange(port: int, data: bytes, *, cafile: Path, source: str) -> Answer:
    """`exchange` over TLS, trusting `cafile`, from the local address `source`."""
    context = ssl.create_default_context(cafile=str(cafile))
    address = ("127.0.0.1", port)
    with (
        socket.create_connection(address, timeout=30, source_address=(source, 0)) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as sock,
    ):
        started = time.monotonic()
        sock.sendall(data)
        return read_answer(sock, started)
