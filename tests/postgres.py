"""A real PostgreSQL for the tests: a throwaway server of their own, unless one is named.

With `TEST_POSTGRES_ADMIN_URL` set (a role that may create databases), the tests use
that server. Otherwise they start one server per run from the installed binaries
(`TEST_POSTGRES_BIN_DIR`, Debian's PostgreSQL 15 by default) on a free port, through
pytest-postgresql's executor, and stop it at the end; a server on 5432 is never used
unless named. Each test that asks for `postgres_url` gets a database of its own.

The outage tests stop and start a server under a live relay: `throwaway_postgres` is a
second server of the run, theirs alone.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Self

import psycopg
import pytest
from mirakuru import TCPExecutor
from mirakuru.exceptions import ProcessFinishedWithError
from psycopg.conninfo import conninfo_to_dict
from pytest_postgresql.executors import PostgreSQLExecutor
from pytest_postgresql.janitor import DatabaseJanitor

from tests.helpers import free_port, require_debian_package

ADMIN_URL_VARIABLE = "TEST_POSTGRES_ADMIN_URL"
BIN_DIR = Path(os.environ.get("TEST_POSTGRES_BIN_DIR", "/usr/lib/postgresql/15/bin"))
COMMAND_TIMEOUT_SECONDS = 30
SUPERUSER = "postgres"
# The outage tests' role and database: a URL with a password, to see it masked.
OUTAGE_ROLE = "relay"


class ThrowawayPostgres(PostgreSQLExecutor):
    """A server in a folder of its own; `stop(mode=...)` and `start()` at will."""

    @property
    def url(self) -> str:
        """The outage role's URL of its database (made by `throwaway_postgres`)."""
        return f"postgresql://{OUTAGE_ROLE}:{OUTAGE_ROLE}@{self.host}:{self.port}/{OUTAGE_ROLE}"

    @property
    def admin_url(self) -> str:
        """The superuser's URL of the server's maintenance database."""
        return f"postgresql://{SUPERUSER}@{self.host}:{self.port}/postgres"

    def start(self) -> Self:
        """Start the server; returns once it accepts connections.

        The library returns once the port is open, while the server may still refuse
        connections ("starting up"); `pg_ctl start -w` exits only when it accepts them.
        """
        super().start()
        assert self.process is not None
        returncode = self.process.wait(timeout=COMMAND_TIMEOUT_SECONDS)
        if returncode != 0:
            raise AssertionError(f"pg_ctl start exited {returncode}: see {self.logfile}")
        return self

    def stop(self, sig: int | None = None, exp_sig: int | None = None, mode: str = "fast") -> Self:
        """Stop the server: "fast" (clients disconnected, clean) or "immediate" (a crash).

        The library's stop is always "fast"; the outage tests need the crash too.
        """
        subprocess.run(
            [self.executable, "stop", "-D", self.datadir, "-m", mode, "-w"],
            check=True,
            capture_output=True,
            timeout=COMMAND_TIMEOUT_SECONDS,
        )
        # Forget the `pg_ctl start` that launched the server (it has exited).
        with contextlib.suppress(ProcessFinishedWithError):
            TCPExecutor.stop(self, sig, exp_sig)
        return self


def _pg_ctl(root: Path) -> str:
    """pg_ctl, as the "postgres" user when the tests run as root (CI does).

    initdb, pg_ctl and postgres refuse to run as root, and the library runs pg_ctl
    itself: a two-line wrapper in the server's folder is the smallest way in.
    """
    pg_ctl = BIN_DIR / "pg_ctl"
    if os.geteuid() != 0:
        return str(pg_ctl)
    wrapper = root / "pg_ctl"
    wrapper.write_text(
        f'#!/bin/sh\nexec runuser -u {SUPERUSER} -- {shlex.quote(str(pg_ctl))} "$@"\n'
    )
    wrapper.chmod(0o755)
    return str(wrapper)


@contextlib.contextmanager
def _started_server(name: str) -> Iterator[ThrowawayPostgres]:
    """initdb in a fresh folder, a free port, a socket in that folder; removed at the end."""
    require_debian_package("postgresql", (BIN_DIR / "pg_ctl").exists())
    # Not under pytest's tmp_path: its parents are private to root, and the server
    # runs as "postgres".
    root = Path(tempfile.mkdtemp(prefix=f"pulse-relay-{name}-"))
    if os.geteuid() == 0:
        shutil.chown(root, SUPERUSER)
    server = ThrowawayPostgres(
        executable=_pg_ctl(root),
        host="127.0.0.1",
        port=free_port(),
        datadir=str(root / "data"),
        unixsocketdir=str(root),
        logfile=str(root / "server.log"),
        startparams=f"-w -t {COMMAND_TIMEOUT_SECONDS}",
        dbname="postgres",
        user=SUPERUSER,
        # -F (no fsync) comes with the library: a stopped server loses nothing (the OS
        # keeps its writes), and no test here crashes the machine.
        postgres_options="-c listen_addresses=127.0.0.1",
        timeout=COMMAND_TIMEOUT_SECONDS,
    )
    try:
        server.start()
        yield server
    finally:
        if server.running():
            server.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """The admin URL of the run's server: the named one, or one started for the run."""
    named = os.environ.get(ADMIN_URL_VARIABLE)
    if named:
        yield named
        return
    with _started_server("pg") as server:
        yield server.admin_url


@pytest.fixture
def postgres_url(postgres_server: str) -> Iterator[str]:
    """A database of this test's own: it starts with no schema at all.

    It is dropped when the test ends, its connections cut: request it before the
    fixtures that connect to it (start_relay), so that they are torn down first.
    """
    params = conninfo_to_dict(postgres_server)
    name = f"pulse_relay_test_{uuid.uuid4().hex[:12]}"
    janitor = DatabaseJanitor(
        user=str(params.get("user", "")),
        password=str(params["password"]) if "password" in params else None,
        host=str(params.get("host", "127.0.0.1")),
        port=str(params.get("port", 5432)),
        dbname=name,
        maintenance_dbname=str(params.get("dbname", "postgres")),
    )
    with janitor:
        yield postgres_server.rsplit("/", 1)[0] + "/" + name


@pytest.fixture(scope="session")
def _outage_server() -> Iterator[ThrowawayPostgres]:
    with _started_server("pg-outage") as server:
        with psycopg.connect(server.admin_url, autocommit=True) as conn:
            conn.execute(f"CREATE ROLE {OUTAGE_ROLE} LOGIN PASSWORD '{OUTAGE_ROLE}'".encode())
        yield server


@pytest.fixture
def throwaway_postgres(_outage_server: ThrowawayPostgres) -> ThrowawayPostgres:
    """A server the test may stop and start, running, with a fresh database at `.url`."""
    server = _outage_server
    if not server.running():
        server.start()
    with psycopg.connect(server.admin_url, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {OUTAGE_ROLE} WITH (FORCE)".encode())
        conn.execute(f"CREATE DATABASE {OUTAGE_ROLE} OWNER {OUTAGE_ROLE}".encode())
    return server
