"""aiohttp's connection handling, adapted for the public edge (and the admin listener).

aiohttp answers a request it cannot parse itself, before any handler runs; these
classes make that answer the listener's own (a JSON 400 that names an over-long
header but never echoes it, counted, sampled in the log), set the deadline for
request headers, and close a gap in its C parser. They rely on two internals of
aiohttp 3's `RequestHandler` (the queue of parsed messages and its error marker,
`_ErrInfo`), which tests/test_ingress_edge.py and tests/test_admin_edge.py exercise
over real sockets.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError, LineTooLong
from aiohttp.streams import StreamReader
from aiohttp.web_protocol import RequestHandler, _ErrInfo

MALFORMED = "malformed HTTP request"
# Called with the peer address and the reason for each request that is not valid HTTP
# (MALFORMED, or what malformed_reason says); returns the JSON document of the 400.
MalformedHook = Callable[[str | None, str], dict[str, Any]]
# A header name as RFC 9110 spells it, short enough to repeat in an answer.
_HEADER_NAME = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]{1,100}")


def malformed_reason(error: BaseException, received: bytes) -> str:
    """Why aiohttp could not parse a request, for its answer: an over-long header is
    named when `received` (the bytes that broke the parser) shows its name; the value
    is never repeated (aiohttp's own answer echoes it, and it may be a secret)."""
    if not isinstance(error, LineTooLong):
        return MALFORMED
    limit = error.args[1]
    name = _long_header_name(error.args[0], received)
    if name is None:
        return f"the request line or a header is longer than {limit} bytes"
    return f"header {name} is longer than {limit} bytes"


def _long_header_name(start: object, received: bytes) -> str | None:
    # aiohttp reports the first 100 bytes of the field that is too long, then "...":
    # its C parser the value alone, its Python parser the whole line. The name is
    # what precedes the colon on that line, when the line's start was received.
    if not isinstance(start, (bytes, bytearray)):
        return None
    start = bytes(start).removesuffix(b"...")
    at = received.find(start) if start else -1
    line_start = received.rfind(b"\n", 0, at) if at > 0 else -1
    if line_start < 0:
        return None
    name, colon, _ = received[line_start + 1 : at + len(start)].partition(b":")
    if not colon or _HEADER_NAME.fullmatch(name) is None:
        return None
    return name.decode("ascii")


class IngressProtocol(RequestHandler):
    """aiohttp's connection handler, with HTTP framing errors answered as the ingress answers.

    aiohttp answers a request it cannot parse with a plain-text 400 and logs a
    traceback at error level; here it is a JSON 400, counted, logged at most a
    few times a second. And when the framing breaks *inside* a body being read
    (a malformed chunk), aiohttp's C parser drops the body's stream without
    telling the handler reading it, which would then wait for its read timeout:
    the stream is failed here at once.
    """

    __slots__ = ("_malformed", "_on_malformed", "_open_body")

    def __init__(self, manager: web.Server, *, on_malformed: MalformedHook, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._on_malformed = on_malformed
        self._open_body: StreamReader | None = None
        # The last parse error and its reason, judged while the bytes were at hand.
        self._malformed: tuple[BaseException, str] | None = None

    def data_received(self, data: bytes) -> None:
        """Parse as aiohttp does; fail the body in progress if its framing broke."""
        messages = self._messages
        queued = len(messages)
        super().data_received(data)
        if len(messages) == queued:
            # Nothing new was parsed (a body's next bytes, aiohttp's empty feed on resume).
            return
        for message, payload in list(messages)[queued:]:
            if not isinstance(message, _ErrInfo):
                self._open_body = payload
                continue
            self._malformed = (message.exc, malformed_reason(message.exc, data))
            body = self._open_body
            if body is not None and not body.is_eof():
                body.set_exception(message.exc)
                # At EOF, aiohttp does not wait to read the rest after the answer.
                body.feed_eof()

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """A JSON 400 for a request that is not valid HTTP; anything else as aiohttp does."""
        if not isinstance(exc, HttpProcessingError) or request.writer.output_size > 0:
            return super().handle_error(request, status, exc, message)
        judged = self._malformed
        reason = judged[1] if judged is not None and judged[0] is exc else MALFORMED
        response = web.json_response(self._on_malformed(request.remote, reason), status=status)
        response.force_close()
        return response


class IngressServer(web.Server):
    """aiohttp's server, building an IngressProtocol for each connection."""

    def __init__(
        self,
        handler: Any,
        *,
        request_factory: Any,
        on_malformed: MalformedHook,
        protocol_options: dict[str, Any],
    ) -> None:
        super().__init__(handler, request_factory=request_factory, **protocol_options)
        self._protocol_options = protocol_options
        self._on_malformed = on_malformed
        self._event_loop = asyncio.get_running_loop()

    def __call__(self) -> RequestHandler:
        return IngressProtocol(
            self, on_malformed=self._on_malformed, loop=self._event_loop, **self._protocol_options
        )


class IngressRunner(web.AppRunner):
    """An AppRunner whose server answers malformed HTTP as the ingress does."""

    def __init__(
        self,
        app: web.Application,
        *,
        on_malformed: MalformedHook,
        keepalive_timeout_seconds: float,
        shutdown_timeout: float,
        auto_decompress: bool = False,
    ) -> None:
        super().__init__(app, handle_signals=False, shutdown_timeout=shutdown_timeout)
        self._on_malformed = on_malformed
        self._keepalive_timeout_seconds = keepalive_timeout_seconds
        self._auto_decompress = auto_decompress

    async def _make_server(self) -> web.Server:
        # AppRunner's own server carries the application's handler; only the class of
        # connection handler it builds differs.
        plain = await super()._make_server()
        return IngressServer(
            plain.request_handler,
            request_factory=plain.request_factory,
            on_malformed=self._on_malformed,
            protocol_options={
                "access_log": None,
                # The ingress reads the body as sent; a compressed one is refused (415).
                "auto_decompress": self._auto_decompress,
                # See server.build_app: this timer is also the deadline for request headers.
                "keepalive_timeout": self._keepalive_timeout_seconds,
            },
        )
