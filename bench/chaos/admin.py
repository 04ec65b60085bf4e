"""Issue 20's admin-listener findings, replayed against a running relay: what each gets now.

Each probe sends the real bytes over a real socket to the admin listener of
`pulse-relay serve` and measures the answer; an answer that breaks the README's
*Security model* is a problem, which makes `python -m bench.chaos` exit 1.
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from bench.chaos.edge_client import READ_TIMEOUT_SECONDS, EdgeRelay, config_text, read_answer
from bench.chaos.findings import FindingFigures
from bench.common import PYTHON, SECRET, free_port

REBOUND = "rebind.attacker.example:8788"
TOKEN = "an-admin-token-of-32-characters!"
GUESSES = 200
OVERSIZED_HEADER = "X-Pulse-Relay-Meta-Note"


@dataclass
class AdminFigures(FindingFigures):
    """One row per finding of the admin listener's review."""

    part: ClassVar[str] = "admin"


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    document: dict[str, Any]
    body: bytes


def request(
    port: int,
    method: str,
    path: str,
    headers: dict[str, str] | None = None,
    body: bytes = b"",
) -> Reply:
    """One request on a fresh connection (`Host: 127.0.0.1:<port>` unless `headers` say)."""
    pairs = {"Host": f"127.0.0.1:{port}", **(headers or {}), "Connection": "close"}
    if body or method == "POST":
        pairs["Content-Length"] = str(len(body))
    lines = "".join(f"{name}: {value}\r\n" for name, value in pairs.items())
    data = f"{method} {path} HTTP/1.1\r\n{lines}\r\n".encode("latin-1") + body
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(data)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    head, _, rest = received.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    reply_headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        reply_headers[name.strip().lower()] = value.strip()
    try:
        document = json.loads(rest) if rest.strip() else {}
    except ValueError:
        document = {}
    return Reply(int(status_line.split()[1]), reply_headers, document, rest)


def _shown(reply: Reply) -> str:
    error = reply.document.get("error")
    return f"{reply.status} `{error}`" if error else str(reply.status)


def probe_rebinding(relay: EdgeRelay, figures: AdminFigures) -> None:
    """A page on a rebinding domain, with no admin token set (the default set-up)."""
    port = relay.admin_port
    rebound = {"Host": REBOUND, "Origin": f"http://{REBOUND}", "X-Pulse-Relay": "1"}
    watch = json.dumps({"job_id": "job-rebound", "metadata": {"k": "v"}}).encode()
    created = request(port, "POST", "/api/watches", rebound | JSON, watch)
    watches = request(port, "GET", "/api/watches").document.get("watches")
    figures.add(
        f"no token: `POST /api/watches` with `Host: {REBOUND}` and a matching `Origin`",
        f"{_shown(created)}; watches created: {len(watches or [])}",
        as_specified=(created.status, watches) == (403, []),
    )
    reads = [request(port, "GET", path, rebound) for path in READ_PATHS]
    figures.add(
        "no token, that `Host`: `GET` " + ", ".join(f"`{path}`" for path in READ_PATHS),
        " / ".join(_shown(reply) for reply in reads),
        as_specified={reply.status for reply in reads} == {403},
    )
    probes = [request(port, "GET", path, {"Host": REBOUND}) for path in PROBE_PATHS]
    figures.add(
        "no token, that `Host`: " + ", ".join(f"`{path}`" for path in PROBE_PATHS),
        " / ".join(_shown(reply) for reply in probes),
        as_specified={reply.status for reply in probes} == {200},
    )


JSON = {"Content-Type": "application/json"}
READ_PATHS = ("/api/events", "/api/stream", "/", "/pulse/job/job-1")
PROBE_PATHS = ("/healthz", "/readyz", "/metrics")


def probe_login_redirect(relay: EdgeRelay, figures: AdminFigures) -> None:
    reply = request(relay.admin_port, "GET", "/login?next=/%09/evil.example/x")
    location = reply.headers.get("location")
    figures.add(
        "`GET /login?next=/%09/evil.example/x`",
        f"{reply.status}, `Location: {location}`",
        as_specified=(reply.status, location) == (303, "/"),
    )


