"""What the tests share: signed requests, configuration text, records and deliveries to
hand a component, and real peers for end-to-end tests (a receiving HTTP server, a
recording command, `pulse-relay serve` as a subprocess). Fixtures live in conftest.py."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import httpx
import pydantic
import pytest
import tomli_w
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pulse import AsyncPulse, Pulse
from pydantic import BaseModel

from pulse_relay.app import Relay
from pulse_relay.config import SINK_TYPES, Settings
from pulse_relay.ingress.signature import sign_headers
from pulse_relay.sinks import Delivery
from pulse_relay.store import IngestRecord, StoreBackend

SECRET = "whsec_" + base64.b64encode(b"pulse-relay-test-secret-32-bytes").decode()
OTHER_SECRET = "whsec_" + base64.b64encode(b"an-entirely-different-secret-key").decode()

# What the HTTP sink of conftest's `pipeline_settings` signs with.
SINK_SECRET = "whsec_" + base64.b64encode(b"the-receiving-app-secret-000000").decode()
# Retries a test can wait for: 50 ms, doubling up to 200 ms.
FAST_RETRY = {"retry_initial_seconds": 0.05, "retry_max_seconds": 0.2}


@dataclass(frozen=True)
class Ed25519Pair:
    """An ed25519 key pair in Standard Webhooks' text forms, encoded here with `cryptography`
    alone (never the relay's own encoders): `whsk` is `whsk_` + base64 of the 32-byte private
    key then the 32-byte public key, as Svix's server writes it; `whpk` is `whpk_` + base64
    of the public key."""

    private_key: Ed25519PrivateKey
    whsk: str
    whpk: str

    def v1a(self, webhook_id: str, timestamp: int, body: bytes) -> str:
        """The `v1a,<base64>` entry: the ed25519 signature of `{id}.{timestamp}.{body}`."""
        signature = self.private_key.sign(f"{webhook_id}.{timestamp}.".encode() + body)
        return "v1a," + base64.b64encode(signature).decode()


def ed25519_pair(seed: bytes) -> Ed25519Pair:
    """The pair whose private key is `seed` (32 bytes): the same keys on every run."""
    private_key = Ed25519PrivateKey.from_private_bytes(seed)
    private_raw = private_key.private_bytes_raw()
    public_raw = private_key.public_key().public_bytes_raw()
    return Ed25519Pair(
        private_key,
        "whsk_" + base64.b64encode(private_raw + public_raw).decode(),
        "whpk_" + base64.b64encode(public_raw).decode(),
    )


# The sender's key pair and a stranger's.
SENDER_KEYS = ed25519_pair(bytes(range(32)))
OTHER_KEYS = ed25519_pair(bytes(range(100, 132)))


def v1a_signed(
    body: bytes,
    keys: Ed25519Pair = SENDER_KEYS,
    *,
    webhook_id: str | None = None,
    timestamp: int | None = None,
) -> dict[str, str]:
    """Standard Webhooks headers for `body` with one `v1a` entry, plus a JSON content type."""
    webhook_id = webhook_id or f"msg_{uuid.uuid4().hex}"
    when = int(time.time()) if timestamp is None else timestamp
    return {
        "webhook-id": webhook_id,
        "webhook-timestamp": str(when),
        "webhook-signature": keys.v1a(webhook_id, when, body),
        "content-type": "application/json",
    }


# The types of conftest's factory fixtures.
MakeSettings = Callable[..., Settings]
PipelineSettings = Callable[..., Settings]
StartRelay = Callable[..., Awaitable[Relay]]


def make_body(
    event_type: str = "job.completed", job_id: str | None = "job-1", **extra: Any
) -> bytes:
    """A Pulse-style webhook payload."""
    data: dict[str, Any] = {"status": event_type.removeprefix("job.")}
    if job_id is not None:
        data["job_id"] = job_id
    return json.dumps({"type": event_type, "data": data, **extra}).encode()


def signed(
    body: bytes,
    *,
    secret: str = SECRET,
    webhook_id: str | None = None,
    timestamp: int | None = None,
) -> dict[str, str]:
    """Standard Webhooks headers for `body`, plus a JSON content type."""
    headers = sign_headers(
        secret,
        webhook_id or f"msg_{uuid.uuid4().hex}",
        body,
        timestamp=int(time.time()) if timestamp is None else timestamp,
    )
    headers["content-type"] = "application/json"
    return headers


def _without(headers: dict[str, str], name: str) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k != name}


def _with(headers: dict[str, str], **changes: str) -> dict[str, str]:
    return {**headers, **{k.replace("_", "-"): v for k, v in changes.items()}}


HOSTILE_BODY = make_body()
HostileCase = Callable[[dict[str, str]], tuple[bytes, dict[str, str]]]
# Each case turns a freshly signed, valid request for HOSTILE_BODY into one the
# verifier must refuse with 401.
UNAUTHORIZED_CASES: dict[str, HostileCase] = {
    "missing id": lambda good: (HOSTILE_BODY, _without(good, "webhook-id")),
    "missing timestamp": lambda good: (HOSTILE_BODY, _without(good, "webhook-timestamp")),
    "missing signature": lambda good: (HOSTILE_BODY, _without(good, "webhook-signature")),
    "empty id": lambda good: (HOSTILE_BODY, _with(good, webhook_id="")),
    "empty timestamp": lambda good: (HOSTILE_BODY, _with(good, webhook_timestamp="")),
    "empty signature": lambda good: (HOSTILE_BODY, _with(good, webhook_signature="")),
    "garbage signature entry": lambda good: (
        HOSTILE_BODY,
        _with(good, webhook_signature="garbage"),
    ),
    "non-base64 signature": lambda good: (
        HOSTILE_BODY,
        _with(good, webhook_signature="v1,@@not*b64@@"),
    ),
    "non-integer timestamp": lambda good: (
        HOSTILE_BODY,
        _with(good, webhook_timestamp="yesterday"),
    ),
    "float timestamp": lambda good: (
        HOSTILE_BODY,
        _with(good, webhook_timestamp=good["webhook-timestamp"] + ".0"),
    ),
    "padded timestamp": lambda good: (
        HOSTILE_BODY,
        _with(good, webhook_timestamp="0" + good["webhook-timestamp"]),
    ),
    "body changed by one byte": lambda good: (HOSTILE_BODY.replace(b"job-1", b"job-2"), good),
    "body re-serialised": lambda good: (
        json.dumps(json.loads(HOSTILE_BODY), indent=1).encode(),
        good,
    ),
    "wrong secret": lambda good: (
        HOSTILE_BODY,
        signed(HOSTILE_BODY, secret=OTHER_SECRET, webhook_id="msg_h"),
    ),
}


# The read timeout of the reliability suite's hostile-input relay: slow clients are cut
# off after it.
HOSTILE_READ_TIMEOUT_SECONDS = 1.0


def post_captured(
    port: int, body: bytes, headers: dict[str, str], *, timeout_seconds: float = 10.0
) -> tuple[int, str]:
    """POST exactly these bytes and headers to the webhook path of the relay on `port`;
    (status, the "status" of its JSON answer) whatever the status."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/webhooks/pulse", data=body, headers=headers, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout_seconds) as response:
            return int(response.status), str(json.loads(response.read()).get("status"))
    except urllib.error.HTTPError as error:
        return int(error.code), str(json.loads(error.read()).get("status"))


