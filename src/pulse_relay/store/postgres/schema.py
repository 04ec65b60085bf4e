"""The PostgreSQL schema, migrated once under an advisory lock however many relays start.

No foreign keys: prune deletes an event's deliveries and attempts itself, so a
delete never scans another table to check references.
"""

from __future__ import annotations

from typing import Any

from psycopg import AsyncConnection

from pulse_relay.store.migrations import pending_migrations

# pg_advisory_xact_lock keys: the relay's schema migrations and its retention.
MIGRATION_LOCK = 0x70756C7365_01
RETENTION_LOCK = 0x70756C7365_02

MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE events (
        id TEXT PRIMARY KEY,
        received_at DOUBLE PRECISION NOT NULL,
        source TEXT NOT NULL,
        type TEXT,
        job_id TEXT,
        job_key TEXT,
        state TEXT NOT NULL,
        error TEXT,
        headers TEXT NOT NULL,
        body BYTEA NOT NULL,
        fetch_state TEXT NOT NULL,
        fetch_attempts INTEGER NOT NULL DEFAULT 0,
        next_fetch_at DOUBLE PRECISION,
        fetch_lease_until DOUBLE PRECISION,
        fetch_token TEXT,
        fetch_error TEXT,
        job TEXT,
        result_url TEXT,
        fetched_at DOUBLE PRECISION,
        client_address TEXT
    );
    CREATE INDEX events_received_at ON events (received_at);
    CREATE INDEX events_job_id ON events (job_id) WHERE job_id IS NOT NULL;
    CREATE INDEX events_job_key ON events (job_key) WHERE job_key IS NOT NULL;
    CREATE INDEX events_fetch_due ON events (next_fetch_at) WHERE fetch_state = 'pending';
    CREATE INDEX events_open_jobs ON events (received_at)
        WHERE type IN ('job.created', 'job.processing');

    CREATE TABLE deliveries (
        event_id TEXT NOT NULL,
        sink TEXT NOT NULL,
        state TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_at DOUBLE PRECISION NOT NULL,
        lease_until DOUBLE PRECISION,
        lease_token TEXT,
        last_error TEXT,
        replay BOOLEAN NOT NULL DEFAULT FALSE,
        updated_at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (event_id, sink)
    );
    CREATE INDEX deliveries_due ON deliveries (sink, next_attempt_at) WHERE state = 'pending';

    CREATE TABLE attempts (
        id BIGSERIAL PRIMARY KEY,
        event_id TEXT NOT NULL,
        sink TEXT,
        attempt INTEGER NOT NULL,
        started_at DOUBLE PRECISION NOT NULL,
        duration_ms DOUBLE PRECISION NOT NULL,
        outcome TEXT NOT NULL,
        status_code INTEGER,
        error TEXT,
        output_tail TEXT
    );
    CREATE INDEX attempts_event_id ON attempts (event_id);

    CREATE TABLE watches (
        job_id TEXT PRIMARY KEY,
        metadata JSONB NOT NULL DEFAULT '{}',
        origin TEXT NOT NULL,
        state TEXT NOT NULL,
        added_at DOUBLE PRECISION NOT NULL,
        next_poll_at DOUBLE PRECISION NOT NULL,
        interval_seconds DOUBLE PRECISION NOT NULL,
        polls INTEGER NOT NULL DEFAULT 0,
        last_status TEXT,
        last_error TEXT,
        updated_at DOUBLE PRECISION NOT NULL,
        lease_until DOUBLE PRECISION
    );
    CREATE INDEX watches_due ON watches (next_poll_at) WHERE state = 'active';

    CREATE TABLE probes (name TEXT PRIMARY KEY, written_at DOUBLE PRECISION NOT NULL);

    CREATE TABLE pruned_events (id TEXT PRIMARY KEY, pruned_at DOUBLE PRECISION NOT NULL);
    CREATE INDEX pruned_events_at ON pruned_events (pruned_at);
    """,
    # The body's digest, a second dedupe key where the body is the only signed part
    # (hmac-sha256-hex), remembered after pruning as the id is. Unique, as the id is:
    # of two relays inserting one body under two ids at once, one insert finds a conflict.
    """
    ALTER TABLE events ADD COLUMN body_digest TEXT;
    CREATE UNIQUE INDEX events_body_digest ON events (body_digest) WHERE body_digest IS NOT NULL;
    ALTER TABLE pruned_events ADD COLUMN body_digest TEXT;
    CREATE INDEX pruned_events_body_digest ON pruned_events (body_digest)
        WHERE body_digest IS NOT NULL;
    """,
    # An edited replay's envelope (JSON text: jsonb would reorder its keys): what the
    # delivery sends instead of the one built from the event, and, per attempt, what that
    # attempt sent.
    """
    ALTER TABLE deliveries ADD COLUMN edited_envelope TEXT;
    ALTER TABLE attempts ADD COLUMN edited_envelope TEXT;
    """,
)


async def schema_version(conn: AsyncConnection[Any]) -> int:
    """The schema version the database is at (0 before the first migration)."""
    cursor = await conn.execute("SELECT to_regclass('pulse_relay_schema') IS NOT NULL")
    row = await cursor.fetchone()
    if not row or not row[0]:
        return 0
    cursor = await conn.execute("SELECT version FROM pulse_relay_schema")
    row = await cursor.fetchone()
    return int(row[0]) if row else 0


async def migrate(conn: AsyncConnection[Any], where: str) -> None:
    """Bring the database to the newest schema, once, under an advisory lock."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        await conn.execute("CREATE TABLE IF NOT EXISTS pulse_relay_schema (version INTEGER)")
        version = await schema_version(conn)
        for _, script in pending_migrations(where, version, MIGRATIONS):
            await conn.execute(script.encode())
        await conn.execute("DELETE FROM pulse_relay_schema")
        await conn.execute("INSERT INTO pulse_relay_schema VALUES (%s)", (len(MIGRATIONS),))
