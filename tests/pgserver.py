"""A throwaway PostgreSQL 15 server the tests may stop and start at will.

The shared test server (tests/postgres.py) serves everyone and must stay up; an
outage test runs its own: initdb in a fresh folder, a free port, a socket in
that folder, stopped at teardown whatever happened.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tests.helpers import free_port

BIN_DIR = Path(os.environ.get("TEST_POSTGRES_BIN_DIR", "/usr/lib/postgresql/15/bin"))
COMMAND_TIMEOUT_SECONDS = 30
ROLE = "relay"


def _as_owner(argv: list[str]) -> list[str]:
    # initdb and postgres refuse to run as root: as root, run them as "postgres".
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *argv]
    return argv


class ThrowawayPostgres:
    """One PostgreSQL server in its own folder: init() once, then stop/start freely."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.data_dir = root / "data"
        self.port = free_port()
        self.url = f"postgresql://{ROLE}:{ROLE}@127.0.0.1:{self.port}/{ROLE}"

    def _run(self, *argv: str) -> None:
        subprocess.run(
            _as_owner([str(BIN_DIR / argv[0]), *argv[1:]]),
            check=True,
            capture_output=True,
            timeout=COMMAND_TIMEOUT_SECONDS,
        )

    def init(self) -> None:
        """Create the cluster, start it, and create the relay's role and database."""
        self._run("initdb", "-D", str(self.data_dir), "-A", "trust", "-U", "postgres", "--no-sync")
        self.start()
        admin_url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        with psycopg.connect(admin_url, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f"CREATE ROLE {ROLE} LOGIN PASSWORD '{ROLE}'".encode())
            conn.execute(f"CREATE DATABASE {ROLE} OWNER {ROLE}".encode())

    def start(self) -> None:
        """Start the server; returns once it accepts connections."""
        # fsync off: a stopped server loses nothing (the OS keeps its writes); it
        # spares a shared machine's disk, and no test here crashes the machine.
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        log = str(self.root / "server.log")
        timeout = str(COMMAND_TIMEOUT_SECONDS)
        self._run(
            "pg_ctl",
            "-D",
            str(self.data_dir),
            "-o",
            options,
            "-l",
            log,
            "-w",
            "-t",
            timeout,
            "start",
        )

    def stop(self, mode: str = "fast") -> None:
        """Stop the server: "fast" (clients disconnected, clean) or "immediate" (a crash)."""
        self._run("pg_ctl", "-D", str(self.data_dir), "-m", mode, "-w", "stop")

    def is_running(self) -> bool:
        return (self.data_dir / "postmaster.pid").exists()


@pytest.fixture
def throwaway_postgres() -> Iterator[ThrowawayPostgres]:
    """A fresh server of its own (skipped without the binaries, except under CI)."""
    if not (BIN_DIR / "initdb").exists():
        if os.environ.get("CI"):
            raise AssertionError(f"no PostgreSQL binaries in {BIN_DIR}")
        pytest.skip(f"no PostgreSQL binaries in {BIN_DIR} (TEST_POSTGRES_BIN_DIR)")
    # Not under pytest's tmp_path: its parents are private to root, and the server
    # runs as "postgres".
    root = Path(tempfile.mkdtemp(prefix="pulse-relay-pg-"))
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
    server = ThrowawayPostgres(root)
    try:
        server.init()
        yield server
    finally:
        if server.is_running():
            server.stop("immediate")
        shutil.rmtree(root, ignore_errors=True)
