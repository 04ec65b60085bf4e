"""The Pulse API pass-through (proxy/) on a real port, against real upstreams."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import io
import json
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
import structlog
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from pulse_relay.admin.auth import AdminAuth, check_request
from pulse_relay.admin.errors import Unauthorized
from pulse_relay.emulator import Fault, PulseEmulator
from pulse_relay.metrics import Metrics
from pulse_relay.proxy.autowatch import WatchRecorder
from pulse_relay.proxy.capture import META_HEADERS_MAX_BYTES
from pulse_relay.proxy.forward import WATCH_HEADER, ProxyConfig, PulseProxy
from pulse_relay.store import SQLiteStore
from tests.helpers import async_sdk_client, free_port, wait_for

API_KEY = "test-api-key"
KEY = {"x-api-key": API_KEY}

Answer = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class Seen:
    """What the upstream received."""

    method: str
    path_qs: str
    headers: list[tuple[str, str]]
    size_bytes: int
    sha256: str


@dataclass
class Upstream:
    """A scriptable stand-in for the Pulse API that records what reaches it."""

    answer: Answer | None = None
    seen: list[Seen] = field(default_factory=list)
    started: int = 0
    # Handlers cancelled because the relay closed their connection.
    cancelled: int = 0
    url: str = ""
    _runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        try:
            return await self._record_and_answer(request)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise

    async def _record_and_answer(self, request: web.Request) -> web.StreamResponse:
        self.started += 1
        digest = hashlib.sha256()
        size_bytes = 0
        while chunk := await request.content.read(65536):
            digest.update(chunk)
            size_bytes += len(chunk)
        self.seen.append(
            Seen(
                request.method,
                request.path_qs,
                list(request.headers.items()),
                size_bytes,
                digest.hexdigest(),
            )
        )
        if self.answer is None:
            return web.json_response({"job_id": "job-upstream-1", "status": "pending"})
        return await self.answer(request)


async def hang(request: web.Request) -> web.StreamResponse:
    """An upstream that never answers (until its connection is closed)."""
    await asyncio.Event().wait()
    raise AssertionError("unreachable")


@dataclass
class Proxied:
    """A pass-through on a real port with its own store."""

    url: str
    store: SQLiteStore
    metrics: Metrics
    recorder: WatchRecorder
    woken: list[int]

    def outcome_count(self, outcome: str) -> float:
        value = self.metrics.registry.get_sample_value(
            "pulse_relay_proxy_requests_total", {"outcome": outcome}
        )
        return value or 0.0


StartProxy = Callable[..., Awaitable[Proxied]]


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    running = Upstream()
    await running.start()
    yield running
    await running.stop()


@pytest.fixture
async def start_proxy(tmp_path: Path) -> AsyncIterator[StartProxy]:
    cleanups: list[Callable[[], Awaitable[None]]] = []

    async def start(
        base_url: str,
        *,
        max_body_bytes: int = 10_000_000,
        timeout_seconds: float = 10.0,
        busy_timeout_seconds: float = 5.0,
        concurrency: int = 16,
    ) -> Proxied:
        store = SQLiteStore(tmp_path / "relay.db", busy_timeout_seconds=busy_timeout_seconds)
        await store.open()
        cleanups.append(store.close)
        metrics = Metrics()
        woken: list[int] = []
        recorder = WatchRecorder(
            store,
            metrics=metrics,
            interval_seconds=lambda: 0.1,
            on_recorded=lambda: woken.append(1),
            retry_initial_seconds=0.05,
            retry_max_seconds=0.2,
        )
        proxy = PulseProxy(
            ProxyConfig(base_url, max_body_bytes, timeout_seconds, concurrency),
            recorder=recorder,
            metrics=metrics,
        )
        app = web.Application()
        proxy.install(app)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        cleanups.append(runner.cleanup)
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        url = f"http://127.0.0.1:{runner.addresses[0][1]}/pulse"
        return Proxied(url, store, metrics, recorder, woken)

    yield start
    for cleanup in reversed(cleanups):
        await cleanup()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        yield session


# -- the SDK through the pass-through ------------------------------------------------


async def test_sdk_submission_is_forwarded_and_watched_with_its_audit_metadata(
    emulator: PulseEmulator, start_proxy: StartProxy
) -> None:
    proxied = await start_proxy(emulator.base_url)
    document = b"%PDF-1.7 " + bytes(range(256)) * 300
    meta = {"X-Pulse-Relay-Meta-User-Id": "u-42", "X-Pulse-Relay-Meta-Destination": "crm/991"}
    async with async_sdk_client(proxied.url, API_KEY, headers=meta) as client:
        answer = await client.extract(
            file=("invoice.pdf", io.BytesIO(document), "application/pdf"),
            async_=True,
            pages="1-3",
            figure_processing={"description": True},
        )

    (submission,) = emulator.submissions
    assert answer.job_id == submission.job_id
    assert submission.path == "/extract"
    assert submission.headers["x-api-key"] == API_KEY
    assert not any(name.lower().startswith("x-pulse-relay") for name in submission.headers)
    assert submission.headers["Host"] == emulator.base_url.removeprefix("http://")
    (watch,) = await proxied.store.list_watches()
    assert watch.job_id == answer.job_id
    assert watch.origin == "proxy"
    assert watch.state == "active"
    request = watch.metadata.pop("request")
    assert watch.metadata == {"user_id": "u-42", "destination": "crm/991"}
    assert request["method"] == "POST"
    assert request["path"] == "/extract"
    assert request["submitted_at"].endswith("Z")
    assert request["fields"] == {
        "pages": "1-3",
        "async": "true",
        "figureProcessing": {"description": True},
    }
    assert request["files"] == [
        {
            "field": "file",
            "filename": "invoice.pdf",
            "size_bytes": len(document),
            "sha256": hashlib.sha256(document).hexdigest(),
        }
    ]
    assert proxied.woken
    assert proxied.outcome_count("watched") == 1


async def test_reads_and_4xx_answers_pass_through_and_watch_nothing(
    emulator: PulseEmulator, start_proxy: StartProxy, http: aiohttp.ClientSession
) -> None:
    emulator.add_job("job-7", status="completed")
    proxied = await start_proxy(emulator.base_url)

    async with http.get(f"{proxied.url}/job/job-7?fields=all", headers=KEY) as read:
        read_body = await read.json()
    async with http.post(f"{proxied.url}/extract", data={"fileUrl": "https://x/a.pdf"}) as denied:
        denied_body = await denied.read()
    async with http.post(f"{proxied.url}/extract", data={"pages": "1"}, headers=KEY) as refused:
        refused_body = await refused.json()

    assert read.status == 200
    assert read_body["job_id"] == "job-7"
    assert emulator.requests[0].path == "/job/job-7"
    assert denied.status == 401
    assert json.loads(denied_body) == {"error": "Invalid or missing API key"}
    assert refused.status == 400
    assert refused_body == {"error": "file or file_url is required"}
    assert WATCH_HEADER not in denied.headers
    assert await proxied.store.list_watches() == []
    assert proxied.outcome_count("forwarded") == 3


# -- forwarding, byte for byte -------------------------------------------------------


async def test_method_path_query_headers_and_body_reach_the_upstream_unchanged(
    upstream: Upstream, start_proxy: StartProxy, http: aiohttp.ClientSession
) -> None:
    proxied = await start_proxy(upstream.url)
    body = b"\x00\x01binary" * 5000
    headers = {
        **KEY,
        "Content-Type": "application/octet-stream",
        "X-Custom": "kept",
        "Connection": "keep-alive, X-Hop",
        "X-Hop": "dropped because Connection names it",
        "Keep-Alive": "timeout=5",
        "Accept-Encoding": "br, gzip;q=0.8, zstd",
        "X-Pulse-Relay-Meta-Note": "kept by the relay",
    }
    async with http.put(
        f"{proxied.url}/some/path%20with%2Fcodes?a=1&b=%C3%A9",
        data=body,
        headers=headers,
        skip_auto_headers={"User-Agent", "Accept"},
    ) as answer:
        assert answer.status == 200

    (seen,) = upstream.seen
    names = {name.lower(): value for name, value in seen.headers}
    assert seen.method == "PUT"
    assert seen.path_qs == "/some/path%20with%2Fcodes?a=1&b=%C3%A9"
    assert seen.size_bytes == len(body)
    assert seen.sha256 == hashlib.sha256(body).hexdigest()
    assert names["x-api-key"] == API_KEY
    assert names["x-custom"] == "kept"
    assert names["content-length"] == str(len(body))
    assert names["accept-encoding"] == "gzip;q=0.8"
    assert "x-hop" not in names
    assert "keep-alive" not in names
    assert "x-pulse-relay-meta-note" not in names
    assert "user-agent" not in names  # nothing the caller did not send
    assert "accept" not in names
    assert await proxied.store.list_watches() == []  # not a POST


async def test_answer_headers_and_compressed_body_come_back_unchanged_and_are_read(
    upstream: Upstream, start_proxy: StartProxy, http: aiohttp.ClientSession
) -> None:
    compressed = gzip.compress(
        json.dumps({"batch_job_id": "batch-9", "status": "pending"}).encode()
    )

    async def answer(request: web.Request) -> web.StreamResponse:
        response = web.Response(
            status=202,
            body=compressed,
            headers={"Content-Encoding": "gzip", "Content-Type": "application/json", "X-Req": "r1"},
        )
        response.headers.add("Set-Cookie", "a=1; Path=/")
        response.headers.add("Set-Cookie", "b=2; Path=/")
        return response

    upstream.answer = answer
    proxied = await start_proxy(upstream.url)
    async with http.post(f"{proxied.url}/batch/extract", json={"files": ["x"]}, headers=KEY) as got:
        raw = await got.read()

    assert got.status == 202
    assert raw == compressed
    assert got.headers["Content-Encoding"] == "gzip"
    assert got.headers["X-Req"] == "r1"
    assert "Set-Cookie" not in got.headers  # the admin origin's cookies are not Pulse's to set
    (watch,) = await proxied.store.list_watches()
    assert watch.job_id == "batch-9"
    assert watch.metadata["request"]["fields"] == {"files": ["x"]}


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("text/plain", b'{"job_id": "job-in-text"}'),
        ("application/json", b'{"id": "no-job-id-here"}'),
        ("application/json", b'{"job_id": "not a usable id!"}'),
        ("application/json", b'["job_id"]'),
        ("application/json", b"{not json"),
    ],
)
async def test_answers_without_a_usable_job_id_pass_through_and_watch_nothing(
    upstream: Upstream,
    start_proxy: StartProxy,
    http: aiohttp.ClientSession,
    content_type: str,
    body: bytes,
) -> None:
    async def answer(request: web.Request) -> web.StreamResponse:
        return web.Response(body=body, headers={"Content-Type": content_type})

    upstream.answer = answer
    proxied = await start_proxy(upstream.url)
    async with http.post(f"{proxied.url}/extract", data=b"x", headers=KEY) as got:
        assert await got.read() == body
        assert got.status == 200
    assert await proxied.store.list_watches() == []
    assert proxied.outcome_count("forwarded") == 1


async def test_a_json_answer_too_large_to_read_streams_through_unwatched(
    upstream: Upstream, start_proxy: StartProxy, http: aiohttp.ClientSession
) -> None:
    big = json.dumps({"job_id": "job-big", "markdown": "x" * 2_000_000}).encode()

    async def answer(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        for start in range(0, len(big), 100_000):
            await response.write(big[start : start + 100_000])
        await response.write_eof()
        return response

    upstream.answer = answer
    proxied = await start_proxy(upstream.url)
    async with http.post(f"{proxied.url}/extract", data=b"x", headers=KEY) as got:
        assert await got.read() == big
    assert await proxied.store.list_watches() == []


# -- refusals and upstream failures ----------------------------------------------------


async def test_body_over_the_limit_is_413_up_front_or_while_streaming(
    upstream: Upstream, start_proxy: StartProxy, http: aiohttp.ClientSession
) -> None:
    proxied = await start_proxy(upstream.url, max_body_bytes=100_000)

    async with http.post(f"{proxied.url}/extract", data=b"x" * 100_001, headers=KEY) as declared:
        declared_body = await declared.json()

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(40):
            yield b"y" * 5_000

    async with http.post(f"{proxied.url}/extract", data=chunks(), headers=KEY) as streamed:
        streamed_body = await streamed.json()

    assert declared.status == 413
    assert streamed.status == 413
    assert declared_body["error"] == "too_large"
    assert "proxy.max_body_bytes (100000 bytes)" in streamed_body["detail"]
    assert all(seen.size_bytes < 100_000 for seen in upstream.seen)
    assert len([s for s in upstream.seen if s.size_bytes == 100_001]) == 0
    assert proxied.outcome_count("too_large") == 2
    assert await proxied.store.list_watches() == []


async def test_metadata_headers_over_8_kb_are_400_naming_the_header_and_not_forwarded(
    upstream: Upstream, start_proxy: StartProxy, http: aiohttp.ClientSession
) -> None:
    proxied = await start_proxy(upstream.url)
    third = META_HEADERS_MAX_BYTES // 3
    headers = {
        **KEY,
        "X-Pulse-Relay-Meta-First": "a" * third,
        "X-Pulse-Relay-Meta-Second": "b" * third,
        "X-Pulse-Relay-Meta-Notes": "n" * third,
    }
    async with http.post(f"{proxied.url}/extract", data=b"x", headers=headers) as got:
        body = await got.json()

    assert got.status == 400
    assert body["error"] == "bad_request"
    assert "X-Pulse-Relay-Meta-Notes" in body["detail"]
    assert upstream.seen == []
    assert proxied.outcome_count("bad_request") == 1


async def test_unreachable_upstream_is_502_json(
    start_proxy: StartProxy, http: aiohttp.ClientSession
) -> None:
    proxied = await start_proxy(f"http://127.0.0.1:{free_port()}")
    async with http.post(f"{proxied.url}/extract", data=b"x", headers=KEY) as got:
        body = await got.json()
    assert got.status == 502
    assert body["error"] == "upstream_unreachable"
    assert body["detail"].startswith("the Pulse API could not be reached: ")
    assert proxied.outcome_count("upstream_unreachable") == 1


async def test_upstream_that_hangs_is_504_json(
    emulator: PulseEmulator, start_proxy: StartProxy, http: aiohttp.ClientSession
) -> None:
    emulator.fail_next_submission(Fault.slow(60))
    proxied = await start_proxy(emulator.base_url, timeout_seconds=0.5)
    async with http.post(
        f"{proxied.url}/extract", json={"file_url": "https://x/a.pdf", "async": True}, headers=KEY
    ) as got:
        body = await got.json()
        assert_sandboxed(got)
    assert got.status == 504
    assert body == {
        "error": "upstream_timeout",
        "detail": "the Pulse API sent nothing for proxy.timeout_seconds (0.5 s)",
    }
    assert proxied.outcome_count("upstream_timeout") == 1
    assert await proxied.store.list_watches() == []


async def test_an_answer_cut_off_midway_never_looks_complete(
    upstream: Upstream, start_proxy: StartProxy, http: aiohttp.ClientSession
) -> None:
    async def answer(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/pdf"})
        await response.prepare(request)
        await response.write(b"%PDF partial")
        assert request.transport is not None
        request.transport.abort()
        return response

    upstream.answer = answer
    proxied = await start_proxy(upstream.url)
    with pytest.raises(aiohttp.ClientPayloadError):
        async with http.get(f"{proxied.url}/results/x", headers=KEY) as got:
            await got.read()
    await wait_for(lambda: proxied.outcome_count("upstream_cut_off") == 1)


# -- a watch the store cannot take ---------------------------------------------------------


async def test_watch_that_cannot_be_stored_is_flagged_then_recorded_when_the_store_is_back(
    emulator: PulseEmulator, start_proxy: StartProxy, tmp_path: Path
) -> None:
    proxied = await start_proxy(emulator.base_url, busy_timeout_seconds=0.2)
    locker = sqlite3.connect(tmp_path / "relay.db", isolation_level=None)
    locker.execute("BEGIN EXCLUSIVE")
    try:
        with structlog.testing.capture_logs() as logs:
            async with async_sdk_client(proxied.url, API_KEY) as client:
                raw = await client.with_raw_response.extract(
                    file_url="https://example.com/a.pdf", async_=True
                )
            await wait_for(lambda: proxied.recorder.pending == 1)
    finally:
        locker.execute("ROLLBACK")
        locker.close()

    assert raw.headers[WATCH_HEADER.lower()] == "failed"
    assert raw.data.job_id == emulator.submissions[0].job_id
    assert any(
        entry["log_level"] == "error" and entry.get("job_ids") == [raw.data.job_id]
        for entry in logs
    )
    assert proxied.outcome_count("watch_failed") == 1
    pending_gauge = "pulse_relay_proxy_pending_watches"
    assert proxied.metrics.registry.get_sample_value(pending_gauge) == 1

    async def recorded() -> bool:
        return [w.job_id for w in await proxied.store.list_watches()] == [raw.data.job_id]

    await wait_for(recorded)
    assert proxied.recorder.pending == 0
    (watch,) = await proxied.store.list_watches()
    assert watch.metadata["request"]["fields"]["fileUrl"] == "https://example.com/a.pdf"


def test_with_a_token_a_pass_through_request_without_its_key_is_401_whatever_the_method() -> None:
    guarded, open_auth = AdminAuth("admin-token"), AdminAuth("")
    for method in ("GET", "POST", "DELETE"):
        request = make_mocked_request(method, "/pulse/extract", headers={"X-Pulse-Relay": "1"})
        with pytest.raises(Unauthorized, match="x-api-key"):
            check_request(guarded, request)
        check_request(open_auth, request)


async def test_head_and_empty_answers_pass_through(
    upstream: Upstream, start_proxy: StartProxy, http: aiohttp.ClientSession
) -> None:
    async def answer(request: web.Request) -> web.StreamResponse:
        if request.method == "HEAD":
            return web.Response(headers={"Content-Length": "1234", "Content-Type": "text/csv"})
        return web.Response(status=204)

    upstream.answer = answer
    proxied = await start_proxy(upstream.url)
    async with http.head(f"{proxied.url}/results/r.csv", headers=KEY) as head:
        assert (head.status, head.headers["Content-Length"]) == (200, "1234")
    async with http.delete(f"{proxied.url}/job/j-1", headers=KEY) as deleted:
        assert (deleted.status, await deleted.read()) == (204, b"")
    assert [seen.method for seen in upstream.seen] == ["HEAD", "DELETE"]


async def test_a_client_that_leaves_mid_upload_is_counted_not_an_error(
    upstream: Upstream, start_proxy: StartProxy
) -> None:
    proxied = await start_proxy(upstream.url)
    port = int(proxied.url.split(":")[2].split("/")[0])
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        b"POST /pulse/extract HTTP/1.1\r\nHost: relay\r\nx-api-key: k\r\n"
        b'Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n{"file_url": '
    )
    await writer.drain()
    await wait_for(lambda: upstream.started == 1)  # the upload is under way upstream
    writer.close()
    await writer.wait_closed()
    await wait_for(lambda: proxied.outcome_count("client_gone") == 1)
    assert upstream.seen == []  # the upstream never got a whole body
    assert await proxied.store.list_watches() == []


# -- hygiene: what crosses the pass-through ---------------------------------------------

SANDBOXED = {"X-Content-Type-Options": "nosniff", "Content-Security-Policy": "sandbox"}


def assert_sandboxed(answer: aiohttp.ClientResponse) -> None:
    """The two headers every /pulse/ answer carries, whoever wrote it."""
    for name, value in SANDBOXED.items():
        assert answer.headers.getall(name, []) == [value], name


async def test_admin_credentials_and_relay_headers_never_reach_the_upstream(
    upstream: Upstream, start_proxy: StartProxy, http: aiohttp.ClientSession
) -> None:
    proxied = await start_proxy(upstream.url)
    headers = {
        **KEY,
        "Cookie": "pulse_relay_session=admin-session; other=1",
        "Authorization": "Bearer admin-token",
        "X-Pulse-Relay": "1",
        "X-Pulse-Relay-Meta-User-Id": "u-1",
        "X-Custom": "kept",
    }
    async with http.post(f"{proxied.url}/extract", data=b"x", headers=headers) as got:
        assert got.status == 200

    (seen,) = upstream.seen
    names = {name.lower(): value for name, value in seen.headers}
    assert names["x-api-key"] == API_KEY
    assert names["x-custom"] == "kept"
    for dropped in ("cookie", "authorization", "x-pulse-relay", "x-pulse-relay-meta-user-id"):
        assert dropped not in names, dropped


async def test_a_cors_preflight_is_answered_by_the_relay_and_grants_nothing(
    upstream: Upstream, start_proxy: StartProxy, http: aiohttp.ClientSession
) -> None:
    proxied = await start_proxy(upstream.url)
    preflight = {
        **KEY,
        "Origin": "http://attacker.example",
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "x-api-key, content-type",
    }
    async with http.options(f"{proxied.url}/extract", headers=preflight) as got:
        body = await got.read()

    assert got.status == 204
    assert body == b""
    assert set(got.headers["Allow"].split(", ")) >= {"GET", "POST", "DELETE"}
    assert not [name for name in got.headers if name.lower().startswith("access-control-")]
    assert_sandboxed(got)
    assert upstream.started == 0
    assert proxied.outcome_count("options") == 1


@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_upstream_cookies_and_cors_grants_are_dropped_and_every_answer_is_sandboxed(
    upstream: Upstream, start_proxy: StartProxy, http: aiohttp.ClientSession, method: str
) -> None:
    page = b"<html><script>fetch('/api/events')</script></html>"
    submitted = b'{"job_id": "job-html-1"}'

    async def answer(request: web.Request) -> web.StreamResponse:
        is_post = request.method == "POST"
        response = web.Response(
            body=submitted if is_post else page,
            content_type="application/json" if is_post else "text/html",
            headers={
                "Access-Control-Allow-Origin": "http://attacker.example",
                "Access-Control-Allow-Credentials": "true",
                "access-control-expose-headers": "*",
                "X-Content-Type-Options": "sniff-away",
                "X-Req": "r1",
            },
        )
        response.headers.add("Set-Cookie", "pulse_relay_session=attacker; Path=/")
        response.headers.add("set-cookie", "tracker=1; Path=/")
        return response

    upstream.answer = answer
    proxied = await start_proxy(upstream.url)
    async with http.request(method, f"{proxied.url}/page", data=b"x", headers=KEY) as got:
        body = await got.read()

    assert got.status == 200
    assert body == (submitted if method == "POST" else page)
    assert got.headers["X-Req"] == "r1"
    assert "Set-Cookie" not in got.headers
    assert not [name for name in got.headers if name.lower().startswith("access-control-")]
    assert_sandboxed(got)


async def test_the_relays_own_answers_on_the_pass_through_are_sandboxed(
    upstream: Upstream, start_proxy: StartProxy, http: aiohttp.ClientSession
) -> None:
    proxied = await start_proxy(upstream.url, max_body_bytes=10)
    unreachable = await start_proxy(f"http://127.0.0.1:{free_port()}")
    async with http.post(f"{proxied.url}/extract", data=b"x" * 11, headers=KEY) as too_large:
        assert too_large.status == 413
        assert_sandboxed(too_large)
    bad_meta = {**KEY, "X-Pulse-Relay-Meta-": "no key"}
    async with http.get(f"{proxied.url}/job/j", headers=bad_meta) as bad_request:
        assert bad_request.status == 400
        assert_sandboxed(bad_request)
    async with http.get(f"{unreachable.url}/job/j", headers=KEY) as gone:
        assert gone.status == 502
        assert_sandboxed(gone)


# -- isolation: a hanging Pulse API cannot take the relay down with it --------------------


async def test_beyond_proxy_concurrency_a_request_is_answered_503_busy_at_once(
    upstream: Upstream, start_proxy: StartProxy, http: aiohttp.ClientSession
) -> None:
    release = asyncio.Event()

    async def held(request: web.Request) -> web.StreamResponse:
        await release.wait()
        return web.json_response({"held": True})

    upstream.answer = held
    proxied = await start_proxy(upstream.url, concurrency=2)
    running = [
        asyncio.create_task(http.get(f"{proxied.url}/job/j{n}", headers=KEY)) for n in range(2)
    ]
    await wait_for(lambda: upstream.started == 2)

    loop = asyncio.get_running_loop()
    began = loop.time()
    async with http.get(f"{proxied.url}/job/j3", headers=KEY) as busy:
        body = await busy.json()
    busy_seconds = loop.time() - began

    assert busy.status == 503
    assert body["error"] == "busy"
    assert "proxy.concurrency (2)" in body["detail"]
    assert busy.headers["Retry-After"] == "1"
    assert_sandboxed(busy)
    assert busy_seconds < 1.0  # answered, not queued behind the two in flight
    assert upstream.started == 2
    assert proxied.outcome_count("busy") == 1

    release.set()
    for task in running:
        async with await task as answered:
            assert answered.status == 200
    async with http.get(f"{proxied.url}/job/j4", headers=KEY) as after:
        assert after.status == 200  # the slots were given back


async def test_a_caller_that_leaves_has_its_upstream_request_cancelled_within_a_second(
    upstream: Upstream, start_proxy: StartProxy, http: aiohttp.ClientSession
) -> None:
    upstream.answer = hang
    proxied = await start_proxy(upstream.url, concurrency=1)
    port = int(proxied.url.split(":")[2].split("/")[0])
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /pulse/job/j1 HTTP/1.1\r\nHost: relay\r\nx-api-key: k\r\n\r\n")
    await writer.drain()
    await wait_for(lambda: len(upstream.seen) == 1)  # the whole request is upstream, waiting

    writer.close()
    await writer.wait_closed()
    await wait_for(lambda: upstream.cancelled == 1, timeout_seconds=1.0)
    await wait_for(lambda: proxied.outcome_count("client_gone") == 1)

    upstream.answer = None
    async with http.get(f"{proxied.url}/job/j2", headers=KEY) as after:
        assert after.status == 200  # its slot was given back
