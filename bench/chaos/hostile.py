"""Hostile input against a running relay: fuzzing, slow clients, duplicate ids, disk full."""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import random
import shutil
import socket
import sqlite3
import subprocess
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.chaos.admin import AdminFigures
from bench.chaos.at_rest import AtRestFigures
from bench.chaos.edge import EdgeFigures
from bench.chaos.outcome import integrity
from bench.common import PYTHON, SECRET, WEBHOOK_PATH, Process, free_port, write_toml
from pulse_relay.ingress.signature import sign_headers

# Bodies of requests the fuzzing relay accepts, in bytes (small: the fuzz bodies are too).
FUZZ_MAX_BODY_BYTES = 65536
HEADER_NAMES = (
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
    "svix-id",
    "svix-timestamp",
    "svix-signature",
    "content-type",
    "x-anything",
)
FORGERIES = ("other-secret", "stale", "body-changed", "id-changed", "malformed")
OTHER_SECRET = "whsec_" + base64.b64encode(b"not-the-relay-secret-0123456789").decode()


class SyncRelay:
    """`pulse-relay serve` as a subprocess for the synchronous hostile-input probes."""

    path = WEBHOOK_PATH

    def __init__(self, workdir: Path, *, store_path: Path | None = None, read_timeout: float = 1.0):
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        # /readyz lives on the admin listener.
        self.admin_port = free_port()
        self.store_path = store_path or workdir / "relay.db"
        document = {
            "server": {
                "host": "127.0.0.1",
                "port": self.port,
                "read_timeout_seconds": read_timeout,
                "max_body_bytes": FUZZ_MAX_BODY_BYTES,
            },
            "admin": {"port": self.admin_port},
            "verify": {"secrets": [SECRET]},
            "store": {"path": self.store_path, "busy_timeout_seconds": 1.0},
            "log": {"format": "json", "level": "error"},
        }
        config = write_toml(workdir / "relay.toml", document)
        self._process = Process(
            [PYTHON, "-m", "pulse_relay", "--config", str(config), "serve"],
            log_path=workdir / "relay.log",
            # The admin listener is bound last: once it answers, both do.
            health_url=f"http://127.0.0.1:{self.admin_port}/healthz",
            start_timeout_seconds=30.0,
        ).start()

    def stop(self) -> int | None:
        """SIGTERM, wait; returns the exit code (None if it had to be killed)."""
        return self._process.stop(timeout_seconds=20)

    def is_alive(self) -> bool:
        return self._process.is_running

    def post(
        self, body: bytes, headers: dict[str, str], *, timeout: float = 10.0
    ) -> tuple[int, dict[str, Any]]:
        """One POST on a fresh connection; (status, JSON answer or {})."""
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            connection.request("POST", self.path, body=body, headers=headers)
            response = connection.getresponse()
            raw = response.read()
        finally:
            connection.close()
        try:
            answer = json.loads(raw)
        except ValueError:
            answer = {}
        return response.status, answer if isinstance(answer, dict) else {}

    def stored_ids(self) -> set[str]:
        connect = sqlite3.connect(f"file:{self.store_path}?mode=ro", uri=True, timeout=30)
        with contextlib.closing(connect) as db:
            return {row[0] for row in db.execute("SELECT id FROM events")}


def signed_post(relay: SyncRelay, event_id: str, *, job_id: str | None = None) -> int:
    """POST a validly signed job.completed event; returns the HTTP status."""
    body = json.dumps(
        {"type": "job.completed", "data": {"job_id": job_id or "job-x", "status": "completed"}}
    ).encode()
    headers = {**sign_headers(SECRET, event_id, body), "content-type": "application/json"}
    return relay.post(body, headers)[0]


# -- fuzzing ----------------------------------------------------------------------------


