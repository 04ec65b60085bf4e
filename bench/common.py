"""Shared machinery: processes on 127.0.0.1, signed requests, wrk, senders, samplers."""

from __future__ import annotations

import atexit
import base64
import contextlib
import ctypes
import json
import math
import os
import select
import shutil
import socket
import sqlite3
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import tomli_w

from pulse_relay.ingress.signature import sign_headers

SECRET = "whsec_" + base64.b64encode(b"pulse-relay-bench-secret-32bytes").decode()
API_KEY = "bench-api-key"
WEBHOOK_PATH = "/webhooks/pulse"
BENCH_DIR = Path(__file__).resolve().parent
PYTHON = sys.executable


@dataclass(frozen=True)
class SignedRequest:
    """One pre-signed webhook: its id, the three headers and the raw body."""

    webhook_id: str
    headers: dict[str, str]
    body: bytes


def make_body(event_type: str, job_id: str) -> bytes:
    """A Pulse-shaped webhook payload."""
    payload = {
        "type": event_type,
        "timestamp": "2026-01-01T00:00:00.000000Z",
        "data": {"job_id": job_id, "status": event_type.removeprefix("job.")},
    }
    return json.dumps(payload, separators=(",", ":")).encode()


def signed_requests(
    prefix: str,
    count: int,
    *,
    event_type: str = "job.completed",
    job_prefix: str | None = None,
    start: int = 0,
) -> list[SignedRequest]:
    """`count` requests with unique ids `{prefix}{n}`, each for job `{job_prefix}{n}`."""
    jobs = prefix if job_prefix is None else job_prefix
    now = int(time.time())
    out: list[SignedRequest] = []
    for number in range(start, start + count):
        webhook_id = f"{prefix}{number}"
        body = make_body(event_type, f"{jobs}{number}")
        out.append(
            SignedRequest(webhook_id, sign_headers(SECRET, webhook_id, body, timestamp=now), body)
        )
    return out


def write_requests_file(path: Path, requests: Iterable[SignedRequest]) -> Path:
    """One request a line (id, timestamp, signature, body; tab-separated) for the wrk script."""
    with path.open("wb") as handle:
        for request in requests:
            headers = request.headers
            line = "\t".join(
                (request.webhook_id, headers["webhook-timestamp"], headers["webhook-signature"])
            )
            handle.write(line.encode() + b"\t" + request.body + b"\n")
    return path


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_http(
    url: str, *, timeout_seconds: float = 20.0, process: subprocess.Popen[bytes] | None = None
) -> None:
    """Poll `url` until it answers, or fail (early when `process` died)."""
    deadline = time.monotonic() + timeout_seconds
    while True:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode} before {url} answered")
        try:
            with urllib.request.urlopen(url, timeout=1.0):
                return
        except urllib.error.HTTPError:
            return  # any HTTP answer means the server is up
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{url} did not answer within {timeout_seconds} s") from None
            time.sleep(0.05)


