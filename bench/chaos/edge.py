"""Issue 13's ingress findings, replayed against a running relay: what each one gets now.

Every probe sends the real bytes over a real socket to `pulse-relay serve`
(bench/chaos/edge_client.py) and measures the answer: status, JSON status, time
taken, whether `100 Continue` came, what the log and the metrics show. An
answer that breaks docs/ingress.md (the edge) is a problem, which makes `python -m bench.chaos`
exit 1.
"""

from __future__ import annotations

import base64
import gzip
import resource
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from bench.chaos.edge_client import (
    DEFAULT_FILE_LIMIT,
    READ_TIMEOUT_SECONDS,
    UNIT_FILE_LIMIT,
    EdgeRelay,
    exchange,
    expect_continue,
    head,
    job_body,
    read_answer,
    signed,
    tls_exchange,
)
from bench.chaos.findings import FindingFigures
from bench.proxies import CLIENT, Workdir, find_program, start_recipe, stop_proxy

OTHER_SECRET = "whsec_" + base64.b64encode(b"not-the-relay-secret-0123456789").decode()


@dataclass
class EdgeFigures(FindingFigures):
    """One row per finding of the public edge's review, with the load it was put under."""

    part: ClassVar[str] = "edge"

    flood_requests: int = 0
    idle_connections: int = 0


def probe_encodings(relay: EdgeRelay, figures: EdgeFigures) -> None:
    body = job_body()
    for name, encoding, sent in (
        ("a corrupt gzip body", "gzip", b"\x1f\x8b\x08\x00 not a gzip stream"),
        ("a corrupt deflate body", "deflate", b"x\x9c not deflate either"),
        ("`Content-Encoding: br`", "br", body),
        ("`Content-Encoding: zstd`", "zstd", gzip.compress(body)),
    ):
        headers = signed(sent) | {"Content-Encoding": encoding}
        answer = exchange(relay.port, head(headers, length=len(sent)) + sent)
        ok = (answer.status, answer.document.get("status")) == (415, "unsupported_encoding")
        figures.add(name, f"{answer}, JSON", as_specified=ok)


def probe_signatures(relay: EdgeRelay, figures: EdgeFigures) -> None:
    body = job_body()
    headers = signed(body)
    headers["webhook-signature"] = "v1,AAAA " + headers["webhook-signature"]
    answer = exchange(relay.port, head(headers, length=len(body)) + body)
    figures.add("`v1,AAAA v1,<good>`", str(answer), as_specified=answer.status == 202)
    twice = [*signed(body, "msg_edge_first").items(), ("webhook-id", "msg_edge_second")]
    answer = exchange(relay.port, head(twice, length=len(body)) + body)
    reason = answer.document.get("reason")
    figures.add(
        "two `webhook-id` headers with different values",
        f"{answer} ({reason}), nothing stored",
        as_specified=answer.status == 401,
    )


def probe_expect(relay: EdgeRelay, figures: EdgeFigures) -> None:
    size = relay.max_body_bytes + 1
    answer, continued = expect_continue(relay.port, signed(b"x" * size), size)
    figures.add(
        "`Expect: 100-continue`, `Content-Length` over the limit",
        f"{answer} in {answer.seconds * 1000:.1f} ms, "
        + ("after `100 Continue`" if continued else "no `100 Continue`, body never sent"),
        as_specified=answer.status == 413 and not continued,
    )
    body = job_body()
    answer, continued = expect_continue(relay.port, {"content-type": "application/json"}, len(body))
    figures.add(
        "`Expect: 100-continue` without signature headers",
        f"{answer} in {answer.seconds * 1000:.1f} ms, "
        + ("after `100 Continue`" if continued else "no `100 Continue`, body never sent"),
        as_specified=answer.status == 401 and not continued,
    )