def post_job_created(
    port: int, event_id: str, *, job_id: str | None = None, timeout_seconds: float = 10.0
) -> tuple[int, str]:
    """POST one signed job.created event (one that needs no fetch) for `job_id` (by
    default `job-<event_id>`); (status, the "status" of the JSON answer)."""
    body = make_body(event_type="job.created", job_id=job_id or f"job-{event_id}")
    headers = signed(body, webhook_id=event_id)
    return post_captured(port, body, headers, timeout_seconds=timeout_seconds)


def make_delivery(
    event_id: str = "msg_1",
    event_type: str = "job.completed",
    job_id: str | None = "job-1",
    *,
    job_status: str | None = "completed",
    text: str | None = None,
    extra: dict[str, Any] | None = None,
    received_at: str = "2026-11-23T10:30:00.123456Z",
    indent: int | None = None,
) -> Delivery:
    """One delivery as the dispatcher hands it to a sink; the job carries `{"result":
    {"text": text}}` when `text` is given, and the fields of `extra`."""
    job: dict[str, Any] = {"status": job_status}
    if text is not None:
        job["result"] = {"text": text}
    envelope: dict[str, Any] = {
        "id": event_id,
        "type": event_type,
        "job_id": job_id,
        "received_at": received_at,
        "source": "webhook",
        "event": {"type": event_type, "data": {"job_id": job_id}},
        "job": {**job, **(extra or {})},
        "relay": {"version": "0.1.0", "result_url": None, "metadata": {}},
    }
    return Delivery(
        event_id=event_id,
        event_type=event_type,
        job_id=job_id,
        job_status=job_status,
        envelope=envelope,
        body=json.dumps(envelope, ensure_ascii=False, indent=indent).encode(),
        received_at=received_at,
    )


