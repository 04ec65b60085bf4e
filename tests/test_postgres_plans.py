"""The ingest's reads on PostgreSQL stay index probes before the planner knows the table.

A new database has no statistics until autovacuum first analyzes it, and a relay's
first burst arrives before that: a read planned as a sequential scan then costs more
with every event stored, on the server shared by every relay. Two ways there: a read
whose form the planner cannot match to an index without statistics, and a plan made
once for the table as it was (a prepared statement's) and kept as it grows.
"""

from __future__ import annotations

import json

import psycopg

from pulse_relay.store import PostgresStore
from pulse_relay.store.postgres.ingest import KNOWN_KEYS, SEEN_JOB_KEYS
from tests.helpers import ingest_record

STORED = 20_000
KEYS = 32


def _plan_nodes(plan: dict[str, object]) -> list[str]:
    """Every node of a JSON plan, as "Node Type on Relation"."""
    node = f"{plan['Node Type']} on {plan.get('Relation Name', '')}"
    children = plan.get("Plans", [])
    assert isinstance(children, list)
    return [node, *(n for child in children for n in _plan_nodes(child))]


async def test_the_job_key_read_probes_its_index_on_a_table_never_analyzed(
    postgres_url: str,
) -> None:
    async with PostgresStore(postgres_url):
        pass  # the schema
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("ALTER TABLE events SET (autovacuum_enabled = off)")
        conn.execute(
            "INSERT INTO events (id, received_at, source, type, job_id, job_key, state, "
            "headers, body, fetch_state) SELECT 'evt-' || n, n, 'webhook', 'job.completed', "
            "'job-' || n, 'job-' || n || ':completed', 'accepted', '{}', '', 'none' "
            "FROM generate_series(1, %s) AS n",
            (STORED,),
        )
        keys = [f"job-{n}:completed" for n in range(1, 2 * KEYS, 2)]
        explained = conn.execute(b"EXPLAIN (FORMAT JSON) " + SEEN_JOB_KEYS.encode(), (keys,))
        (document,) = explained.fetchone() or ()
        found = conn.execute(SEEN_JOB_KEYS.encode(), (keys,)).fetchall()
    plan = document if isinstance(document, list) else json.loads(document)
    nodes = _plan_nodes(plan[0]["Plan"])
    assert "Seq Scan on events" not in nodes, nodes
    assert sorted(found) == sorted((key, f"evt-{key[4:].split(':')[0]}") for key in keys)


async def test_the_dedupe_reads_are_planned_for_the_table_as_it_is_each_time(
    postgres_url: str,
) -> None:
    """Prepared after a few executions, their plan would be the one made while the table
    held a few rows (a sequential scan), kept until autovacuum's first analyze."""
    async with PostgresStore(postgres_url) as store:
        for n in range(12):
            record = ingest_record(f"m{n}", job_id=f"job-{n}")
            assert await store.ingest(record) == "accepted"
        async with store.connection() as conn:
            cursor = await conn.execute("SELECT statement FROM pg_prepared_statements")
            prepared = [row[0] for row in await cursor.fetchall()]
    # The ingest's insert is prepared: the pool's one connection served every group.
    assert any("INSERT INTO events" in statement for statement in prepared), prepared
    for read in (KNOWN_KEYS, SEEN_JOB_KEYS):
        start = read.split("%s")[0]
        assert not any(statement.startswith(start) for statement in prepared), prepared