def probe_framing(relay: EdgeRelay, figures: EdgeFigures) -> None:
    body = job_body()
    headers = signed(body) | {"Expect": "100-continue", "Transfer-Encoding": "chunked"}
    with socket.create_connection(("127.0.0.1", relay.port), timeout=30) as sock:
        sock.sendall(head(headers, length=None))
        read_answer(sock, time.monotonic())  # 100 Continue: the relay now reads the body
        started = time.monotonic()
        sock.sendall(b"5\r\nhello\r\nZZ\r\nnot a chunk\r\n")
        answer = read_answer(sock, started)
    figures.add(
        "malformed chunked encoding (mid-body)",
        f"{answer} after {answer.seconds * 1000:.1f} ms",
        as_specified=answer.status == 400 and answer.seconds < READ_TIMEOUT_SECONDS,
    )
    before = relay.log_text().count("client disconnected mid-body")
    with socket.create_connection(("127.0.0.1", relay.port), timeout=30) as sock:
        sock.sendall(head(signed(body), length=len(body)) + body[:10])
        time.sleep(0.1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    deadline = time.monotonic() + 10
    while relay.log_text().count("client disconnected mid-body") == before:
        if time.monotonic() > deadline:
            break
        time.sleep(0.05)
    lines = [
        line for line in relay.log_lines() if line.get("reason") == "client disconnected mid-body"
    ]
    level = lines[-1]["level"] if lines else "none"
    tracebacks = relay.log_text().count("Traceback")
    figures.add(
        "a client disconnecting mid-body",
        f"one `{level}` line, {tracebacks} tracebacks",
        as_specified=level == "info" and tracebacks == 0,
    )


def probe_refusals_logged(relay: EdgeRelay, figures: EdgeFigures) -> None:
    big = b"x" * (relay.max_body_bytes + 1)
    exchange(relay.port, head(signed(big), length=len(big)))
    body = job_body()
    with socket.create_connection(("127.0.0.1", relay.port), timeout=30) as sock:
        # Part of the body, then nothing: 408 at the read timeout.
        sock.sendall(head(signed(body), length=len(body)) + body[:10])
        read_answer(sock, time.monotonic())
    logged = [line.get("http_status") for line in relay.log_lines()]
    counted = (relay.metric("too_large"), relay.metric("timeout"))
    figures.add(
        "413 and 408 refusals",
        f"counted ({counted[0]:.0f} `too_large`, {counted[1]:.0f} `timeout`) "
        f"and logged ({logged.count(413)} / {logged.count(408)} lines)",
        as_specified=min(counted) >= 1 and 413 in logged and 408 in logged,
    )


def probe_flood(relay: EdgeRelay, figures: EdgeFigures, *, requests: int) -> None:
    """Bad signatures as fast as 8 senders go: how much log that writes."""
    body = job_body()
    size_before = relay.log_path.stat().st_size
    lines_before = len(relay.log_lines())

    def forge(_: int) -> int:
        headers = signed(body) | {"webhook-signature": "v1," + base64.b64encode(bytes(32)).decode()}
        return exchange(relay.port, head(headers, length=len(body)) + body).status

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=8) as pool:
        statuses = list(pool.map(forge, range(requests)))
    seconds = time.monotonic() - started
    time.sleep(1.5)  # the count of suppressed lines is written once a second
    new = relay.log_lines()[lines_before:]
    written = [line for line in new if line["event"] == "webhook rejected"]
    suppressed = sum(line.get("suppressed", 0) for line in new)
    kib = (relay.log_path.stat().st_size - size_before) / 1024
    figures.add(
        "bad-signature flood",
        f"{requests:,} in {seconds:.1f} s (all 401: {set(statuses) == {401}}): "
        f"{len(written)} lines + {suppressed:,} counted as suppressed, {kib:.0f} KiB of log",
        as_specified=set(statuses) == {401} and len(written) + suppressed == requests,
    )


