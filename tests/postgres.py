"""A real PostgreSQL for the tests: one fresh database per run, dropped at the end.

`.ci/run` starts the server and creates the role. Elsewhere the tests that need
it are skipped when it cannot be reached, except under CI, where they fail.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import psycopg
import pytest

ADMIN_URL = os.environ.get(
    "TEST_POSTGRES_ADMIN_URL",
    "postgresql://pulse_relay_test:pulse_relay_test@127.0.0.1:5432/postgres",
)


def database_url(name: str) -> str:
    """The URL of database `name` on the test server, as the test role."""
    return ADMIN_URL.rsplit("/", 1)[0] + "/" + name


def _admin() -> psycopg.Connection[tuple[object, ...]]:
    return psycopg.connect(ADMIN_URL, autocommit=True, connect_timeout=3)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """The URL of a database created for this run (and dropped after it)."""
    try:
        admin = _admin()
    except psycopg.OperationalError as error:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"no PostgreSQL for the tests ({error}); .ci/run starts one")
    name = f"pulse_relay_test_{uuid.uuid4().hex[:12]}"
    with admin:
        admin.execute(f"CREATE DATABASE {name}".encode())
    try:
        yield database_url(name)
    finally:
        with _admin() as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)".encode())


@pytest.fixture
def postgres_url(postgres_server: str) -> str:
    """The run's database, emptied: every test starts from no schema at all."""
    with psycopg.connect(postgres_server, autocommit=True) as conn:
        conn.execute("DROP SCHEMA public CASCADE")
        conn.execute("CREATE SCHEMA public")
    return postgres_server