def ingest_record(
    event_id: str,
    *,
    job_id: str | None = "job-1",
    event_type: str = "job.completed",
    sinks: tuple[str, ...] = ("a", "b"),
    needs_fetch: bool = True,
    received_at: float = 1_000_000.0,
) -> IngestRecord:
    """A valid webhook event as the ingress hands it to the store."""
    status = event_type.removeprefix("job.")
    return IngestRecord(
        event_id=event_id,
        received_at=received_at,
        source="webhook",
        headers={"webhook-id": event_id},
        body=b'{"type": "%s"}' % event_type.encode(),
        event_type=event_type,
        job_id=job_id,
        job_key=f"{job_id}:{status}" if job_id else None,
        error=None,
        sinks=sinks,
        needs_fetch=needs_fetch,
    )


@dataclass
class FakeClock:
    """A clock the test moves by hand (`clock.now += 60`: a minute later)."""

    now: float = 1000.0

    def __call__(self) -> float:
        return self.now


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """`extra` over `base`, merging nested tables."""
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def field_keys(model: type[BaseModel], prefix: str = "") -> Iterator[str]:
    """Every key of a model, dotted, descending into nested sections."""
    for name, info in model.model_fields.items():
        key = f"{prefix}{name}"
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            yield from field_keys(annotation, f"{key}.")
        else:
            yield key


def settings_keys() -> list[str]:
    """Every configuration key, dotted (`server.port`); a sink's keys as `sinks.<key>`,
    once whatever the number of sink types that have it."""
    return sorted(
        {key for key in field_keys(Settings) if key != "sinks"}
        | {f"sinks.{key}" for sink in SINK_TYPES for key in field_keys(sink)}
    )


def relay_config(tmp_path: Path, **sections: Any) -> dict[str, Any]:
    """A test relay's settings as data: 127.0.0.1 on an ephemeral port, the test secret,
    a store in `tmp_path`, JSON logs at warning; `sections` are merged over that."""
    base: dict[str, Any] = {
        "server": {"host": "127.0.0.1", "port": 0},
        "admin": {"host": "127.0.0.1", "port": 0},
        "verify": {"secrets": [SECRET]},
        "store": {"path": str(tmp_path / "relay.db")},
        "log": {"format": "json", "level": "warning"},
    }
    return deep_merge(base, sections)


def config_toml(**sections: Any) -> str:
    """The TOML text of exactly these sections (paths given as strings)."""
    return tomli_w.dumps(sections)


