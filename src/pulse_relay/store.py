"""The SQLite store: schema, migrations, group commit, and the delivery queue's queries.

This is the only module that speaks SQL. One connection writes; every write goes
through one queue that a single task drains, so concurrent ingests share one
transaction (one fsync) and each caller is answered only after that commit.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import aiosqlite

IngestOutcome = Literal["accepted", "duplicate"]
DeliveryOutcome = Literal["delivered", "retry", "dead"]

# The schedule of a delivery whose event still waits for its job: far beyond any
# real time, so the claim's index range (`next_attempt_at <= now`) never walks
# over a backlog of deliveries that cannot run yet. Storing the job sets it to now.
AWAITING_FETCH = 9.0e15
# Bound on the number of queued writes that go into one transaction.
MAX_BATCH = 512
# SQLite's default limit on host parameters in one statement is 999 on old builds, so
# every "IN (...)" list of caller-given length is bound in chunks of this many.
_CHUNK = 500
# Events deleted per transaction by prune(), so the writer is never held for long.
PRUNE_BATCH = 500
# Pruned ids are remembered at least this long (a replay of one then answers "pruned"),
# whatever store.dedupe_days asks for.
PRUNED_IDS_MIN_SECONDS = 86_400.0

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
)


# The store holds customer documents: the file is created for its owner alone,
# whatever the umask; SQLite gives the -wal and -shm files the database's mode.
STORE_FILE_MODE = 0o600
STORE_DIRECTORY_MODE = 0o700


def _create_private_file(path: Path) -> None:
    """Create `path` (and missing parent directories) readable by its owner only, if absent."""
    if path.parent and not path.parent.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=STORE_DIRECTORY_MODE)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, STORE_FILE_MODE)
    except FileExistsError:
        return
    try:
        os.fchmod(fd, STORE_FILE_MODE)
    finally:
        os.close(fd)


class StoreUnavailableError(Exception):
    """The store cannot take writes now (locked past the timeout, disk full, read-only)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class StoreVersionError(Exception):
    """The database was written by a newer pulse-relay."""


@dataclass(frozen=True)
class IngestRecord:
    """One verified event to store, with the deliveries it starts."""

    event_id: str
    received_at: float
    source: str
    headers: dict[str, str]
    body: bytes
    event_type: str | None
    job_id: str | None
    job_key: str | None
    error: str | None
    sinks: Sequence[str]
    needs_fetch: bool
    # Webhooks only: the client as the ingress saw it (None for polled events).
    client_address: str | None = None


@dataclass(frozen=True)
class FetchTask:
    """An event whose canonical job must be fetched before its sinks can run."""

    event_id: str
    job_id: str
    event_type: str
    attempts: int


@dataclass(frozen=True)
class DeliveryTask:
    """One claimed (event, sink) delivery with what is needed to build its envelope."""

    event_id: str
    sink: str
    attempts: int
    is_replay: bool
    event_type: str
    job_id: str | None
    received_at: float
    source: str
    body: bytes
    job: dict[str, Any] | None
    result_url: str | None
    metadata: dict[str, Any] | None = None


@dataclass(frozen=True)
class Attempt:
    """One row of the attempt log."""

    sink: str | None
    attempt: int
    started_at: float
    duration_ms: float
    outcome: str
    status_code: int | None = None
    error: str | None = None
    output_tail: str | None = None


@dataclass(frozen=True)
class DeliveryView:
    """One sink's delivery of an event, as `events` and `show` present it."""

    state: str
    attempts: int
    # None while the delivery waits for the job fetch.
    next_attempt_at: float | None
    last_error: str | None
    is_replay: bool

    def __getitem__(self, name: str) -> object:
        """The field `name`, for callers written against the mapping this view replaced."""
        if name == "replay":
            return self.is_replay
        if name not in self.__dataclass_fields__:
            raise KeyError(name)
        return getattr(self, name)


@dataclass
class EventView:
    """An event as `events` and `show` present it."""

    id: str
    received_at: float
    source: str
    type: str | None
    job_id: str | None
    state: str
    error: str | None
    fetch_state: str
    fetch_error: str | None
    deliveries: dict[str, DeliveryView] = field(default_factory=dict)
    headers: dict[str, str] | None = None
    client_address: str | None = None
    body: bytes | None = None
    job: Any = None
    result_url: str | None = None
    attempts: list[Attempt] = field(default_factory=list)
    # The job's watch metadata: what its envelopes carry in `relay.metadata`.
    metadata: dict[str, Any] | None = None


@dataclass(frozen=True)
class EventCursor:
    """Where a listing stopped: the last event shown (listings are newest first)."""

    received_at: float
    event_id: str


DELIVERY_STATES = ("pending", "delivered", "dead")

# (kind, event_id, detail) after a change is committed: "event" (stored), "delivery"
# (an attempt's outcome: sink, state, attempt) and "fetch" (a job fetch attempt).
ChangeListener = Callable[[str, str, dict[str, Any] | None], None]


@dataclass(frozen=True)
class Watch:
    """A job the poller follows until it is terminal."""

    job_id: str
    metadata: dict[str, Any]
    origin: str
    state: str
    added_at: float
    next_poll_at: float
    interval_seconds: float
    polls: int
    last_status: str | None
    last_error: str | None


# A write runs on the writer thread, inside the group transaction, in a savepoint of its own.
WriteOp = Callable[[sqlite3.Connection], Any]


