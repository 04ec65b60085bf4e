"""The SQLite schema: each migration and its version bump in one transaction."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from pulse_relay.store.migrations import pending_migrations

MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE events (
        id TEXT PRIMARY KEY,
        received_at REAL NOT NULL,
        source TEXT NOT NULL,
        type TEXT,
        job_id TEXT,
        job_key TEXT,
        state TEXT NOT NULL,
        error TEXT,
        headers TEXT NOT NULL,
        body BLOB NOT NULL,
        fetch_state TEXT NOT NULL,
        fetch_attempts INTEGER NOT NULL DEFAULT 0,
        next_fetch_at REAL,
        fetch_lease_until REAL,
        fetch_error TEXT,
        job TEXT,
        result_url TEXT,
        fetched_at REAL
    );
    CREATE INDEX events_received_at ON events (received_at);
    CREATE INDEX events_job_id ON events (job_id) WHERE job_id IS NOT NULL;
    CREATE INDEX events_job_key ON events (job_key) WHERE job_key IS NOT NULL;
    CREATE INDEX events_fetch_due ON events (next_fetch_at) WHERE fetch_state = 'pending';

    CREATE TABLE deliveries (
        event_id TEXT NOT NULL REFERENCES events (id) ON DELETE CASCADE,
        sink TEXT NOT NULL,
        state TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_at REAL NOT NULL,
        lease_until REAL,
        last_error TEXT,
        replay INTEGER NOT NULL DEFAULT 0,
        updated_at REAL NOT NULL,
        PRIMARY KEY (event_id, sink)
    ) WITHOUT ROWID;
    CREATE INDEX deliveries_due ON deliveries (sink, next_attempt_at) WHERE state = 'pending';

    CREATE TABLE attempts (
        id INTEGER PRIMARY KEY,
        event_id TEXT NOT NULL REFERENCES events (id) ON DELETE CASCADE,
        sink TEXT,
        attempt INTEGER NOT NULL,
        started_at REAL NOT NULL,
        duration_ms REAL NOT NULL,
        outcome TEXT NOT NULL,
        status_code INTEGER,
        error TEXT,
        output_tail TEXT
    );
    CREATE INDEX attempts_event_id ON attempts (event_id);

    CREATE TABLE watches (
        job_id TEXT PRIMARY KEY,
        metadata TEXT NOT NULL DEFAULT '{}',
        origin TEXT NOT NULL,
        state TEXT NOT NULL,
        added_at REAL NOT NULL,
        next_poll_at REAL NOT NULL,
        interval_seconds REAL NOT NULL,
        polls INTEGER NOT NULL DEFAULT 0,
        last_status TEXT,
        last_error TEXT,
        updated_at REAL NOT NULL
    );
    CREATE INDEX watches_due ON watches (next_poll_at) WHERE state = 'active';
    CREATE INDEX events_open_jobs ON events (received_at)
        WHERE type IN ('job.created', 'job.processing');
    """,
    # Readiness must prove a real write: taking the write lock alone succeeds on a full disk.
    """
    CREATE TABLE probes (name TEXT PRIMARY KEY, written_at REAL NOT NULL);
    """,
    # The ids of pruned events, for a while, so that asking for one can be told
    # "pruned" (a replay answers 409) rather than "unknown".
    """
    CREATE TABLE pruned_events (id TEXT PRIMARY KEY, pruned_at REAL NOT NULL) WITHOUT ROWID;
    CREATE INDEX pruned_events_at ON pruned_events (pruned_at);
    """,
    # The sender's address as the ingress determined it (behind trusted proxies).
    """
    ALTER TABLE events ADD COLUMN client_address TEXT;
    """,
    # A watch's poll lease, apart from its schedule, so a restart can take it back.
    """
    ALTER TABLE watches ADD COLUMN lease_until REAL;
    """,
    # The body's digest, a second dedupe key where the body is the only signed part
    # (hmac-sha256-hex), remembered after pruning as the id is. Unique, as the id is.
    """
    ALTER TABLE events ADD COLUMN body_digest TEXT;
    CREATE UNIQUE INDEX events_body_digest ON events (body_digest) WHERE body_digest IS NOT NULL;
    ALTER TABLE pruned_events ADD COLUMN body_digest TEXT;
    CREATE INDEX pruned_events_body_digest ON pruned_events (body_digest)
        WHERE body_digest IS NOT NULL;
    """,
    # An edited replay's envelope (JSON text, key order kept): what the delivery sends
    # instead of the one built from the event, and, per attempt, what that attempt sent.
    """
    ALTER TABLE deliveries ADD COLUMN edited_envelope TEXT;
    ALTER TABLE attempts ADD COLUMN edited_envelope TEXT;
    """,
)


def schema_version(db: sqlite3.Connection) -> int:
    """The schema version the database is at."""
    return int(db.execute("PRAGMA user_version").fetchone()[0])


def migrate(db: sqlite3.Connection, path: Path) -> None:
    """Bring the database at `path` to the newest schema; refuse one from a newer release."""
    for number, script in pending_migrations(str(path), schema_version(db), MIGRATIONS):
        # executescript commits first, so the whole migration and its version bump
        # run in one explicit transaction.
        db.executescript(f"BEGIN IMMEDIATE;\n{script}\nPRAGMA user_version = {number};\nCOMMIT;")
