"""A raw HTTP/1.1 client for tests that must control every byte sent."""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass
from typing import Any

PATH = "/webhooks/pulse"


@dataclass
class Answer:
    """One HTTP response as read off the socket."""

    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def document(self) -> dict[str, Any]:
        parsed: dict[str, Any] = json.loads(self.body)
        return parsed


def request_bytes(
    body: bytes,
    headers: dict[str, str] | list[tuple[str, str]],
    *,
    chunked: bool = False,
    path: str = PATH,
    keep_alive: bool = False,
) -> bytes:
    """A POST as a client would write it; the body is sent as is (or as one chunk)."""
    pairs = list(headers.items()) if isinstance(headers, dict) else list(headers)
    pairs.append(("Host", "127.0.0.1"))
    if not keep_alive:
        pairs.append(("Connection", "close"))
    if chunked:
        pairs.append(("Transfer-Encoding", "chunked"))
        body = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body) if body else b"0\r\n\r\n"
    elif not any(name.lower() == "content-length" for name, _ in pairs):
        pairs.append(("Content-Length", str(len(body))))
    head = f"POST {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in pairs) + "\r\n"
    return head.encode("latin-1") + body


async def read_answer(reader: asyncio.StreamReader) -> Answer:
    """Read one response (status line, headers, Content-Length body)."""
    head = await reader.readuntil(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    body = await reader.readexactly(length) if length else b""
    return Answer(int(status_line.split()[1]), headers, body)


async def close(writer: asyncio.StreamWriter) -> None:
    """Close a connection and wait (briefly) until it is closed."""
    writer.close()
    with contextlib.suppress(OSError, TimeoutError):
        await asyncio.wait_for(writer.wait_closed(), 10)


async def exchange(port: int, data: bytes) -> Answer:
    """Send `data` on a fresh connection to 127.0.0.1:`port` and read the answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        return await asyncio.wait_for(read_answer(reader), 30)
    finally:
        await close(writer)