@dataclass
class _Queued:
    future: asyncio.Future[Any]
    record: IngestRecord | None = None
    op: WriteOp | None = None


def _placeholders(count: int) -> str:
    return ",".join("?" * count)


def _chunks(items: Sequence[str]) -> Iterable[Sequence[str]]:
    for start in range(0, len(items), _CHUNK):
        yield items[start : start + _CHUNK]


class Store:
    """The relay's SQLite store; open() before use, close() after.

    Writes go through one connection owned by one thread: a whole group
    transaction runs there in a single hand-off from the event loop. (Through
    aiosqlite each statement is its own hand-off, and under load every one of
    them waits behind the request work queued on the loop: that, not the
    fsync, limited ingest.) Reads use aiosqlite on a second connection; WAL
    lets them run beside the writer.
    """

    def __init__(
        self,
        path: Path | str,
        *,
        synchronous: str = "FULL",
        busy_timeout_seconds: float = 5.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = Path(path)
        self._synchronous = synchronous
        self._busy_timeout_seconds = busy_timeout_seconds
        self._clock = clock
        self._db: aiosqlite.Connection | None = None
        self._writer_db: sqlite3.Connection | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._queue: asyncio.Queue[_Queued] = asyncio.Queue()
        self._writer: asyncio.Task[None] | None = None
        self._closing = False
        self._listeners: list[ChangeListener] = []

    def add_listener(self, listener: ChangeListener) -> None:
        """Call `listener` after each committed change of an event (see ChangeListener)."""
        self._listeners.append(listener)

    def _changed(self, kind: str, event_id: str, detail: dict[str, Any] | None = None) -> None:
        for listener in self._listeners:
            listener(kind, event_id, detail)

    # -- lifecycle -------------------------------------------------------

    async def open(self) -> None:
        """Open (creating if needed) the database, migrate it, and start the writer."""
        _create_private_file(self.path)
        loop = asyncio.get_running_loop()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store-writer")
        try:
            self._writer_db = await loop.run_in_executor(self._executor, self._connect_writer)
            db = await aiosqlite.connect(self.path, isolation_level=None)
            db.row_factory = sqlite3.Row
            self._db = db
            await db.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout_seconds * 1000)}")
        except sqlite3.Error as error:
            await self._close_connections()
            raise StoreUnavailableError(f"cannot open {self.path}: {error}") from error
        except BaseException:
            await self._close_connections()
            raise
        self._closing = False
        self._writer = asyncio.create_task(self._write_loop(), name="store-writer")

    def _connect_writer(self) -> sqlite3.Connection:
        db = sqlite3.connect(
            self.path,
            isolation_level=None,
            timeout=self._busy_timeout_seconds,
            check_same_thread=False,
        )
        try:
            db.row_factory = sqlite3.Row
            db.execute("PRAGMA journal_mode = WAL")
            db.execute(f"PRAGMA synchronous = {self._synchronous}")
            db.execute("PRAGMA foreign_keys = ON")
            self._migrate(db)
        except BaseException:
            db.close()
            raise
        return db

    async def close(self) -> None:
        """Finish queued writes, stop the writer, and close the connections."""
        self._closing = True
        if self._writer is not None:
            await self._queue.join()
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer
            self._writer = None
        await self._close_connections()

    async def _close_connections(self) -> None:
        if self._db is not None:
            await self._db.close()
            self._db = None
        if self._executor is not None:
            writer_db, self._writer_db = self._writer_db, None
            if writer_db is not None:
                await asyncio.get_running_loop().run_in_executor(self._executor, writer_db.close)
            self._executor.shutdown(wait=True)
            self._executor = None

    async def __aenter__(self) -> Store:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @property
    def db(self) -> aiosqlite.Connection:
        """The reading connection."""
        if self._db is None:
            raise StoreUnavailableError("store is not open")
        return self._db

    def _migrate(self, db: sqlite3.Connection) -> None:
        version = int(db.execute("PRAGMA user_version").fetchone()[0])
        if version > len(MIGRATIONS):
            raise StoreVersionError(
                f"{self.path} has schema version {version}; this pulse-relay knows "
                f"{len(MIGRATIONS)}: upgrade pulse-relay"
            )
        for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
            # executescript commits first, so the whole migration and its version bump
            # run in one explicit transaction.
            db.executescript(
                f"BEGIN IMMEDIATE;\n{script}\nPRAGMA user_version = {number};\nCOMMIT;"
            )

    # -- the single writer ---------------------------------------------

    async def ingest(self, record: IngestRecord) -> IngestOutcome:
        """Store one event and its deliveries; returns after the commit that holds it."""
        future: asyncio.Future[IngestOutcome] = asyncio.get_running_loop().create_future()
        self._enqueue(_Queued(future=future, record=record))
        outcome: IngestOutcome = await future
        if outcome == "accepted":
            self._changed("event", record.event_id)
        return outcome

    async def write(self, op: WriteOp) -> Any:
        """Run `op` in the next group transaction, in a savepoint of its own; return its result."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._enqueue(_Queued(future=future, op=op))
        return await future

    def _enqueue(self, item: _Queued) -> None:
        if self._writer is None or self._closing:
            raise StoreUnavailableError("store is closed")
        self._queue.put_nowait(item)

    async def _write_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            while len(batch) < MAX_BATCH and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                try:
                    outcomes = await loop.run_in_executor(self._executor, self._commit, batch)
                except Exception as error:
                    # A failed transaction fails every write in it: none of them is on disk.
                    failure: BaseException = error
                    if isinstance(error, sqlite3.Error):
                        failure = StoreUnavailableError(f"store write failed: {error}")
                    for item in batch:
                        if not item.future.done():
                            item.future.set_exception(failure)
                    continue
                for item, (ok, value) in zip(batch, outcomes, strict=True):
                    if item.future.done():
                        continue
                    if ok:
                        item.future.set_result(value)
                    else:
                        item.future.set_exception(value)
            finally:
                for _ in batch:
                    self._queue.task_done()

    def _commit(self, batch: list[_Queued]) -> list[tuple[bool, Any]]:
        """One transaction for the whole batch, on the writer thread; an outcome per item."""
        db = self._writer_db
        if db is None:
            raise StoreUnavailableError("store is closed")
        outcomes: dict[int, tuple[bool, Any]] = {}
        records = [item for item in batch if item.record is not None]
        db.execute("BEGIN IMMEDIATE")
        try:
            if records:
                inserted = self._insert_events(db, [item.record for item in records])  # type: ignore[misc]
                for item, outcome in zip(records, inserted, strict=True):
                    outcomes[id(item)] = (True, outcome)
            for item in batch:
                if item.op is None:
                    continue
                db.execute("SAVEPOINT op")
                try:
                    outcomes[id(item)] = (True, item.op(db))
                except sqlite3.OperationalError:
                    raise
                except Exception as error:  # the op's own failure; the batch goes on
                    db.execute("ROLLBACK TO op")
                    outcomes[id(item)] = (False, error)
                db.execute("RELEASE op")
            db.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
            raise
        return [outcomes[id(item)] for item in batch]

    def _insert_events(
        self, db: sqlite3.Connection, records: list[IngestRecord]
    ) -> list[IngestOutcome]:
        existing = _stored_ids(db, [record.event_id for record in records])
        seen_keys = _accepted_job_keys(db, [r.job_key for r in records if r.job_key is not None])
        outcomes: list[IngestOutcome] = []
        event_rows: list[tuple[Any, ...]] = []
        delivery_rows: list[tuple[Any, ...]] = []
        for record in records:
            if record.event_id in existing:
                outcomes.append("duplicate")
                continue
            existing.add(record.event_id)
            outcomes.append("accepted")
            state, error = _ingest_state(record, seen_keys)
            sinks = list(record.sinks) if state == "accepted" else []
            needs_fetch = record.needs_fetch and bool(sinks)
            event_rows.append(
                (
                    record.event_id,
                    record.received_at,
                    record.source,
                    record.event_type,
                    record.job_id,
                    record.job_key,
                    state,
                    error,
                    json.dumps(record.headers),
                    record.body,
                    "pending" if needs_fetch else "none",
                    record.received_at if needs_fetch else None,
                    record.client_address,
                )
            )
            due_at = AWAITING_FETCH if needs_fetch else record.received_at
            delivery_rows.extend(
                (record.event_id, sink, due_at, record.received_at) for sink in sinks
            )
        if event_rows:
            db.executemany(
                "INSERT INTO events (id, received_at, source, type, job_id, job_key, state, "
                "error, headers, body, fetch_state, next_fetch_at, client_address) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                event_rows,
            )
        if delivery_rows:
            db.executemany(
                "INSERT INTO deliveries (event_id, sink, state, next_attempt_at, updated_at) "
                "VALUES (?, ?, 'pending', ?, ?)",
                delivery_rows,
            )
        return outcomes

    async def check_writable(self) -> None:
        """Raise StoreUnavailableError unless a write can be committed now (a full disk fails)."""
        now = self._clock()

        def probe(db: sqlite3.Connection) -> None:
            db.execute(
                "INSERT INTO probes (name, written_at) VALUES ('ready', ?) "
                "ON CONFLICT (name) DO UPDATE SET written_at = excluded.written_at",
                (now,),
            )

        await self.write(probe)

    # -- job fetch queue -----------------------------------------------

    async def claim(
        self,
        *,
        fetch_limit: int,
        free_slots: dict[str, int],
        total_limit: int,
        lease_seconds: float,
    ) -> tuple[list[FetchTask], list[DeliveryTask]]:
        """Lease due job fetches (up to `fetch_limit`) and due deliveries, in one transaction.

        Deliveries: at most `free_slots[sink]` per sink and `total_limit` in all.
        """
        now = self._clock()

        def op(db: sqlite3.Connection) -> tuple[list[FetchTask], list[DeliveryTask]]:
            fetches = _claim_fetches(db, now=now, limit=fetch_limit, lease_seconds=lease_seconds)
            deliveries = _claim_deliveries(
                db,
                now=now,
                free_slots=free_slots,
                total_limit=total_limit,
                lease_seconds=lease_seconds,
            )
            return fetches, deliveries

        if fetch_limit <= 0 and (total_limit <= 0 or not any(v > 0 for v in free_slots.values())):
            return [], []
        result: tuple[list[FetchTask], list[DeliveryTask]] = await self.write(op)
        return result

    async def finish_fetch(
        self,
        event_id: str,
        *,
        job: dict[str, Any],
        result_url: str | None,
        attempt: Attempt,
        free_slots: dict[str, int] | None = None,
        total_limit: int = 0,
        lease_seconds: float = 0.0,
    ) -> list[DeliveryTask]:
        """Persist the fetched job; its deliveries become due, and those with a free slot
        (`free_slots`, `total_limit`) are leased and returned at once."""
        now = self._clock()

        def op(db: sqlite3.Connection) -> list[DeliveryTask]:
            db.execute(
                "UPDATE events SET fetch_state = 'done', job = ?, result_url = ?, fetched_at = ?, "
                "fetch_lease_until = NULL, fetch_error = NULL, "
                "fetch_attempts = fetch_attempts + 1 WHERE id = ?",
                (json.dumps(job), result_url, now, event_id),
            )
            db.execute(
                "UPDATE deliveries SET next_attempt_at = ? "
                "WHERE event_id = ? AND state = 'pending'",
                (now, event_id),
            )
            _insert_attempt(db, event_id, attempt)
            return _claim_deliveries(
                db,
                now=now,
                free_slots=free_slots or {},
                total_limit=total_limit,
                lease_seconds=lease_seconds,
                event_id=event_id,
            )

        result: list[DeliveryTask] = await self.write(op)
        self._changed("fetch", event_id, {"state": "done", "attempt": attempt})
        return result

    async def retry_fetch(self, event_id: str, *, next_fetch_at: float, attempt: Attempt) -> None:
        """Record a failed fetch and schedule the next one."""

        def op(db: sqlite3.Connection) -> None:
            db.execute(
                "UPDATE events SET next_fetch_at = ?, fetch_lease_until = NULL, fetch_error = ?, "
                "fetch_attempts = fetch_attempts + 1 WHERE id = ?",
                (next_fetch_at, attempt.error, event_id),
            )
            _insert_attempt(db, event_id, attempt)

        await self.write(op)
        self._changed("fetch", event_id, {"state": "pending", "attempt": attempt})

    async def fail_fetch(self, event_id: str, *, attempt: Attempt) -> None:
        """Give up on the job fetch: the event's pending deliveries go dead with the reason."""
        now = self._clock()
        reason = f"job fetch failed: {attempt.error}"

        def op(db: sqlite3.Connection) -> None:
            db.execute(
                "UPDATE events SET fetch_state = 'dead', fetch_lease_until = NULL, "
                "fetch_error = ?, fetch_attempts = fetch_attempts + 1 WHERE id = ?",
                (attempt.error, event_id),
            )
            db.execute(
                "UPDATE deliveries SET state = 'dead', last_error = ?, lease_until = NULL, "
                "updated_at = ? WHERE event_id = ? AND state = 'pending'",
                (reason, now, event_id),
            )
            _insert_attempt(db, event_id, attempt)

        await self.write(op)
        self._changed("fetch", event_id, {"state": "dead", "attempt": attempt})

    # -- delivery queue ------------------------------------------------

    async def finish_delivery(
        self,
        event_id: str,
        sink: str,
        *,
        outcome: DeliveryOutcome,
        attempt: Attempt,
        next_attempt_at: float | None = None,
    ) -> None:
        """Record one attempt and move the delivery to delivered, pending (retry) or dead."""
        now = self._clock()
        state = "pending" if outcome == "retry" else outcome
        error = None if outcome == "delivered" else attempt.error

        def op(db: sqlite3.Connection) -> None:
            db.execute(
                "UPDATE deliveries SET state = ?, attempts = attempts + 1, lease_until = NULL, "
                "last_error = ?, next_attempt_at = COALESCE(?, next_attempt_at), updated_at = ? "
                "WHERE event_id = ? AND sink = ?",
                (state, error, next_attempt_at, now, event_id, sink),
            )
            _insert_attempt(db, event_id, attempt)

        await self.write(op)
        self._changed("delivery", event_id, {"sink": sink, "state": state, "attempt": attempt})

    async def release_leases(self) -> None:
        """Make every leased item due again at once (graceful shutdown)."""

        def op(db: sqlite3.Connection) -> None:
            db.execute("UPDATE deliveries SET lease_until = NULL WHERE lease_until IS NOT NULL")
            db.execute(
                "UPDATE events SET fetch_lease_until = NULL WHERE fetch_lease_until IS NOT NULL"
            )

        await self.write(op)

    async def replay(
        self, event_ids: Sequence[str] = (), *, sink: str | None = None, dead_only: bool = False
    ) -> int:
        """Make deliveries due again as replays; returns how many were queued."""
        now = self._clock()
        clauses = ["1 = 1"]
        params: list[Any] = [now, now]
        if dead_only:
            clauses.append("state = 'dead'")
        if sink is not None:
            clauses.append("sink = ?")
            params.append(sink)
        update = (
            "UPDATE deliveries SET state = 'pending', attempts = 0, replay = 1, "
            "lease_until = NULL, next_attempt_at = ?, updated_at = ? "
            f"WHERE {' AND '.join(clauses)}"
        )
        # Repeated ids must not count twice when they land in different chunks.
        unique_ids = list(dict.fromkeys(event_ids))

        def op(db: sqlite3.Connection) -> int:
            if unique_ids:
                count = sum(
                    db.execute(
                        update + f" AND event_id IN ({_placeholders(len(chunk))})",
                        [*params, *chunk],
                    ).rowcount
                    for chunk in _chunks(unique_ids)
                )
            else:
                count = db.execute(update, params).rowcount
            # A replay of an event whose fetch had died tries the fetch again.
            db.execute(
                "UPDATE events SET fetch_state = 'pending', next_fetch_at = ?, fetch_attempts = 0 "
                "WHERE fetch_state = 'dead' AND id IN "
                "(SELECT event_id FROM deliveries WHERE state = 'pending' AND replay = 1)",
                (now,),
            )
            # Deliveries of an event whose job is (again) being fetched wait for it.
            db.execute(
                "UPDATE deliveries SET next_attempt_at = ? WHERE state = 'pending' "
                "AND event_id IN (SELECT id FROM events WHERE fetch_state = 'pending')",
                (AWAITING_FETCH,),
            )
            return count

        result: int = await self.write(op)
        return result

    # -- retention -------------------------------------------------------

    async def prune(self, *, received_before: float, batch_size: int = PRUNE_BATCH) -> int:
        """Delete finished events received before `received_before`; returns how many.

        Finished means: every delivery delivered (or none at all, as for invalid
        and repeat events) and no job fetch still pending. Events with a pending
        or dead delivery are kept until replayed. Deletes run in small batches so
        ingest never waits long behind them. Each pruned id is remembered until
        `forget_ids`: a replayed request is still a duplicate, and `is_pruned`
        tells a pruned id from an unknown one.
        """
        now = self._clock()

        def op(db: sqlite3.Connection) -> int:
            with closing(
                db.execute(
                    "SELECT e.id FROM events e WHERE e.received_at < ? "
                    "AND e.fetch_state NOT IN ('pending', 'dead') "
                    "AND NOT EXISTS (SELECT 1 FROM deliveries d "
                    "WHERE d.event_id = e.id AND d.state != 'delivered') LIMIT ?",
                    (received_before, batch_size),
                )
            ) as cursor:
                ids = [row[0] for row in cursor]
            db.executemany(
                "INSERT OR REPLACE INTO pruned_events (id, pruned_at) VALUES (?, ?)",
                [(event_id, now) for event_id in ids],
            )
            for chunk in _chunks(ids):
                db.execute(f"DELETE FROM events WHERE id IN ({_placeholders(len(chunk))})", chunk)
            return len(ids)

        return await self._in_batches(op, batch_size)

    async def forget_ids(self, *, pruned_before: float, batch_size: int = PRUNE_BATCH) -> int:
        """Forget the ids of events pruned before `pruned_before` (never within a day)."""
        forget_before = min(pruned_before, self._clock() - PRUNED_IDS_MIN_SECONDS)

        def op(db: sqlite3.Connection) -> int:
            cursor = db.execute(
                "DELETE FROM pruned_events WHERE id IN (SELECT id FROM pruned_events "
                "WHERE pruned_at < ? LIMIT ?)",
                (forget_before, batch_size),
            )
            return cursor.rowcount

        return await self._in_batches(op, batch_size)

    async def _in_batches(self, op: Callable[[sqlite3.Connection], int], batch_size: int) -> int:
        """Run `op` (which handles at most `batch_size` rows) until it handles fewer."""
        total = 0
        while True:
            handled: int = await self.write(op)
            total += handled
            if handled < batch_size:
                return total

    async def is_pruned(self, event_id: str) -> bool:
        """Whether `event_id` was stored once and pruned since (remembered for a retention)."""
        async with self.db.execute(
            "SELECT 1 FROM pruned_events WHERE id = ?", (event_id,)
        ) as cursor:
            return await cursor.fetchone() is not None

    # -- watched jobs (polling) ----------------------------------------

    async def add_watches(
        self,
        job_ids: Sequence[str],
        *,
        metadata: dict[str, Any] | None = None,
        origin: str = "watch",
        interval_seconds: float,
    ) -> None:
        """Watch jobs (again) from now on; `metadata` is merged into what a job already has."""
        now = self._clock()
        extra = json.dumps(metadata or {})

        def op(db: sqlite3.Connection) -> None:
            db.executemany(
                "INSERT INTO watches (job_id, metadata, origin, state, added_at, next_poll_at, "
                "interval_seconds, updated_at) VALUES (?, ?, ?, 'active', ?, ?, ?, ?) "
                "ON CONFLICT (job_id) DO UPDATE SET "
                "metadata = json_patch(watches.metadata, excluded.metadata), "
                "state = 'active', next_poll_at = excluded.next_poll_at, "
                "interval_seconds = excluded.interval_seconds, last_error = NULL, "
                "updated_at = excluded.updated_at",
                [(job_id, extra, origin, now, now, interval_seconds, now) for job_id in job_ids],
            )

        await self.write(op)

    async def remove_watches(self, job_ids: Sequence[str]) -> int:
        """Stop watching jobs; returns how many were watched."""

        unique_ids = list(dict.fromkeys(job_ids))

        def op(db: sqlite3.Connection) -> int:
            return sum(
                db.execute(
                    f"DELETE FROM watches WHERE job_id IN ({_placeholders(len(chunk))})", chunk
                ).rowcount
                for chunk in _chunks(unique_ids)
            )

        result: int = await self.write(op)
        return result

    async def list_watches(self) -> list[Watch]:
        """Every watch, active first, newest first."""
        async with self.db.execute(
            _WATCH_COLUMNS + "ORDER BY state = 'active' DESC, added_at DESC"
        ) as cursor:
            return [_watch(row) async for row in cursor]

    async def get_watch(self, job_id: str) -> Watch | None:
        """One watch; None when the job is not watched."""
        async with self.db.execute(_WATCH_COLUMNS + "WHERE job_id = ?", (job_id,)) as cursor:
            row = await cursor.fetchone()
        return None if row is None else _watch(row)

    async def claim_watches(self, *, limit: int, lease_seconds: float) -> list[Watch]:
        """Lease up to `limit` watches whose poll is due (by moving their next poll on)."""
        now = self._clock()

        def op(db: sqlite3.Connection) -> list[Watch]:
            rows = db.execute(
                _WATCH_COLUMNS
                + "WHERE state = 'active' AND next_poll_at <= ? ORDER BY next_poll_at LIMIT ?",
                (now, limit),
            ).fetchall()
            watches = [_watch(row) for row in rows]
            db.executemany(
                "UPDATE watches SET next_poll_at = ? WHERE job_id = ?",
                [(now + lease_seconds, w.job_id) for w in watches],
            )
            return watches

        result: list[Watch] = await self.write(op)
        return result

    async def update_watch(
        self,
        job_id: str,
        *,
        state: str,
        next_poll_at: float,
        interval_seconds: float,
        last_status: str | None,
        last_error: str | None,
    ) -> None:
        """Record one poll of a watched job."""
        now = self._clock()

        def op(db: sqlite3.Connection) -> None:
            db.execute(
                "UPDATE watches SET state = ?, next_poll_at = ?, interval_seconds = ?, "
                "polls = polls + 1, last_status = COALESCE(?, last_status), last_error = ?, "
                "updated_at = ? WHERE job_id = ?",
                (state, next_poll_at, interval_seconds, last_status, last_error, now, job_id),
            )

        await self.write(op)

    async def recover_stalled_jobs(
        self, *, older_than: float, since: float, interval_seconds: float, limit: int = 1000
    ) -> list[str]:
        """Watch jobs seen created/processing before `older_than` with no terminal event since."""
        now = self._clock()

        def op(db: sqlite3.Connection) -> list[str]:
            with closing(
                db.execute(
                    "SELECT DISTINCT e.job_id FROM events e "
                    "WHERE e.type IN ('job.created', 'job.processing') "
                    "AND e.received_at <= ? AND e.received_at >= ? AND e.job_id IS NOT NULL "
                    "AND NOT EXISTS (SELECT 1 FROM events t WHERE t.job_id = e.job_id "
                    "AND t.type NOT IN ('job.created', 'job.processing')) "
                    "AND NOT EXISTS (SELECT 1 FROM watches w WHERE w.job_id = e.job_id) "
                    "LIMIT ?",
                    (older_than, since, limit),
                )
            ) as cursor:
                job_ids = [row[0] for row in cursor]
            db.executemany(
                "INSERT INTO watches (job_id, origin, state, added_at, next_poll_at, "
                "interval_seconds, updated_at) VALUES (?, 'recovery', 'active', ?, ?, ?, ?)",
                [(job_id, now, now, interval_seconds, now) for job_id in job_ids],
            )
            return job_ids

        result: list[str] = await self.write(op)
        return result

    # -- reading -------------------------------------------------------

    async def list_events(
        self,
        *,
        event_type: str | None = None,
        state: str | None = None,
        limit: int = 50,
        sink: str | None = None,
        job_id: str | None = None,
        source: str | None = None,
        text: str | None = None,
        before: EventCursor | None = None,
        event_id: str | None = None,
    ) -> list[EventView]:
        """Newest events first, with each sink's delivery state.

        `state` is an event state (accepted, invalid, repeat) or a delivery state
        (pending, delivered, dead: some delivery, to `sink` if given, is in it);
        `text` is matched case-insensitively in the id, type, job id and body;
        `before` continues a listing after the last event of its previous page.
        """
        clauses, params = _event_filters(
            event_id=event_id,
            event_type=event_type,
            state=state,
            sink=sink,
            job_id=job_id,
            source=source,
            text=text,
        )
        if before is not None:
            clauses.append("(e.received_at < ? OR (e.received_at = ? AND e.id > ?))")
            params += [before.received_at, before.received_at, before.event_id]
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        sql = (
            "SELECT e.id, e.received_at, e.source, e.type, e.job_id, e.state, e.error, "
            f"e.fetch_state, e.fetch_error FROM events e {where} "
            "ORDER BY e.received_at DESC, e.id LIMIT ?"
        )
        async with self.db.execute(sql, [*params, limit]) as cursor:
            rows = await cursor.fetchall()
        views = [_event_view(row) for row in rows]
        await self._attach_deliveries(views)
        return views

    async def get_event(self, event_id: str) -> EventView | None:
        """One event with headers, body, job and the whole attempt log; None if unknown."""
        async with self.db.execute("SELECT * FROM events WHERE id = ?", (event_id,)) as cursor:
            row = await cursor.fetchone()
        if row is None:
            return None
        view = _event_view(row)
        view.headers = json.loads(row["headers"])
        view.client_address = row["client_address"]
        view.body = bytes(row["body"])
        view.job = json.loads(row["job"]) if row["job"] is not None else None
        view.result_url = row["result_url"]
        watch = None if view.job_id is None else await self.get_watch(view.job_id)
        view.metadata = None if watch is None else watch.metadata
        await self._attach_deliveries([view])
        async with self.db.execute(
            "SELECT sink, attempt, started_at, duration_ms, outcome, status_code, error, "
            "output_tail FROM attempts WHERE event_id = ? ORDER BY id",
            (event_id,),
        ) as cursor:
            view.attempts = [Attempt(*tuple(r)) async for r in cursor]
        return view

    async def _attach_deliveries(self, views: list[EventView]) -> None:
        by_id = {view.id: view for view in views}
        for chunk in _chunks(list(by_id)):
            async with self.db.execute(
                "SELECT event_id, sink, state, attempts, next_attempt_at, last_error, replay "
                f"FROM deliveries WHERE event_id IN ({_placeholders(len(chunk))}) "
                "ORDER BY sink",
                chunk,
            ) as cursor:
                async for row in cursor:
                    by_id[row["event_id"]].deliveries[row["sink"]] = _delivery_view(row)

    async def state_counts(self) -> tuple[dict[str, int], dict[str, int]]:
        """How many events are in each event state, and deliveries in each delivery state."""
        async with self.db.execute("SELECT state, COUNT(*) FROM events GROUP BY state") as cursor:
            events = {row[0]: int(row[1]) async for row in cursor}
        async with self.db.execute(
            "SELECT state, COUNT(*) FROM deliveries GROUP BY state"
        ) as cursor:
            deliveries = {row[0]: int(row[1]) async for row in cursor}
        return events, deliveries

    async def pending_counts(self) -> dict[str, int]:
        """Pending deliveries per sink."""
        async with self.db.execute(
            "SELECT sink, COUNT(*) FROM deliveries WHERE state = 'pending' GROUP BY sink"
        ) as cursor:
            return {row[0]: int(row[1]) async for row in cursor}

    async def oldest_pending_received_at(self) -> float | None:
        """When the oldest event with a pending delivery or fetch arrived; None if none."""
        async with self.db.execute(
            "SELECT MIN(t) FROM ("
            "SELECT MIN(e.received_at) AS t FROM deliveries d JOIN events e ON e.id = d.event_id "
            "WHERE d.state = 'pending' "
            "UNION ALL SELECT MIN(received_at) FROM events WHERE fetch_state = 'pending')"
        ) as cursor:
            row = await cursor.fetchone()
        return float(row[0]) if row and row[0] is not None else None

    async def next_due_at(self, sinks: Sequence[str], *, include_fetches: bool) -> float | None:
        """When the next claimable fetch or delivery (for `sinks`) is due; None if none waits."""
        now = self._clock()
        times: list[float] = []
        for chunk in _chunks(list(sinks)):
            async with self.db.execute(
                "SELECT MIN(d.next_attempt_at) FROM deliveries d "
                "JOIN events e ON e.id = d.event_id "
                f"WHERE d.state = 'pending' AND d.sink IN ({_placeholders(len(chunk))}) "
                f"AND d.next_attempt_at < {AWAITING_FETCH!r} "
                "AND (d.lease_until IS NULL OR d.lease_until <= ?) "
                "AND e.fetch_state IN ('none', 'done')",
                [*chunk, now],
            ) as cursor:
                row = await cursor.fetchone()
            if row and row[0] is not None:
                times.append(float(row[0]))
        if include_fetches:
            async with self.db.execute(
                "SELECT MIN(next_fetch_at) FROM events WHERE fetch_state = 'pending' "
                "AND (fetch_lease_until IS NULL OR fetch_lease_until <= ?)",
                (now,),
            ) as cursor:
                row = await cursor.fetchone()
            if row and row[0] is not None:
                times.append(float(row[0]))
        return min(times) if times else None


