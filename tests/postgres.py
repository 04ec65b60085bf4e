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
import uuid
from collections.abc import Iterator

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict
from pytest_postgresql.janitor import DatabaseJanitor

from bench.pg_server import OUTAGE_ROLE, ThrowawayPostgres, installed, started_server
from tests.helpers import require_debian_package

ADMIN_URL_VARIABLE = "TEST_POSTGRES_ADMIN_URL"


@contextlib.contextmanager
def _started_server(name: str) -> Iterator[ThrowawayPostgres]:
    require_debian_package("postgresql", installed())
    with started_server(name) as server:
        yield server


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
