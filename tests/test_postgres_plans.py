"""The ingest's reads on PostgreSQL stay index probes before the planner knows the table.

A new database has no statistics until autovacuum first analyzes it, and a relay's
first burst arrives before that: a read planned as a sequential scan then costs more
with every event stored, on the server shared by every relay.
"""

from __future__ import annotations

import json

import psycopg

from pulse_relay.store import PostgresStore
from pulse_relay.store.postgres.ingest import SEEN_JOB_KEYS

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