def hostile_requests() -> Any:
    """A hypothesis strategy of (headers, body) pairs no genuine sender would produce."""
    from hypothesis import strategies as st

    header_text = st.text(
        st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=0, max_size=80
    )
    arbitrary = st.tuples(
        st.dictionaries(st.sampled_from(HEADER_NAMES), header_text, max_size=6), _bodies()
    )
    forged = st.tuples(
        _bodies(),
        st.sampled_from(FORGERIES),
        st.text(min_size=1, max_size=30),
        st.integers(min_value=301, max_value=10**9),
        st.binary(max_size=8),
    ).map(_forge)
    return st.one_of(arbitrary, forged)


def _bodies() -> Any:
    """Arbitrary bytes, or arbitrary JSON."""
    from hypothesis import strategies as st

    json_values = st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=20),
        lambda inner: (
            st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
        ),
        max_leaves=12,
    )
    return st.one_of(
        st.binary(max_size=2048), st.builds(lambda v: json.dumps(v).encode(), json_values)
    )


def _forge(args: tuple[bytes, str, str, int, bytes]) -> tuple[dict[str, str], bytes]:
    """A request signed, then spoiled in the way `mode` names (one of `FORGERIES`)."""
    body, mode, event_id, skew, junk = args
    safe_id = "msg_" + "".join(c for c in event_id if c.isascii() and c.isalnum())[:40]
    if mode == "other-secret":
        return sign_headers(OTHER_SECRET, safe_id, body), body
    if mode == "stale":
        return sign_headers(SECRET, safe_id, body, timestamp=int(time.time()) - skew), body
    headers = sign_headers(SECRET, safe_id, body)
    if mode == "body-changed":
        return headers, body + junk + b" "
    if mode == "id-changed":
        return {**headers, "webhook-id": safe_id + "x"}, body
    # Malformed entries beside a well-formed but wrong one (beside a matching one they
    # would be accepted, as the reference libraries accept them).
    wrong = "v1," + base64.b64encode(bytes(32)).decode()
    return {**headers, "webhook-signature": f"v1 v1,AAAA {wrong}"}, body