class Process:
    """A child process on 127.0.0.1 that is always terminated on exit."""

    def __init__(
        self,
        argv: Sequence[str],
        *,
        log_path: Path,
        health_url: str,
        cwd: Path | None = None,
        start_timeout_seconds: float = 20.0,
    ) -> None:
        self.argv = list(argv)
        self.log_path = log_path
        self.health_url = health_url
        self.cwd = cwd
        self.start_timeout_seconds = start_timeout_seconds
        self.popen: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    @property
    def is_running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def start(self) -> Process:
        log = self.log_path.open("ab")
        self.popen = subprocess.Popen(self.argv, stdout=log, stderr=log, cwd=self.cwd)
        log.close()
        try:
            wait_http(
                self.health_url, timeout_seconds=self.start_timeout_seconds, process=self.popen
            )
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self, *, timeout_seconds: float = 30.0) -> int | None:
        """SIGTERM and wait; SIGKILL past the timeout. The exit code, None if it was killed."""
        popen, self.popen = self.popen, None
        if popen is None or popen.poll() is not None:
            return None if popen is None else popen.returncode
        popen.terminate()
        try:
            return popen.wait(timeout=timeout_seconds)
        except subprocess.TimeoutExpired:
            popen.kill()
            popen.wait()
            return None

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs at all."""
        popen, self.popen = self.popen, None
        if popen is not None and popen.poll() is None:
            popen.kill()
            popen.wait()

    def __enter__(self) -> Process:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def baseline_process(workdir: Path) -> tuple[Process, int]:
    port = free_port()
    process = Process(
        [PYTHON, "-m", "bench.baseline", str(port)],
        log_path=workdir / "baseline.log",
        health_url=f"http://127.0.0.1:{port}/healthz",
        cwd=BENCH_DIR.parent,
    )
    return process, port


def minimal_process(
    workdir: Path, *, log_line: bool = False, relay_work: bool = False, postgres: str | None = None
) -> tuple[Process, int]:
    """The second baseline (bench/minimal.py) on a fresh store in `workdir`; with `log_line`,
    writing the relay's line per accepted webhook too; with `relay_work`, doing the relay's
    work per webhook in the least code (the line, the relay's row, its deliveries), and with
    `postgres` too, committing them to that database instead."""
    port = free_port()
    store = workdir / f"minimal-{port}.db"
    mode = "relay-work" if relay_work else "log-line" if log_line else ""
    process = Process(
        [PYTHON, "-m", "bench.minimal", str(port), SECRET, str(store)]
        + ([f"--{mode}"] if mode else [])
        + (["--postgres", postgres] if postgres else []),
        log_path=workdir
        / (f"minimal-{mode}{'-pg' if postgres else ''}.log" if mode else "minimal.log"),
        health_url=f"http://127.0.0.1:{port}/healthz",
        cwd=BENCH_DIR.parent,
    )
    return process, port


def emulator_process(workdir: Path, prefix: str, count: int) -> tuple[Process, str]:
    port = free_port()
    process = Process(
        [PYTHON, "-m", "bench.emulator_proc", str(port), API_KEY, prefix, str(count)],
        log_path=workdir / "emulator.log",
        health_url=f"http://127.0.0.1:{port}/job/{prefix}0",
        cwd=BENCH_DIR.parent,
    )
    return process, f"http://127.0.0.1:{port}"


def write_toml(path: Path, document: dict[str, Any]) -> Path:
    """Write `document` as TOML (paths as strings) and return `path`."""
    path.write_text(tomli_w.dumps(_plain(document)))
    return path


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return str(value) if isinstance(value, Path) else value


@dataclass
class RelayConfig:
    """What a scenario varies in the relay's configuration."""

    sinks: list[dict[str, Any]] = field(default_factory=list)
    pulse_base_url: str | None = None
    fetch_on: list[str] | None = None
    synchronous: str = "FULL"
    delivery_concurrency: int = 16
    # The product's default is info (one line per accepted webhook, docs/metrics.md, logs);
    # scenarios that measure something else than ingest keep the quieter level.
    log_level: str = "warning"
    # A PostgreSQL URL puts the store there instead of the SQLite file in the workdir.
    store_url: str | None = None
    lease_seconds: float | None = None


def relay_process(
    workdir: Path, config: RelayConfig, *, store_path: Path | None = None
) -> tuple[Process, int, Path]:
    """`pulse-relay serve` with a generated config in `workdir`; returns (process, port, store)."""
    port = free_port()
    store = store_path or workdir / "relay.db"
    pulse: dict[str, Any] = {
        "api_key": API_KEY,
        "base_url": config.pulse_base_url or "http://127.0.0.1:9",
        "timeout_seconds": 10.0,
    }
    if config.fetch_on is not None:
        pulse["fetch_on"] = config.fetch_on
    document = {
        "server": {"host": "127.0.0.1", "port": port},
        "admin": {"port": 0},
        # Requests are signed just before each run; a wide window only lets a long run
        # finish with the timestamps it started with. Verification costs the same.
        "verify": {"secrets": [SECRET], "tolerance_seconds": 3600},
        "store": {"url": config.store_url}
        if config.store_url
        else {"path": store, "synchronous": config.synchronous},
        "pulse": pulse,
        "delivery": {"concurrency": config.delivery_concurrency}
        | ({"lease_seconds": config.lease_seconds} if config.lease_seconds else {}),
        "log": {"level": config.log_level, "format": "json"},
        "sinks": config.sinks,
    }
    config_path = write_toml(workdir / "relay.toml", document)
    process = Process(
        [PYTHON, "-m", "pulse_relay", "--config", str(config_path), "serve"],
        log_path=workdir / "relay.log",
        health_url=f"http://127.0.0.1:{port}/healthz",
        cwd=workdir,
    )
    return process, port, store


# -- samplers ------------------------------------------------------------------------


def rss_kib(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of `pid` in KiB."""
    fields: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0])
    return fields["VmRSS"], fields["VmHWM"]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of every thread of `pid` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def query_one(store: Path, sql: str) -> Any:
    """One value read from the relay's store by a separate (WAL reader) connection."""
    with contextlib.closing(sqlite3.connect(f"file:{store}?mode=ro", uri=True, timeout=10)) as db:
        row = db.execute(sql).fetchone()
        return row[0] if row else None


def pending_deliveries(store: Path) -> int:
    return int(query_one(store, "SELECT count(*) FROM deliveries WHERE state = 'pending'"))


DELIVERED_SQL = "SELECT count(*) FROM deliveries WHERE state = 'delivered'"


def delivered_count(store: Path) -> int:
    return int(query_one(store, DELIVERED_SQL))


def delivered_count_pg(url: str) -> int:
    """`delivered_count` of a store on PostgreSQL."""
    return int(pg_query(url, DELIVERED_SQL)[0][0])


def wait_until(predicate: Any, *, timeout_seconds: float, interval_seconds: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval_seconds)
    return bool(predicate())


class RenameWatcher:
    """Records when each file is renamed into a directory (inotify IN_MOVED_TO), in ns."""

    _IN_MOVED_TO = 0x00000080
    _HEADER = struct.Struct("iIII")

    def __init__(self, directory: Path) -> None:
        self.times: dict[str, int] = {}
        self._libc = ctypes.CDLL("libc.so.6", use_errno=True)
        self._fd = self._libc.inotify_init1(os.O_NONBLOCK)
        if self._fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")
        if self._libc.inotify_add_watch(self._fd, str(directory).encode(), self._IN_MOVED_TO) < 0:
            raise OSError(ctypes.get_errno(), "inotify_add_watch")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            ready, _, _ = select.select([self._fd], [], [], 0.1)
            if not ready:
                continue
            seen_ns = time.time_ns()
            try:
                data = os.read(self._fd, 1 << 16)
            except BlockingIOError:
                continue
            offset = 0
            while offset < len(data):
                _, _, _, length = self._HEADER.unpack_from(data, offset)
                offset += self._HEADER.size
                name = data[offset : offset + length].rstrip(b"\0").decode()
                offset += length
                self.times.setdefault(name, seen_ns)

    def __enter__(self) -> RenameWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()
        os.close(self._fd)


# -- small helpers -------------------------------------------------------------------


def median(values: Iterable[float]) -> float:
    return float(statistics.median(list(values)))


def percentile(values: Iterable[float], fraction: float) -> float:
    """The nearest-rank percentile: the smallest value with `fraction` of all values ≤ it.

    Always a measured value (never interpolated): p50 of [1, 2, 3, 4] is 2, p99 of 100
    values is the 99th smallest, p100 the largest. NaN when there are no values.
    """
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    # Rounded first so that 0.07 * 100 (7.000000000000001) is rank 7, not 8.
    rank = math.ceil(round(fraction * len(ordered), 9))
    return ordered[min(len(ordered), max(rank, 1)) - 1]


@contextlib.contextmanager
def workdir(name: str) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix=f"pulse-relay-bench-{name}-"))
    try:
        yield path
    finally:
        if os.environ.get("BENCH_KEEP") != "1":
            shutil.rmtree(path, ignore_errors=True)