def _stored_ids(db: sqlite3.Connection, event_ids: Sequence[str]) -> set[str]:
    """Which of `event_ids` the store already holds, or remembers from pruned events."""
    found: set[str] = set()
    for table in ("events", "pruned_events"):
        for chunk in _chunks(list(dict.fromkeys(event_ids))):
            sql = f"SELECT id FROM {table} WHERE id IN ({_placeholders(len(chunk))})"
            found.update(row[0] for row in db.execute(sql, chunk))
    return found


def _accepted_job_keys(db: sqlite3.Connection, job_keys: Sequence[str]) -> dict[str, str]:
    """For each of `job_keys` already accepted, the id of the event that holds it."""
    found: dict[str, str] = {}
    for chunk in _chunks(list(dict.fromkeys(job_keys))):
        sql = (
            "SELECT job_key, id FROM events WHERE state = 'accepted' "
            f"AND job_key IN ({_placeholders(len(chunk))})"
        )
        found.update({row[0]: row[1] for row in db.execute(sql, chunk)})
    return found


def _ingest_state(record: IngestRecord, seen_keys: dict[str, str]) -> tuple[str, str | None]:
    """A new event's state and error: invalid, a repeat of its job's status, or accepted.

    An accepted event's job key is added to `seen_keys`, so a later record in the
    same batch is a repeat of it.
    """
    if record.error is not None:
        return "invalid", record.error
    if record.job_key is None:
        return "accepted", None
    if record.job_key in seen_keys:
        return "repeat", (
            f"job {record.job_id} already has a {record.event_type} event "
            f"({seen_keys[record.job_key]}); not delivered twice"
        )
    seen_keys[record.job_key] = record.event_id
    return "accepted", None