def fuzz(relay: SyncRelay, examples: int, statuses: Counter[int], *, seed: int = 0) -> None:
    """Send `examples` hostile requests; raise AssertionError at the first breach of contract."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import seed as hypothesis_seed

    @hypothesis_seed(seed)
    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(hostile_requests())
    def probe(request: tuple[dict[str, str], bytes]) -> None:
        headers, body = request
        status, _ = relay.post(body, headers)
        statuses[status] += 1
        assert status < 500 or status == 503, f"HTTP {status} for {headers!r}"
        assert not 200 <= status < 300, f"accepted without a valid signature: {headers!r}"
        assert relay.is_alive(), "the relay died"

    probe()


# -- slow clients -------------------------------------------------------------------------


def trickle(
    port: int, data: bytes, *, prefix: bytes = b"", delay_seconds: float, limit_seconds: float
) -> tuple[float, bytes]:
    """Send `prefix` at once, then `data` one byte at a time; (seconds until the server
    answered or closed the connection, what it answered)."""
    began = time.monotonic()
    answer = b""
    with socket.create_connection(("127.0.0.1", port), timeout=limit_seconds) as sock:
        if prefix:
            sock.sendall(prefix)
        sock.setblocking(False)
        for byte in data:
            if time.monotonic() - began > limit_seconds:
                break
            try:
                sock.send(bytes([byte]))
                time.sleep(delay_seconds)
                chunk = sock.recv(4096)
            except BlockingIOError:
                continue
            except OSError:
                return time.monotonic() - began, answer
            # An answer, or b"" when the server closed the connection.
            return time.monotonic() - began, chunk
        sock.setblocking(True)
        sock.settimeout(max(0.1, limit_seconds - (time.monotonic() - began)))
        with contextlib.suppress(OSError):
            answer = sock.recv(4096)
    return time.monotonic() - began, answer


@dataclass
class SlowClientFigures:
    """How slow clients were cut off while others were served."""

    header_cutoff_seconds: list[float] = field(default_factory=list)
    body_cutoff_seconds: list[float] = field(default_factory=list)
    body_statuses: Counter[str] = field(default_factory=Counter)
    header_answers: Counter[str] = field(default_factory=Counter)
    other_latencies_ms: list[float] = field(default_factory=list)
    other_statuses: Counter[int] = field(default_factory=Counter)


def _status_word(answer: bytes) -> str:
    """The status code of an HTTP answer, or "closed" when there was none."""
    return answer.split(b" ", 2)[1].decode() if answer else "closed"


def slow_clients(
    relay: SyncRelay, *, clients: int, others: int, read_timeout: float
) -> SlowClientFigures:
    """Trickle headers and bodies on `clients` connections each while `others` requests run."""
    figures = SlowClientFigures()
    body = json.dumps({"type": "job.completed", "data": {"job_id": "slow"}}).encode()
    head = (
        f"POST {relay.path} HTTP/1.1\r\nHost: 127.0.0.1\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\n"
    ).encode()
    limit = read_timeout * 4 + 2
    padded_head = head + b"x-pad: " + b"a" * 400
    with ThreadPoolExecutor(max_workers=2 * clients + 1) as pool:
        header_jobs = [
            pool.submit(trickle, relay.port, padded_head, delay_seconds=0.05, limit_seconds=limit)
            for _ in range(clients)
        ]
        body_jobs = [pool.submit(_trickle_body, relay, head, body, limit) for _ in range(clients)]
        time.sleep(0.2)  # let the slow clients connect first
        for n in range(others):
            began = time.perf_counter()
            status = signed_post(relay, f"msg_other_{n}_{time.time_ns()}")
            figures.other_latencies_ms.append((time.perf_counter() - began) * 1000)
            figures.other_statuses[status] += 1
            time.sleep(0.02)
        for job in header_jobs:
            seconds, answer = job.result()
            figures.header_cutoff_seconds.append(seconds)
            figures.header_answers[_status_word(answer)] += 1
        for job in body_jobs:
            seconds, answer = job.result()
            figures.body_cutoff_seconds.append(seconds)
            figures.body_statuses[_status_word(answer)] += 1
    return figures


def _trickle_body(relay: SyncRelay, head: bytes, body: bytes, limit: float) -> tuple[float, bytes]:
    headers = sign_headers(SECRET, f"msg_slow_{time.time_ns()}", body)
    full_head = head + "".join(f"{k}: {v}\r\n" for k, v in headers.items()).encode() + b"\r\n"
    return trickle(relay.port, body, prefix=full_head, delay_seconds=0.05, limit_seconds=limit)


# -- duplicate ids ------------------------------------------------------------------------


@dataclass
class DuplicateFigures:
    """Requests sent with repeated ids, and what was stored."""

    requests: int = 0
    unique_ids: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    stored: int = 0
    seconds: float = 0.0


def duplicate_ids(
    relay: SyncRelay, *, requests: int, duplicate_rate: float, threads: int = 8, seed: int = 0
) -> DuplicateFigures:
    """`requests` signed POSTs with random ids, `duplicate_rate` of them repeating an id."""
    rng = random.Random(seed)
    duplicates = round(requests * duplicate_rate)
    unique = [
        f"msg_{uuid.UUID(int=rng.getrandbits(128)).hex}" for _ in range(requests - duplicates)
    ]
    ids = unique + [rng.choice(unique) for _ in range(duplicates)]
    rng.shuffle(ids)
    figures = DuplicateFigures(requests=requests, unique_ids=len(unique))
    lock = threading.Lock()
    before = len(relay.stored_ids())

    def worker(share: list[str]) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", relay.port, timeout=30)
        try:
            for n, event_id in enumerate(share):
                body = json.dumps(
                    {"type": "job.completed", "data": {"job_id": f"dup-{event_id[-12:]}-{n}"}}
                ).encode()
                headers = {**sign_headers(SECRET, event_id, body), "content-type": "x/json"}
                connection.request("POST", relay.path, body=body, headers=headers)
                response = connection.getresponse()
                response.read()
                with lock:
                    figures.statuses[response.status] += 1
        finally:
            connection.close()

    began = time.monotonic()
    workers = [threading.Thread(target=worker, args=(ids[n::threads],)) for n in range(threads)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join()
    figures.seconds = time.monotonic() - began
    figures.stored = len(relay.stored_ids()) - before
    return figures


# -- disk full ----------------------------------------------------------------------------

# Events the disk-full probe sends before filling the disk, and new ones after freeing it.
DISK_EVENTS_BEFORE = 20
DISK_EVENTS_AFTER = 20
# Refusals (503) to collect while the disk is full before space is given back.
DISK_REFUSALS_WANTED = 20


@dataclass
class DiskFullFigures:
    """The disk-full probe: what the relay answered while full and after space returned."""

    method: str = ""
    acked_before: int = 0
    accepted_while_filling: int = 0
    unavailable: int = 0
    readyz_while_full: int = 0
    acked_after: int = 0
    statuses_after: Counter[int] = field(default_factory=Counter)
    lost: int = 0
    integrity: str = ""
    exit_code: int | None = None


def disk_full(workdir: Path, *, size_kib: int = 2048) -> DiskFullFigures | None:
    """A store on a small tmpfs: fill it, expect 503, free it, expect 202; None without mount."""
    mount_point = workdir / "small-fs"
    mount_point.mkdir(parents=True, exist_ok=True)
    mounted = _run(["mount", "-t", "tmpfs", "-o", f"size={size_kib}k", "tmpfs", str(mount_point)])
    if mounted != 0:
        return None
    figures = DiskFullFigures(method=f"tmpfs of {size_kib} KiB")
    relay = SyncRelay(workdir / "relay", store_path=mount_point / "relay.db")
    try:
        acked = _probe_full_disk(relay, mount_point / "filler", figures)
        figures.exit_code = relay.stop()
        figures.lost = len(acked - relay.stored_ids())
        figures.integrity = integrity(mount_point / "relay.db")
    finally:
        relay.stop()
        _run(["umount", str(mount_point)])
    return figures


def _probe_full_disk(relay: SyncRelay, filler: Path, figures: DiskFullFigures) -> set[str]:
    """Send, fill the disk, send until refused, free it, send again; the acknowledged ids."""
    acked: set[str] = set()
    for n in range(DISK_EVENTS_BEFORE):
        if signed_post(relay, f"msg_before_{n}", job_id=f"full-{n}") == 202:
            acked.add(f"msg_before_{n}")
    figures.acked_before = len(acked)
    _fill(filler)
    refused: list[str] = []
    for n in range(2000):
        event_id = f"msg_full_{n}"
        status = signed_post(relay, event_id, job_id=f"full-x{n}")
        if status == 202:
            acked.add(event_id)
            figures.accepted_while_filling += 1
        elif status == 503:
            refused.append(event_id)
            if len(refused) >= DISK_REFUSALS_WANTED:
                break
        else:
            raise AssertionError(f"HTTP {status} while the disk fills")
    figures.unavailable = len(refused)
    figures.readyz_while_full = _readyz_status(relay.admin_port)
    filler.unlink()
    # The sender retries what was refused, then sends new events.
    for event_id in [*refused, *(f"msg_after_{n}" for n in range(DISK_EVENTS_AFTER))]:
        status = signed_post(relay, event_id, job_id=f"after-{event_id}")
        figures.statuses_after[status] += 1
        if status == 202:
            acked.add(event_id)
            figures.acked_after += 1
    return acked


def _fill(filler: Path) -> None:
    """Write to `filler` until the file system is full to the last block."""
    with filler.open("wb") as stream, contextlib.suppress(OSError):
        while True:
            stream.write(b"\0" * 65536)
            stream.flush()
    with contextlib.suppress(OSError), filler.open("ab") as stream:
        while True:
            stream.write(b"\0" * 512)
            stream.flush()


def _readyz_status(admin_port: int) -> int:
    try:
        url = f"http://127.0.0.1:{admin_port}/readyz"
        with urllib.request.urlopen(url, timeout=10) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as error:
        return error.code


def _run(argv: list[str]) -> int:
    return subprocess.run(argv, capture_output=True, check=False).returncode


# -- all of it ----------------------------------------------------------------------------


@dataclass
class HostileFigures:
    """Everything `run_hostile` measured."""

    fuzz_examples: int = 0
    fuzz_statuses: Counter[int] = field(default_factory=Counter)
    fuzz_stored: int = 0
    slow: SlowClientFigures | None = None
    duplicates: DuplicateFigures | None = None
    disk: DiskFullFigures | None = None
    # Issue 13's ingress findings (bench/chaos/edge.py), measured after the rest.
    edge: EdgeFigures | None = None
    # Issue 20's admin-listener findings (bench/chaos/admin.py).
    admin: AdminFigures | None = None
    # What the relay leaves on disk and hands on (bench/chaos/at_rest.py).
    at_rest: AtRestFigures | None = None
    read_timeout_seconds: float = 1.0
    duplicate_rate: float = 0.1
    total_seconds: float = 0.0
    problems: list[str] = field(default_factory=list)


def run_hostile(
    workdir: Path, *, fuzz_examples: int, duplicate_requests: int, slow_clients_each: int
) -> HostileFigures:
    """Fuzz, slow clients, duplicate ids and disk full against fresh relays; figures + problems."""
    started = time.monotonic()
    figures = HostileFigures(fuzz_examples=fuzz_examples)
    # A store left by an earlier run would count its events as stored by this one.
    if workdir.exists():
        shutil.rmtree(workdir)
    relay = SyncRelay(workdir / "fuzz", read_timeout=figures.read_timeout_seconds)
    try:
        _fuzz_and_trickle(relay, figures, slow_clients_each)
    finally:
        relay.stop()
    relay = SyncRelay(workdir / "duplicates", read_timeout=5.0)
    try:
        dup = duplicate_ids(
            relay, requests=duplicate_requests, duplicate_rate=figures.duplicate_rate
        )
        figures.duplicates = dup
        if dup.stored != dup.unique_ids or dup.statuses[202] != dup.unique_ids:
            figures.problems.append(f"duplicates: stored {dup.stored} of {dup.unique_ids}")
    finally:
        relay.stop()
    figures.disk = disk = disk_full(workdir / "disk")
    if disk is not None and (disk.lost or not disk.unavailable or disk.integrity != "ok"):
        figures.problems.append(f"disk full: {disk}")
    figures.total_seconds = time.monotonic() - started
    return figures


def _fuzz_and_trickle(relay: SyncRelay, figures: HostileFigures, slow_clients_each: int) -> None:
    try:
        fuzz(relay, figures.fuzz_examples, figures.fuzz_statuses)
    except AssertionError as error:
        figures.problems.append(f"fuzz: {error}")
    figures.fuzz_stored = len(relay.stored_ids())
    if figures.fuzz_stored:
        figures.problems.append(f"fuzz: {figures.fuzz_stored} forged events stored")
    read_timeout = figures.read_timeout_seconds
    slow = slow_clients(relay, clients=slow_clients_each, others=100, read_timeout=read_timeout)
    figures.slow = slow
    if max(slow.header_cutoff_seconds + slow.body_cutoff_seconds) > read_timeout + 1.0:
        figures.problems.append("a slow client was not cut off at the read timeout")
    if set(slow.other_statuses) != {202} or set(slow.body_statuses) != {"408"}:
        figures.problems.append(f"slow clients: {slow.other_statuses} {slow.body_statuses}")
    if not relay.is_alive():
        figures.problems.append("the relay died")