def write_config(
    tmp_path: Path,
    port: int,
    *,
    sinks: list[dict[str, Any]] | None = None,
    extra_sinks: list[dict[str, Any]] | tuple[()] = (),
    admin_port: int = 0,
    **sections: Any,
) -> Path:
    """`tmp_path/relay.toml` for `serve` on `port` (admin listener on `admin_port`), logging
    JSON at info; the sinks are a file sink "results" writing to `tmp_path/results` (or
    `sinks`), then `extra_sinks`."""
    if sinks is None:
        sinks = [{"name": "results", "type": "file", "directory": str(tmp_path / "results")}]
    served = {"server": {"port": port}, "admin": {"port": admin_port}, "log": {"level": "info"}}
    document = relay_config(tmp_path, **deep_merge(served, sections), sinks=[*sinks, *extra_sinks])
    path = tmp_path / "relay.toml"
    path.write_text(config_toml(**document))
    return path


@dataclass
class Received:
    """One request the receiver got."""

    headers: dict[str, str]
    body: bytes

    @property
    def envelope(self) -> dict[str, Any]:
        document: dict[str, Any] = json.loads(self.body)
        return document


@dataclass
class Receiver:
    """An aiohttp server standing in for the operator's app: records and answers as told."""

    answers: list[int] = field(default_factory=list)
    received: list[Received] = field(default_factory=list)
    attempts: int = 0
    _runner: web.AppRunner | None = None
    url: str = ""

    async def start(self, port: int = 0) -> str:
        app = web.Application()
        app.router.add_post("/hook", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port)
        await site.start()
        bound = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{bound}/hook"
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _handle(self, request: web.Request) -> web.Response:
        self.attempts += 1
        body = await request.read()
        status = self.answers.pop(0) if self.answers else 200
        if 200 <= status < 300:
            self.received.append(Received(dict(request.headers), body))
        return web.json_response({"ok": 200 <= status < 300}, status=status)


RECORDER = """\
import json, os, pathlib, sys
out = pathlib.Path(sys.argv[1])
fail_marker = out / "fail-next"
data = sys.stdin.buffer.read()
envelope = json.loads(data)
if fail_marker.exists():
    fail_marker.unlink()
    print("failing on purpose", file=sys.stderr)
    sys.exit(1)
env = {k: v for k, v in os.environ.items() if k.startswith("PULSE_")}
name = envelope["id"].replace(":", "_")
# Readers poll for the .json file: write it last and whole (temp file, then rename).
(out / (name + ".env")).write_text(json.dumps(env))
(out / (name + ".json.part")).write_bytes(data)
os.replace(out / (name + ".json.part"), out / (name + ".json"))
print("recorded", envelope["id"])
"""


def recorder_argv(tmp_path: Path) -> tuple[list[str], Path]:
    """argv for a command sink that records each envelope and its PULSE_* env in a folder."""
    script = tmp_path / "recorder.py"
    script.write_text(RECORDER)
    out = tmp_path / "command-out"
    out.mkdir(exist_ok=True)
    return [sys.executable, str(script), str(out)], out


async def wait_for(
    condition: Callable[[], Awaitable[bool]] | Callable[[], bool],
    *,
    timeout_seconds: float = 10.0,
    interval_seconds: float = 0.02,
) -> None:
    """Poll `condition` until it is true; fail the test at the deadline."""
    deadline = time.monotonic() + timeout_seconds
    while True:
        result = condition()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout_seconds} s")
        await asyncio.sleep(interval_seconds)


def wait_until(
    condition: Callable[[], object],
    *,
    timeout_seconds: float = 20.0,
    interval_seconds: float = 0.02,
) -> None:
    """Poll `condition` until it is true; fail the test at the deadline. For tests that
    are not async (wait_for is the async twin: it yields to the event loop)."""
    deadline = time.monotonic() + timeout_seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout_seconds} s")
        time.sleep(interval_seconds)


class AbsentPackage(pytest.skip.Exception):
    """A test skipped for a Debian package that is not installed (tests/skips.py folds
    them into one summary line per package)."""