_WATCH_COLUMNS = (
    "SELECT job_id, metadata, origin, state, added_at, next_poll_at, interval_seconds, "
    "polls, last_status, last_error FROM watches "
)


def _like_pattern(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def _event_filters(
    *,
    event_id: str | None,
    event_type: str | None,
    state: str | None,
    sink: str | None,
    job_id: str | None,
    source: str | None,
    text: str | None,
) -> tuple[list[str], list[Any]]:
    """The WHERE clauses (on `events e`) and their parameters for `list_events`."""
    clauses: list[str] = []
    params: list[Any] = []
    for column, value in (
        ("e.id", event_id),
        ("e.type", event_type),
        ("e.job_id", job_id),
        ("e.source", source),
    ):
        if value is not None:
            clauses.append(f"{column} = ?")
            params.append(value)
    delivery: list[str] = []
    if sink is not None:
        delivery.append("d.sink = ?")
        params.append(sink)
    if state in DELIVERY_STATES:
        delivery.append("d.state = ?")
        params.append(state)
    elif state is not None:
        clauses.append("e.state = ?")
        params.append(state)
    if delivery:
        clauses.append(
            "EXISTS (SELECT 1 FROM deliveries d WHERE d.event_id = e.id AND "
            + " AND ".join(delivery)
            + ")"
        )
    if text:
        clauses.append(
            "(e.id LIKE ? ESCAPE '\\' OR e.type LIKE ? ESCAPE '\\' "
            "OR e.job_id LIKE ? ESCAPE '\\' OR CAST(e.body AS TEXT) LIKE ? ESCAPE '\\')"
        )
        params += [_like_pattern(text)] * 4
    return clauses, params


def _watch(row: sqlite3.Row) -> Watch:
    return Watch(row[0], json.loads(row[1]), *tuple(row)[2:])


def _claim_fetches(
    db: sqlite3.Connection, *, now: float, limit: int, lease_seconds: float
) -> list[FetchTask]:
    if limit <= 0:
        return []
    rows = db.execute(
        "SELECT id, job_id, type, fetch_attempts FROM events "
        "WHERE fetch_state = 'pending' AND next_fetch_at <= ? "
        "AND (fetch_lease_until IS NULL OR fetch_lease_until <= ?) "
        "ORDER BY next_fetch_at LIMIT ?",
        (now, now, limit),
    ).fetchall()
    tasks = [FetchTask(r["id"], r["job_id"], r["type"], r["fetch_attempts"]) for r in rows]
    db.executemany(
        "UPDATE events SET fetch_lease_until = ? WHERE id = ?",
        [(now + lease_seconds, task.event_id) for task in tasks],
    )
    return tasks


_DELIVERY_COLUMNS = (
    "SELECT d.event_id, d.sink, d.attempts, d.replay, e.type, e.job_id, e.received_at, "
    "e.source, e.body, e.job, e.result_url, w.metadata "
    "FROM deliveries d JOIN events e ON e.id = d.event_id "
    "LEFT JOIN watches w ON w.job_id = e.job_id "
)


def _claim_deliveries(
    db: sqlite3.Connection,
    *,
    now: float,
    free_slots: dict[str, int],
    total_limit: int,
    lease_seconds: float,
    event_id: str | None = None,
) -> list[DeliveryTask]:
    """Lease due deliveries (of one event, if given), within the slots and the total."""
    tasks: list[DeliveryTask] = []
    for sink, slots in free_slots.items():
        limit = min(slots, total_limit - len(tasks))
        if limit <= 0:
            continue
        where = (
            "WHERE d.sink = ? AND d.state = 'pending' AND d.next_attempt_at <= ? "
            "AND (d.lease_until IS NULL OR d.lease_until <= ?) "
            "AND e.fetch_state IN ('none', 'done') "
        )
        params: list[Any] = [sink, now, now]
        if event_id is not None:
            where += "AND d.event_id = ? "
            params.append(event_id)
        rows = db.execute(
            _DELIVERY_COLUMNS + where + "ORDER BY d.next_attempt_at LIMIT ?", [*params, limit]
        ).fetchall()
        tasks.extend(
            DeliveryTask(
                event_id=r["event_id"],
                sink=r["sink"],
                attempts=r["attempts"],
                is_replay=bool(r["replay"]),
                event_type=r["type"],
                job_id=r["job_id"],
                received_at=r["received_at"],
                source=r["source"],
                body=bytes(r["body"]),
                job=json.loads(r["job"]) if r["job"] is not None else None,
                result_url=r["result_url"],
                metadata=json.loads(r["metadata"]) if r["metadata"] else None,
            )
            for r in rows
        )
    db.executemany(
        "UPDATE deliveries SET lease_until = ? WHERE event_id = ? AND sink = ?",
        [(now + lease_seconds, t.event_id, t.sink) for t in tasks],
    )
    return tasks


def _insert_attempt(db: sqlite3.Connection, event_id: str, attempt: Attempt) -> None:
    db.execute(
        "INSERT INTO attempts (event_id, sink, attempt, started_at, duration_ms, outcome, "
        "status_code, error, output_tail) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            event_id,
            attempt.sink,
            attempt.attempt,
            attempt.started_at,
            attempt.duration_ms,
            attempt.outcome,
            attempt.status_code,
            attempt.error,
            attempt.output_tail,
        ),
    )


def _delivery_view(row: sqlite3.Row) -> DeliveryView:
    due_at = row["next_attempt_at"]
    return DeliveryView(
        state=row["state"],
        attempts=row["attempts"],
        next_attempt_at=None if due_at >= AWAITING_FETCH else due_at,
        last_error=row["last_error"],
        is_replay=bool(row["replay"]),
    )


def _event_view(row: sqlite3.Row) -> EventView:
    return EventView(
        id=row["id"],
        received_at=row["received_at"],
        source=row["source"],
        type=row["type"],
        job_id=row["job_id"],
        state=row["state"],
        error=row["error"],
        fetch_state=row["fetch_state"],
        fetch_error=row["fetch_error"],
    )
