"""PostgreSQL plumbing: the pool, the group-commit writer, the NOTIFY listener.

Ingests that arrive together share one transaction, as on SQLite; every other
write is its own short transaction on a pooled connection, most of them a single
statement. Round trips are what a relay on PostgreSQL waits for, so each operation
makes as few as it can: a group's ingest is two (its reads, then its writes and the
commit, pipelined), and a pooled connection is pinged before use only when it has
been idle a while. Any relay's new work is announced with NOTIFY (one per
transaction, so a burst is one wake; none for work the committing relay has just
claimed itself), and a
dedicated connection LISTENs and reconnects by itself; the dispatcher's poll
stays the backstop for a notification lost while that connection was down.
While the server is unreachable, ingests are refused (503) after a short wait
rather than the pool's full one, and the pool keeps retrying without letting its
backoff grow past a few seconds, so the relay answers again soon after the server
is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
import weakref
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import AsyncConnection
from psycopg.pq import ConnStatus, TransactionStatus
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from pulse_relay.logs import get_logger, outage_log
from pulse_relay.redaction import mask_url
from pulse_relay.store.base import BackendBase, answer
from pulse_relay.store.model import (
    IngestOutcome,
    IngestRecord,
    StoreUnavailableError,
)
from pulse_relay.store.postgres.finishes import DeliveryFinishes
from pulse_relay.store.postgres.ingest import insert_events
from pulse_relay.store.postgres.schema import migrate, schema_version

log = get_logger(__name__)

MAX_BATCH = 512
WORK_CHANNEL = "pulse_relay_work"
# How long a caller waits for a pooled connection before the store counts as unavailable.
CONNECT_TIMEOUT_SECONDS = 5.0
# Once the store has failed, the writer waits this long instead: during an outage every
# webhook is answered 503 at once rather than held for the whole timeout.
UNREACHABLE_WAIT_SECONDS = 0.5
# The pool retries a failed connection with a doubling delay; left at its default it
# can still be waiting tens of seconds after PostgreSQL is back. Giving up after this
# long lets the next caller start a fresh series whose first attempt is immediate.
RECONNECT_GIVE_UP_SECONDS = 2.0
LISTEN_RETRY_SECONDS = 1.0
# A connection that served an operation this recently is handed out again without a
# ping (a round trip): a server that closed it meanwhile (shutdown, restart) is seen
# for free, by reading what the server sent; only a longer idle connection is pinged.
IDLE_PING_SECONDS = 5.0


@contextlib.asynccontextmanager
async def pipelined_transaction(conn: AsyncConnection[Any]) -> AsyncIterator[None]:
    """One transaction on `conn` whose statements go to the server together: BEGIN, those
    the block executes, COMMIT. The server is waited for only where the block reads a
    result, and once at the end; a failure rolls the transaction back."""
    # BEGIN and COMMIT as statements: psycopg's transaction() waits for the server at
    # each end of a block in pipeline mode, two round trips more.
    try:
        async with conn.pipeline():
            await conn.execute("BEGIN")
            yield
            await conn.execute("COMMIT")
    finally:
        if conn.info.transaction_status in (TransactionStatus.INTRANS, TransactionStatus.INERROR):
            with contextlib.suppress(psycopg.Error):
                await conn.execute("ROLLBACK")


@dataclass
class _Queued:
    future: asyncio.Future[IngestOutcome]
    record: IngestRecord


class PostgresPlumbing(BackendBase):
    """The shared store on PostgreSQL; open() before use, close() after."""

    backend = "postgresql"

    def __init__(
        self,
        url: str,
        *,
        pool_size: int = 10,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__()
        self._url = url
        self._clock = clock
        self._pool = AsyncConnectionPool(
            url,
            min_size=1,
            max_size=pool_size,
            open=False,
            kwargs={"autocommit": True},
            check=self._check_connection,
            configure=self._configure_connection,
            timeout=CONNECT_TIMEOUT_SECONDS,
            reconnect_timeout=RECONNECT_GIVE_UP_SECONDS,
        )
        # When each pooled connection last served an operation without failing.
        self._used_at: weakref.WeakKeyDictionary[AsyncConnection[Any], float] = (
            weakref.WeakKeyDictionary()
        )
        # Pooled connections the server said it is closing (see `_check_connection`).
        self._closing: weakref.WeakSet[AsyncConnection[Any]] = weakref.WeakSet()
        # False from a failed connection until the next one that works.
        self._is_reachable = True
        # Every lease this relay takes carries its id, so it releases its own alone.
        self.relay_id = uuid.uuid4().hex
        self._claims = 0
        self._queue: asyncio.Queue[_Queued] = asyncio.Queue()
        self._writer: asyncio.Task[None] | None = None
        self._listener: asyncio.Task[None] | None = None
        self._wake_listeners: list[Callable[[], None]] = []
        # Deliveries' outcomes, recorded together while one statement runs (finishes.py).
        self._finishes = DeliveryFinishes(self.connection, clock)
        # The listener retries every LISTEN_RETRY_SECONDS while the server is down.
        self._outage_log = outage_log(log, clock=clock)

    @property
    def location(self) -> str:
        """The database URL with its password masked."""
        return mask_url(self._url)

    def add_wake_listener(self, listener: Callable[[], None]) -> None:
        """Call `listener` whenever any relay sharing the store has committed new work."""
        self._wake_listeners.append(listener)

    def next_token(self) -> str:
        """A fresh lease token, `<relay_id>:<claim number>`, for the rows of one claim.

        Unique across relays (the relay id is random), so a late relay's finish cannot
        match another relay's claim; its prefix lets `release_leases` find this relay's
        own leases. See `pulse_relay.store.contract`."""
        self._claims += 1
        return f"{self.relay_id}:{self._claims}"

    async def open(self) -> None:
        """Connect, migrate (once across relays), start the writer and the listener."""
        try:
            await self._pool.open(wait=True, timeout=CONNECT_TIMEOUT_SECONDS)
            async with self.connection() as conn:
                await migrate(conn, self.location)
        except PoolTimeout as error:
            await self._pool.close()
            raise StoreUnavailableError(f"cannot reach {self.location}: {error}") from error
        except BaseException:
            await self._pool.close()
            raise
        self._writer = asyncio.create_task(self._write_loop(), name="store-writer")
        self._listener = asyncio.create_task(self._listen_loop(), name="store-listener")

    async def close(self) -> None:
        """Finish queued ingests and finishes, stop the background tasks, close the pool."""
        if self._writer is not None:
            await self._queue.join()
        await self._finishes.close()
        for task in (self._writer, self._listener):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._writer = self._listener = None
        await self._pool.close()

    @contextlib.asynccontextmanager
    async def connection(
        self, *, timeout_seconds: float = CONNECT_TIMEOUT_SECONDS
    ) -> AsyncIterator[AsyncConnection[Any]]:
        """A pooled connection; connection failures become StoreUnavailableError."""
        try:
            async with self._pool.connection(timeout=timeout_seconds) as conn:
                self._is_reachable = True
                yield conn
                self._used_at[conn] = time.monotonic()
        except (PoolTimeout, psycopg.OperationalError, psycopg.InterfaceError) as error:
            self._is_reachable = False
            raise StoreUnavailableError(f"store unreachable: {error}") from error

    async def _configure_connection(self, conn: AsyncConnection[Any]) -> None:
        """Note a new pooled connection's FATAL error, which an idle connection gets as
        a notice when the server ends it (shutdown, restart, terminated backend)."""
        ref = weakref.ref(conn)

        def on_notice(notice: psycopg.errors.Diagnostic) -> None:
            closing = ref()
            if closing is not None and notice.severity_nonlocalized in ("FATAL", "PANIC"):
                self._closing.add(closing)

        conn.add_notice_handler(on_notice)

    async def _check_connection(self, conn: AsyncConnection[Any]) -> None:
        """Raise unless `conn` still works (the pool then discards it and tries another)."""
        # Whatever the server sent an idle connection (the error saying it ends it, then
        # the end of the stream) is read and parsed without waiting.
        conn.pgconn.consume_input()
        conn.pgconn.is_busy()
        if conn.pgconn.status != ConnStatus.OK or conn in self._closing:
            raise psycopg.OperationalError("the server closed the connection")
        if time.monotonic() - self._used_at.get(conn, 0.0) > IDLE_PING_SECONDS:
            await AsyncConnectionPool.check_connection(conn)

    async def schema_version(self) -> int:
        """The schema version the database is at."""
        async with self.connection() as conn:
            return await schema_version(conn)

    async def check_writable(self) -> None:
        """Raise StoreUnavailableError unless a write can be committed now."""
        async with self.connection() as conn:
            await conn.execute(
                "INSERT INTO probes (name, written_at) VALUES (%s, %s) "
                "ON CONFLICT (name) DO UPDATE SET written_at = excluded.written_at",
                (f"ready:{self.relay_id}", self._clock()),
            )

    async def take_back_leases(self) -> None:
        """Nothing: a shared queue's leases belong to live relays until they expire."""

    def _queue_record(self, record: IngestRecord) -> asyncio.Future[IngestOutcome]:
        if self._writer is None:
            raise StoreUnavailableError("store is closed")
        future: asyncio.Future[IngestOutcome] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Queued(future, record))
        return future

    async def _write_loop(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < MAX_BATCH and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                await self._commit(batch)
            finally:
                for _ in batch:
                    self._queue.task_done()

    async def _commit(self, batch: list[_Queued]) -> None:
        outcomes = await self._commit_or_fail([item.record for item in batch])
        answer([item.future for item in batch], outcomes)

    async def _commit_or_fail(self, records: list[IngestRecord]) -> list[tuple[bool, Any]]:
        """One transaction for `records`: an outcome per record, or the exception it failed with."""
        wait_seconds = CONNECT_TIMEOUT_SECONDS if self._is_reachable else UNREACHABLE_WAIT_SECONDS
        try:
            async with self.connection(timeout_seconds=wait_seconds) as conn:
                async with pipelined_transaction(conn):
                    write = await insert_events(conn, records, WORK_CHANNEL, self.relay_id)
                outcomes = await write.outcomes()
        except Exception as error:
            if len(records) > 1 and not isinstance(error, StoreUnavailableError):
                # One record broke the transaction (the check before queueing missed
                # something): each is committed alone, so that only it fails. An
                # unreachable server (StoreUnavailableError) fails them all at once.
                return [o for record in records for o in await self._commit_or_fail([record])]
            # A failed transaction fails every ingest in it: none of them is stored.
            failure: BaseException = error
            if isinstance(error, psycopg.Error):
                failure = StoreUnavailableError(f"store write failed: {error}")
            return [(False, failure)] * len(records)
        if "accepted" in outcomes:
            self._wake()
        return [(True, outcome) for outcome in outcomes]

    async def notify_work(self, conn: AsyncConnection[Any]) -> None:
        """Wake every other relay when the transaction on `conn` commits; the caller wakes
        this one (`_wake`) once it has."""
        await conn.execute("SELECT pg_notify(%s, %s)", (WORK_CHANNEL, self.relay_id))

    async def _listen_loop(self) -> None:
        while True:
            try:
                async with await AsyncConnection.connect(self._url, autocommit=True) as conn:
                    await conn.execute(f"LISTEN {WORK_CHANNEL}")
                    # Work may have been announced while no one listened.
                    self._wake()
                    async for notify in conn.notifies():
                        # This relay's own commits woke it already, without the wait
                        # for the server (and a second claim round it would cost).
                        if notify.payload != self.relay_id:
                            self._wake()
            except psycopg.Error as error:
                self._outage_log.emit(
                    "store:listener",
                    "warning",
                    "store listener lost its connection; reconnecting",
                    reason=str(error),
                )
            await asyncio.sleep(LISTEN_RETRY_SECONDS)

    def _wake(self) -> None:
        for listener in self._wake_listeners:
            listener()