def require_debian_package(package: str, present: bool) -> None:
    """Skip the test when a Debian package it drives is absent; under CI, fail it.

    The skip names the package and its install command. `.ci/run` installs the
    packages, so there an absent one is a failure.
    """
    __tracebackhide__ = True
    if present:
        return
    message = f"{package} is not installed (apt-get install {package})"
    if os.environ.get("CI"):
        pytest.fail(f"{message}; under CI it must be: .ci/run installs it")
    raise AbsentPackage(message)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def run_cli(
    *args: str,
    config: Path | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 30,
    input_text: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """`pulse-relay [--config config] args...` as a subprocess, its output captured;
    `input_text` is its stdin."""
    command = [sys.executable, "-m", "pulse_relay"]
    if config is not None:
        command += ["--config", str(config)]
    return subprocess.run(
        [*command, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        check=False,
        input=input_text,
    )


class Served:
    """`pulse-relay serve` as a subprocess with stderr in a file (readable while it runs)."""

    def __init__(self, config: Path, log_path: Path) -> None:
        self.config = config
        self.log_path = log_path
        self._log: TextIO = log_path.open("w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "pulse_relay", "--config", str(config), "serve"],
            stdout=subprocess.DEVNULL,
            stderr=self._log,
            text=True,
        )

    def wait_listening(self, port: int) -> None:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                return
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.kill()
                    raise AssertionError(f"serve did not start: {self.log()}") from None
                time.sleep(0.05)

    def log(self) -> str:
        return self.log_path.read_text()

    def log_lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.log().splitlines() if line.startswith("{")]

    def terminate(self, timeout_seconds: float = 30) -> int:
        self.process.send_signal(signal.SIGTERM)
        returncode = self.process.wait(timeout=timeout_seconds)
        self._log.close()
        return returncode

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self._log.close()

    @classmethod
    def start(cls, config: Path, port: int, log_path: Path) -> Served:
        """Start `serve` and return once it accepts connections on `port`."""
        served = cls(config, log_path)
        served.wait_listening(port)
        return served


# The official SDK's own default is no timeout at all; a test must never hang on one call.
SDK_TIMEOUT_SECONDS = 30.0


@contextlib.contextmanager
def sdk_client(base_url: str, api_key: str, **options: Any) -> Iterator[Pulse]:
    """The official SDK's sync client on `base_url`, its connections closed afterwards."""
    with httpx.Client(timeout=SDK_TIMEOUT_SECONDS) as http:
        yield Pulse(api_key=api_key, base_url=base_url, httpx_client=http, **options)


@contextlib.asynccontextmanager
async def async_sdk_client(
    base_url: str, api_key: str, **options: Any
) -> AsyncIterator[AsyncPulse]:
    """The official SDK's async client on `base_url`, its connections closed afterwards."""
    async with httpx.AsyncClient(timeout=SDK_TIMEOUT_SECONDS) as http:
        yield AsyncPulse(api_key=api_key, base_url=base_url, httpx_client=http, **options)


def sdk_strictly(model: Any, parsed: Any) -> None:
    """Fail unless what the SDK parsed (or a JSON object) is a complete, valid `model`.

    The SDK builds its response models unchecked (a missing or mistyped field
    passes silently); validating them again is what notices one.
    """
    document = parsed if isinstance(parsed, dict) else parsed.dict()
    pydantic.TypeAdapter(model).validate_python(document)


async def count_events(store: StoreBackend) -> int:
    """How many events the store holds, whatever its backend."""
    events, _ = await store.state_counts()
    return sum(events.values())


async def call(
    method: str,
    url: str,
    *,
    headers: dict[str, str] | None = None,
    json_body: Any = None,
    data: bytes | None = None,
) -> tuple[int, Any]:
    """One HTTP request: (status, the JSON body, or the text when it is not JSON)."""
    import aiohttp

    async with (
        aiohttp.ClientSession() as session,
        session.request(
            method, url, headers=headers, json=json_body, data=data, allow_redirects=False
        ) as response,
    ):
        text = await response.text()
        if response.content_type == "application/json":
            return response.status, json.loads(text)
        return response.status, text
