"""Round trips to PostgreSQL, counted on the wire by a TCP proxy on 127.0.0.1.

A relay pointed at the proxy instead of the server talks to the server through it.
Per connection, every time the client speaks after the server has (or first), one
round trip begins: a pipeline of statements sent together and answered together is
one; a statement whose answer the client awaits before it sends the next is one
each. Notifications the server sends unasked (LISTEN) start none. The count is the
protocol's, whatever the code that produced it, so it measures the store rather
than trusting its author's estimate.

`CountingProxy(port)` runs on a thread of its own, so both the synchronous
benchmarks and the asynchronous tests can use it.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from typing import Self

CHUNK_BYTES = 65_536


class CountingProxy:
    """Forwards 127.0.0.1:`port` (chosen at start) to 127.0.0.1:`target_port`, counting."""

    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self._target = (target_host, target_port)
        self._lock = threading.Lock()
        self._round_trips = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self.port = 0

    @property
    def round_trips(self) -> int:
        """Round trips begun through the proxy since it started (or since `reset`)."""
        with self._lock:
            return self._round_trips

    def reset(self) -> int:
        """The count so far; counting starts again from zero."""
        with self._lock:
            count, self._round_trips = self._round_trips, 0
        return count

    def url(self, url: str) -> str:
        """`url` (a postgresql:// URL of the target) rewritten to go through the proxy."""
        host, port = self._target
        return url.replace(f"@{host}:{port}/", f"@127.0.0.1:{self.port}/")

    def __enter__(self) -> Self:
        self._thread.start()
        started = asyncio.run_coroutine_threadsafe(self._start(), self._loop)
        self.port = started.result(timeout=10)
        return self

    def __exit__(self, *_: object) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    async def _start(self) -> int:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return int(self._server.sockets[0].getsockname()[1])

    async def _stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5)

    async def _serve(
        self, client_in: asyncio.StreamReader, client_out: asyncio.StreamWriter
    ) -> None:
        try:
            server_in, server_out = await asyncio.open_connection(*self._target)
        except OSError:
            client_out.close()
            return
        # Who spoke last on this connection: a client chunk after the server's answer
        # (or as the very first) begins a round trip.
        turn = {"client_spoke_last": False}
        await asyncio.gather(
            self._pump(client_in, server_out, turn, from_client=True),
            self._pump(server_in, client_out, turn, from_client=False),
            return_exceptions=True,
        )

    async def _pump(
        self,
        source: asyncio.StreamReader,
        sink: asyncio.StreamWriter,
        turn: dict[str, bool],
        *,
        from_client: bool,
    ) -> None:
        try:
            while chunk := await source.read(CHUNK_BYTES):
                if from_client and not turn["client_spoke_last"]:
                    with self._lock:
                        self._round_trips += 1
                turn["client_spoke_last"] = from_client
                sink.write(chunk)
                await sink.drain()
        finally:
            sink.close()
