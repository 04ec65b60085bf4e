"""SQLite plumbing: the connections and the group-commit writer.

One connection writes; every write goes through one queue that a single thread
drains, so concurrent ingests share one transaction (one fsync) and each caller
is answered only after that commit. Reads use a second connection; WAL lets
them run beside the writer.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiosqlite

from pulse_relay.store.base import BackendBase, answer
from pulse_relay.store.model import (
    IngestOutcome,
    IngestRecord,
    StoreUnavailableError,
)
from pulse_relay.store.sqlite.ingest import insert_events
from pulse_relay.store.sqlite.schema import migrate

# Bound on the number of queued writes that go into one transaction.
MAX_BATCH = 512

# A write runs on the writer thread, inside the group transaction, in a savepoint of its own.
WriteOp = Callable[[sqlite3.Connection], Any]


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


class ReadRows:
    """A read's rows, already fetched whole, read as a cursor's would be."""

    def __init__(self, rows: list[sqlite3.Row]) -> None:
        self._rows = iter(rows)

    async def fetchone(self) -> sqlite3.Row | None:
        return next(self._rows, None)

    async def fetchall(self) -> list[sqlite3.Row]:
        return list(self._rows)

    async def __aiter__(self) -> AsyncIterator[sqlite3.Row]:
        for row in self._rows:
            yield row


@dataclass
class _Queued:
    future: asyncio.Future[Any]
    record: IngestRecord | None = None
    op: WriteOp | None = None


class SQLitePlumbing(BackendBase):
    """The relay's SQLite store; open() before use, close() after.

    Writes go through one connection owned by one thread, fed by a plain thread
    queue: the thread takes whatever is queued, commits it as one transaction
    and answers the whole batch with a single wake-up of the event loop. (Through
    aiosqlite each statement is its own hand-off, and under load every one of
    them waits behind the request work queued on the loop: that, not the
    fsync, limited ingest; an asyncio queue drained by a task that hands each
    batch to an executor costs the loop a wake-up per write and three per
    batch.) Reads use aiosqlite on a second connection; WAL lets them run beside
    the writer.
    """

    def __init__(
        self,
        path: Path | str,
        *,
        synchronous: str = "FULL",
        busy_timeout_seconds: float = 5.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__()
        self.path = Path(path)
        self._synchronous = synchronous
        self._busy_timeout_seconds = busy_timeout_seconds
        self._clock = clock
        self._db: aiosqlite.Connection | None = None
        self._writer_db: sqlite3.Connection | None = None
        self._executor: ThreadPoolExecutor | None = None
        # None is the writer thread's signal to stop, queued behind every write.
        self._jobs: queue.SimpleQueue[_Queued | None] = queue.SimpleQueue()
        self._writer: threading.Thread | None = None
        self._closing = False

    @property
    def location(self) -> str:
        """The database file's path."""
        return str(self.path)

    def add_wake_listener(self, listener: Callable[[], None]) -> None:
        """Nothing to listen to: no other relay writes to this file."""

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
        self._writer = threading.Thread(
            target=self._write_thread, args=(loop,), name="store-writer", daemon=True
        )
        self._writer.start()

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
            migrate(db, self.path)
        except BaseException:
            db.close()
            raise
        return db

    async def close(self) -> None:
        """Finish queued writes, stop the writer, and close the connections."""
        self._closing = True
        writer, self._writer = self._writer, None
        if writer is not None:
            # Every write queued before the signal is committed and answered first.
            self._jobs.put(None)
            await asyncio.get_running_loop().run_in_executor(self._executor, writer.join)
        await self._close_connections()

    async def _close_connections(self) -> None:
        # Readers that start from now on find the store closed, not a closing connection.
        db, self._db = self._db, None
        if db is not None:
            await db.close()
        if self._executor is not None:
            writer_db, self._writer_db = self._writer_db, None
            if writer_db is not None:
                await asyncio.get_running_loop().run_in_executor(self._executor, writer_db.close)
            self._executor.shutdown(wait=True)
            self._executor = None

    @property
    def db(self) -> aiosqlite.Connection:
        """The reading connection."""
        if self._db is None:
            raise StoreUnavailableError("store is not open")
        return self._db

    @contextlib.asynccontextmanager
    async def read(self, sql: str, parameters: Sequence[Any] = ()) -> AsyncIterator[ReadRows]:
        """The rows of `sql` on the reading connection. A store closed meanwhile (aiosqlite
        says ValueError, sqlite3 ProgrammingError) or a read SQLite cannot do (out of file
        descriptors, an I/O error) raises StoreUnavailableError."""
        db = self.db
        try:
            # Executed and read whole in one call on the connection's thread: a statement
            # left open across an await would pin every other read on this connection to
            # its snapshot, and a commit made meanwhile would be missing from them.
            rows = await db.execute_fetchall(sql, parameters)
        except (ValueError, sqlite3.ProgrammingError) as error:
            if self._db is db and not self._closing:
                raise
            raise StoreUnavailableError("store is closed") from error
        except sqlite3.OperationalError as error:
            raise StoreUnavailableError(f"store read failed: {error}") from error
        yield ReadRows(list(rows))

    # -- the single writer ---------------------------------------------

    def _queue_record(self, record: IngestRecord) -> asyncio.Future[IngestOutcome]:
        future: asyncio.Future[IngestOutcome] = asyncio.get_running_loop().create_future()
        self._enqueue(_Queued(future=future, record=record))
        return future

    async def write(self, op: WriteOp) -> Any:
        """Run `op` in the next group transaction, in a savepoint of its own; return its result."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._enqueue(_Queued(future=future, op=op))
        return await future

    def _enqueue(self, item: _Queued) -> None:
        if self._writer is None or self._closing:
            raise StoreUnavailableError("store is closed")
        self._jobs.put(item)

    def _write_thread(self, loop: asyncio.AbstractEventLoop) -> None:
        """The writer: take what is queued, commit it as one transaction, answer the batch."""
        stopping = False
        while not stopping:
            first = self._jobs.get()
            if first is None:
                return
            batch = [first]
            while len(batch) < MAX_BATCH:
                try:
                    item = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stopping = True
                    break
                batch.append(item)
            outcomes = self._commit_or_fail(batch)
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting
                loop.call_soon_threadsafe(answer, [item.future for item in batch], outcomes)

    def _commit_or_fail(self, batch: list[_Queued]) -> Sequence[tuple[bool, Any]]:
        try:
            return self._commit(batch)
        except Exception as error:
            if len(batch) > 1 and not isinstance(error, sqlite3.OperationalError):
                # One member broke the transaction (the check before queueing missed
                # something): each is committed alone, so that only it fails. A store
                # that is locked, full or failing (OperationalError) would fail each
                # alone too, only after a busy timeout per write.
                return [outcome for item in batch for outcome in self._commit_or_fail([item])]
            # A failed transaction fails every write in it: none of them is on disk.
            failure: BaseException = error
            if isinstance(error, sqlite3.Error):
                failure = StoreUnavailableError(f"store write failed: {error}")
            return [(False, failure)] * len(batch)

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
                inserted = insert_events(db, [item.record for item in records])  # type: ignore[misc]
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

    async def schema_version(self) -> int:
        """The schema version the database is at."""
        async with self.read("PRAGMA user_version") as cursor:
            row = await cursor.fetchone()
        return int(row[0]) if row else 0