def metric_value(admin_port: int, name: str, labels: str = "") -> float:
    """One sample from the relay's /metrics on its admin port (0 when absent)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/metrics", timeout=5) as answer:
        text = answer.read().decode()
    wanted = name + ("{" + labels + "}" if labels else "")
    for line in text.splitlines():
        if line.startswith(wanted + " "):
            return float(line.split()[-1])
    return 0.0


# -- PostgreSQL ------------------------------------------------------------------------

# A server named here is used as it is; otherwise the first scenario that needs one
# starts a throwaway server with fsync on (bench/pg_server.py), stopped at exit.
NAMED_POSTGRES_VARIABLE = "BENCH_POSTGRES_ADMIN_URL"
_servers = contextlib.ExitStack()
_started: list[Any] = []


def postgres_admin_url() -> str:
    """The admin URL of the server the scenarios use (started on first use if none is named)."""
    named = os.environ.get(NAMED_POSTGRES_VARIABLE)
    if named:
        return named
    if not _started:
        from bench.pg_server import installed, started_server

        if not installed():
            raise SystemExit("PostgreSQL 15 is not installed: apt-get install postgresql")
        _started.append(_servers.enter_context(started_server("bench", durable=True)))
        atexit.register(_servers.close)
    return str(_started[0].admin_url)


def postgres_server_pids() -> list[int] | None:
    """Every process of the started server (postmaster first), or None for a named one."""
    if not _started:
        return None
    datadir = Path(_started[0].datadir)
    postmaster = int((datadir / "postmaster.pid").read_text().split()[0])
    children = Path(f"/proc/{postmaster}/task/{postmaster}/children").read_text().split()
    return [postmaster, *(int(pid) for pid in children)]


def counted_server_pids(url: str | None) -> list[int]:
    """The server processes whose CPU a run on the database at `url` is charged: every
    process of the server the benchmark started (its WAL writer too), or, on a named
    server, the backends serving that database; none for SQLite (`url` None)."""
    if url is None:
        return []
    started = postgres_server_pids()
    return pg_backend_pids(url) if started is None else started


def server_cpu_seconds(pids: list[int]) -> float:
    """CPU seconds of the server's processes, with those of its exited children (which
    the postmaster has reaped: /proc's cutime and cstime)."""
    total = 0.0
    ticks = os.sysconf("SC_CLK_TCK")
    for index, pid in enumerate(pids):
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            used = int(fields[11]) + int(fields[12])
            if index == 0:
                used += int(fields[13]) + int(fields[14])
            total += used / ticks
    return total