def probe_slow_headers(relay: EdgeRelay, figures: AdminFigures) -> None:
    """Header lines trickled every 0.1 s: when the admin listener closes the connection."""
    with socket.create_connection(("127.0.0.1", relay.admin_port), timeout=30) as sock:
        started = time.monotonic()
        sock.sendall(b"GET /api/events HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        sock.settimeout(0.1)
        closed_after = float("inf")
        while time.monotonic() - started < 30:
            try:
                sock.sendall(b"X-Slow: 1\r\n")
                if sock.recv(1) == b"":
                    closed_after = time.monotonic() - started
                    break
            except TimeoutError:
                continue
            except OSError:
                closed_after = time.monotonic() - started
                break
    figures.add(
        "admin listener: headers trickled, one line each 0.1 s",
        f"closed after {closed_after:.2f} s (`server.read_timeout_seconds` = "
        f"{READ_TIMEOUT_SECONDS:g})",
        as_specified=closed_after < READ_TIMEOUT_SECONDS + 1.0,
    )


def probe_oversized_header(relay: EdgeRelay, figures: AdminFigures) -> None:
    value = "secret-" + "v" * 9000
    with socket.create_connection(("127.0.0.1", relay.admin_port), timeout=30) as sock:
        head = f"GET /api/events HTTP/1.1\r\nHost: 127.0.0.1\r\n{OVERSIZED_HEADER}: {value}\r\n\r\n"
        sock.sendall(head.encode())
        answer = read_answer(sock, time.monotonic())
    detail = answer.document.get("detail", "")
    echoed = "secret-" in json.dumps(answer.document)
    figures.add(
        f"admin listener: a 9,000-byte `{OVERSIZED_HEADER}` header",
        f"{answer.status} `{answer.document.get('error')}`: {detail}"
        + ("; the value echoed" if echoed else "; the value not echoed"),
        as_specified=answer.status == 400 and OVERSIZED_HEADER in detail and not echoed,
    )


def probe_guessing(relay: EdgeRelay, figures: AdminFigures) -> None:
    """Wrong tokens at `/login` from one address, as fast as one client goes."""
    started = time.monotonic()
    statuses: list[int] = []
    retry_after: set[str] = set()
    for guess in range(GUESSES):
        form = f"token=guess-{guess:04d}".encode()
        headers = {"Content-Type": "application/x-www-form-urlencoded"}
        reply = request(relay.admin_port, "POST", "/login", headers, form)
        statuses.append(reply.status)
        if reply.status == 429:
            retry_after.add(reply.headers.get("retry-after", "none"))
    seconds = time.monotonic() - started
    right = request(relay.admin_port, "GET", "/api/stats", {"Authorization": f"Bearer {TOKEN}"})
    logged = [line for line in relay.log_lines() if line["event"] == "admin login failed"]
    guesses_in_log = relay.log_text().count("guess-")
    counts = {status: statuses.count(status) for status in sorted(set(statuses))}
    figures.add(
        f"{GUESSES} wrong tokens at `/login` from one address",
        f"answers {counts} in {seconds:.1f} s (`Retry-After` {', '.join(sorted(retry_after))});"
        f" then the right token: {right.status}; {len(logged)} `admin login failed` lines,"
        f" guesses in the log: {guesses_in_log}",
        as_specified=statuses[:10] == [401] * 10
        and set(statuses[10:]) == {429}
        and right.status == 429
        and len(logged) == 10
        and guesses_in_log == 0,
    )


def probe_short_token(workdir: Path, figures: AdminFigures) -> None:
    """`token = "x"` on an admin listener bound to every address: `serve` and `check-config`."""
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "relay.toml"
    document = {
        "server": {"host": "127.0.0.1", "port": free_port()},
        "admin": {"host": "0.0.0.0", "port": free_port(), "token": "x"},
        "verify": {"secrets": [SECRET]},
        "store": {"path": workdir / "relay.db"},
    }
    config.write_text(config_text(document))
    results = [
        subprocess.run(
            [PYTHON, "-m", "pulse_relay", "--config", str(config), command],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        for command in ("serve", "check-config")
    ]
    named = all("admin.token" in result.stderr for result in results)
    figures.add(
        '`admin.host = "0.0.0.0"`, `token = "x"`: `serve` / `check-config`',
        " / ".join(f"exit {result.returncode}" for result in results)
        + (", naming `admin.token`" if named else ", without naming `admin.token`"),
        as_specified=[result.returncode for result in results] == [1, 1] and named,
    )


def run_admin(workdir: Path) -> AdminFigures:
    """Every admin-listener row of issue 20, measured against fresh relays."""
    started = time.monotonic()
    figures = AdminFigures()
    relay = EdgeRelay(workdir / "open")
    try:
        probe_rebinding(relay, figures)
        probe_login_redirect(relay, figures)
        probe_slow_headers(relay, figures)
        probe_oversized_header(relay, figures)
    finally:
        relay.stop()
    relay = EdgeRelay(workdir / "guarded", admin={"token": TOKEN})
    try:
        probe_guessing(relay, figures)
    finally:
        relay.stop()
    probe_short_token(workdir / "short-token", figures)
    figures.seconds = time.monotonic() - started
    return figures
