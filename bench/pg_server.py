"""A throwaway PostgreSQL server from the installed binaries, for the tests and the benchmarks.

`started_server` runs initdb in a fresh folder, starts the server on a free port of
127.0.0.1 through pytest-postgresql's executor, and removes it all at the end. The
tests' servers run without fsync (nothing here crashes the machine, and a stopped
server loses nothing); the benchmarks' run with fsync and synchronous_commit on, so
that a committed transaction costs what it costs on a real server, as SQLite's
`synchronous = FULL` does on the other side of the comparison.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Self

from mirakuru import TCPExecutor
from mirakuru.exceptions import ProcessFinishedWithError
from pytest_postgresql.executors import PostgreSQLExecutor

BIN_DIR = Path(os.environ.get("TEST_POSTGRES_BIN_DIR", "/usr/lib/postgresql/15/bin"))
COMMAND_TIMEOUT_SECONDS = 30
SUPERUSER = "postgres"
# The outage tests' role and database: a URL with a password, to see it masked.
OUTAGE_ROLE = "relay"
# Later settings win over the executor's own `-F` (fsync off).
DURABLE_OPTIONS = "-c fsync=on -c synchronous_commit=on -c full_page_writes=on"


class ThrowawayPostgres(PostgreSQLExecutor):
    """A server in a folder of its own; `stop(mode=...)` and `start()` at will."""

    @property
    def url(self) -> str:
        """The outage role's URL of its database (made by the outage tests' fixture)."""
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


def installed() -> bool:
    """Whether the PostgreSQL binaries the servers start from are on this machine."""
    return (BIN_DIR / "pg_ctl").exists()


def _pg_ctl(root: Path) -> str:
    """pg_ctl, as the "postgres" user when running as root (CI does).

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


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.contextmanager
def started_server(name: str, *, durable: bool = False) -> Iterator[ThrowawayPostgres]:
    """initdb in a fresh folder, a free port, a socket in that folder; removed at the end."""
    # Not under a private temporary folder of root's: the server runs as "postgres".
    root = Path(tempfile.mkdtemp(prefix=f"pulse-relay-{name}-"))
    if os.geteuid() == 0:
        shutil.chown(root, SUPERUSER)
    options = "-c listen_addresses=127.0.0.1" + (" " + DURABLE_OPTIONS if durable else "")
    server = ThrowawayPostgres(
        executable=_pg_ctl(root),
        host="127.0.0.1",
        port=_free_port(),
        datadir=str(root / "data"),
        unixsocketdir=str(root),
        logfile=str(root / "server.log"),
        startparams=f"-w -t {COMMAND_TIMEOUT_SECONDS}",
        dbname="postgres",
        user=SUPERUSER,
        postgres_options=options,
        timeout=COMMAND_TIMEOUT_SECONDS,
    )
    try:
        server.start()
        yield server
    finally:
        if server.running():
            server.stop()
        shutil.rmtree(root, ignore_errors=True)