def probe_idle_connections(workdir: Path, figures: EdgeFigures, *, idle: int) -> None:
    """`idle` idle connections against the default soft file limit, then the unit's."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < idle + 64:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, idle + 256), hard))
    # The unit asks for 65,536; a process can go no higher than its hard limit.
    for limit in (DEFAULT_FILE_LIMIT, min(UNIT_FILE_LIMIT, hard)):
        relay = EdgeRelay(workdir / f"idle-{limit}", file_limit=limit, read_timeout_seconds=10.0)
        try:
            waited, errors, suppressed = _genuine_after_idle(relay, idle)
        finally:
            relay.stop()
        figures.add(
            f"{idle:,} idle connections, file limit {limit:,}",
            f"a genuine webhook answered after {waited:.2f} s; "
            f"{errors} `accept()` error lines + {suppressed:,} counted as suppressed",
            as_specified=waited < 15 and errors <= 6 * (waited + 2),
        )


def _genuine_after_idle(relay: EdgeRelay, idle: int) -> tuple[float, int, int]:
    held = [socket.create_connection(("127.0.0.1", relay.port)) for _ in range(idle)]
    try:
        body = job_body()
        answer = exchange(relay.port, head(signed(body), length=len(body)) + body)
    finally:
        for sock in held:
            sock.close()
    time.sleep(1.5)
    lines = relay.log_lines()
    errors = sum(line["event"].startswith("cannot accept connections") for line in lines)
    suppressed = sum(line.get("suppressed", 0) for line in lines if line.get("kind") == "accept")
    return answer.seconds if answer.status == 202 else float("inf"), errors, suppressed


def run_edge(workdir: Path, *, flood_requests: int, idle_connections: int) -> EdgeFigures:
    """Every ingress row of issue 13, measured against fresh relays."""
    started = time.monotonic()
    figures = EdgeFigures(flood_requests=flood_requests, idle_connections=idle_connections)
    relay = EdgeRelay(workdir / "edge")
    try:
        for probe in (probe_encodings, probe_signatures, probe_expect, probe_framing):
            probe(relay, figures)
        probe_refusals_logged(relay, figures)
        probe_flood(relay, figures, requests=flood_requests)
    finally:
        relay.stop()
    if idle_connections:
        probe_idle_connections(workdir, figures, idle=idle_connections)
    probe_nginx(workdir / "nginx", figures)
    figures.seconds = time.monotonic() - started
    return figures


def probe_nginx(workdir: Path, figures: EdgeFigures) -> None:
    """The README's nginx recipe in front of a relay with its default body limit."""
    finding = "behind nginx (the README's recipe)"
    if find_program("nginx") is None:
        figures.add(finding, "not measured: nginx is not installed", as_specified=True)
        return
    relay = EdgeRelay(workdir, trusted_proxies=["127.0.0.1"], max_body_bytes=1_048_576)
    proxy = Workdir()
    try:
        process, port = start_recipe("nginx", proxy, relay.port)
        try:
            body = job_body()
            headers = signed(body, "msg_edge_nginx") | {"X-Forwarded-For": "203.0.113.66"}
            send = {"cafile": proxy.ca.cert_file, "source": CLIENT}
            accepted = tls_exchange(port, head(headers, length=len(body)) + body, **send)
            client = relay.event("msg_edge_nginx").get("client_address")
            big = b"x" * (relay.max_body_bytes + 512 * 1024)
            too_large = tls_exchange(port, head(signed(big), length=len(big)) + big, **send)
        finally:
            stop_proxy(process)
    finally:
        proxy.remove()
        relay.stop()
    figures.add(
        finding,
        f"signed webhook {accepted}; `client_address` {client} (sent from {CLIENT} with a "
        f"forged `X-Forwarded-For`); 1.5 MiB body: the relay's {too_large}",
        as_specified=accepted.status == 202
        and client == CLIENT
        and (too_large.status, too_large.document.get("status")) == (413, "too_large"),
    )