@contextlib.contextmanager
def postgres_database() -> Iterator[str]:
    """A fresh database `pulse_relay_bench_<random>` on the server, dropped after."""
    admin_url = postgres_admin_url()
    name = f"pulse_relay_bench_{os.urandom(6).hex()}"
    with psycopg.connect(admin_url, autocommit=True, connect_timeout=5) as admin:
        admin.execute(f"CREATE DATABASE {name}".encode())
    try:
        yield admin_url.rsplit("/", 1)[0] + "/" + name
    finally:
        with psycopg.connect(admin_url, autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)".encode())


def pg_query(url: str, sql: str) -> list[tuple[Any, ...]]:
    """Every row of one read on the database at `url`."""
    with psycopg.connect(url, autocommit=True) as conn:
        return list(conn.execute(sql.encode()).fetchall())


def pg_backend_pids(url: str) -> list[int]:
    """The server processes serving other connections to this database (the relays')."""
    rows = pg_query(
        url,
        "SELECT pid FROM pg_stat_activity "
        "WHERE datname = current_database() AND pid <> pg_backend_pid()",
    )
    return [int(row[0]) for row in rows]


def cpu_seconds_of(pids: Iterable[int]) -> dict[int, float]:
    """CPU seconds so far of each process still readable in /proc (others are left out)."""
    found: dict[int, float] = {}
    for pid in pids:
        with contextlib.suppress(OSError):
            found[pid] = cpu_seconds(pid)
    return found


def kill_with_children(process: Process) -> float:
    """SIGKILL the process and the process groups its children lead (its sink commands),
    as a container or a systemd unit going down takes them all; the time.time() after."""
    import signal

    children: list[int] = []
    for task in Path(f"/proc/{process.pid}/task").iterdir():
        with contextlib.suppress(OSError):
            children += [int(pid) for pid in (task / "children").read_text().split()]
    process.kill()
    for child in children:
        with contextlib.suppress(OSError):
            os.killpg(child, signal.SIGKILL)
    return time.time()
