"""The composition root: routing events to sinks, choosing the verifier, closing what it opens."""

from __future__ import annotations

import asyncio
import gc
import socket
import weakref
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from structlog.testing import capture_logs

from pulse_relay import app as app_module
from pulse_relay.app import Relay, build_router
from pulse_relay.config import SinkSettings
from pulse_relay.daemon import freeze_startup_objects, serve
from pulse_relay.emulator import PulseEmulator
from pulse_relay.ingress.signature import HexHmacVerifier, NoneVerifier, StandardVerifier
from pulse_relay.ingress_settings import build_verifier
from pulse_relay.sinks import Delivery, Sink, SinkResult, build_sink
from pulse_relay.store import StoreUnavailableError
from tests.helpers import SECRET, MakeSettings, Receiver, make_body, signed, wait_for


def test_events_are_routed_by_each_enabled_sinks_globs(make_settings: MakeSettings) -> None:
    settings = make_settings(
        sinks=[
            {"type": "file", "name": "all-jobs", "directory": "out"},
            {"type": "file", "name": "done", "directory": "out", "events": ["job.completed"]},
            {"type": "file", "name": "credits", "directory": "out", "events": ["credits.*"]},
            {"type": "file", "name": "off", "directory": "out", "enabled": False},
        ]
    )
    route = build_router(settings)
    assert route("job.completed") == ["all-jobs", "done"]
    assert route("job.failed") == ["all-jobs"]
    assert route("credits.low_balance") == ["credits"]
    assert route("Job.completed") == []


def test_the_verifier_follows_the_scheme_and_no_secret_means_polling_only(
    make_settings: MakeSettings,
) -> None:
    assert isinstance(build_verifier(make_settings()), StandardVerifier)
    assert build_verifier(make_settings(verify={"secrets": []})) is None
    assert isinstance(build_verifier(make_settings(verify={"scheme": "none"})), NoneVerifier)
    hex_settings = make_settings(verify={"scheme": "hmac-sha256-hex", "secrets": [SECRET]})
    assert isinstance(build_verifier(hex_settings), HexHmacVerifier)


# --- closing what the relay opens ------------------------------------------------------------


class ObservedSink:
    """A real sink whose deliveries wait for `gate`; `history` shows what happened when."""

    def __init__(self, inner: Sink, label: str, history: list[str], gate: asyncio.Event) -> None:
        self.name = inner.name
        self._inner = inner
        self._label = label
        self._history = history
        self._gate = gate

    async def deliver(self, delivery: Delivery) -> SinkResult:
        self._history.append(f"{self._label} started")
        try:
            await self._gate.wait()
        except asyncio.CancelledError:
            self._history.append(f"{self._label} cancelled")
            raise
        result = await self._inner.deliver(delivery)
        self._history.append(f"{self._label} delivered")
        return result

    async def close(self) -> None:
        self._history.append(f"{self._label} closed")
        await self._inner.close()


class ObservingFactory:
    """Builds the real sinks, numbering each generation: files#0, then files#1 after a reload."""

    def __init__(self, *, first_generation_gate: asyncio.Event) -> None:
        self.history: list[str] = []
        self.built: list[str] = []
        self._first_gate = first_generation_gate

    def __call__(
        self, settings: SinkSettings, *, session: aiohttp.ClientSession | None = None
    ) -> Sink:
        generation = sum(label.startswith(f"{settings.name}#") for label in self.built)
        label = f"{settings.name}#{generation}"
        self.built.append(label)
        gate = self._first_gate
        if generation > 0:
            gate = asyncio.Event()
            gate.set()
        return ObservedSink(build_sink(settings, session=session), label, self.history, gate)


async def _post_webhook(relay: Relay, webhook_id: str) -> None:
    body = make_body("job.created", job_id=f"job-{webhook_id}")
    async with (
        aiohttp.ClientSession() as client,
        client.post(relay.webhook_url, data=body, headers=signed(body, webhook_id=webhook_id)) as r,
    ):
        assert r.status == 202


async def test_reload_closes_the_old_sinks_after_their_delivery_finished_and_stop_the_rest(
    make_settings: MakeSettings, tmp_path: Path
) -> None:
    settings = make_settings(sinks=[{"type": "file", "name": "files", "directory": str(tmp_path)}])
    gate = asyncio.Event()
    factory = ObservingFactory(first_generation_gate=gate)
    relay = Relay(settings, sink_factory=factory)
    await relay.start()
    try:
        await _post_webhook(relay, "msg_a")
        await wait_for(lambda: factory.history == ["files#0 started"])
        assert relay.dispatcher is not None
        old_dispatcher = relay.dispatcher
        reload = asyncio.create_task(relay.reload(settings))
        # The old dispatcher has stopped claiming and waits for the delivery in flight.
        await wait_for(lambda: not old_dispatcher.is_running)
        assert factory.history == ["files#0 started"]
        gate.set()
        assert await reload == []
        assert factory.history == ["files#0 started", "files#0 delivered", "files#0 closed"]
        assert (tmp_path / "job-msg_a.json").exists()
    finally:
        await relay.stop()
    assert factory.built == ["files#0", "files#1"]
    assert factory.history[3:] == ["files#1 closed"]


async def test_reload_closes_old_sinks_after_their_cut_off_work_was_handed_back(
    make_settings: MakeSettings, tmp_path: Path
) -> None:
    settings = make_settings(
        server={"shutdown_grace_seconds": 0.1},
        sinks=[{"type": "file", "name": "files", "directory": str(tmp_path)}],
    )
    factory = ObservingFactory(first_generation_gate=asyncio.Event())  # never opens
    relay = Relay(settings, sink_factory=factory)
    await relay.start()
    try:
        await _post_webhook(relay, "msg_b")
        await wait_for(lambda: factory.history == ["files#0 started"])
        await relay.reload(settings)
        assert factory.history[:3] == ["files#0 started", "files#0 cancelled", "files#0 closed"]
        # The cut-off delivery went back to the store and the new sink delivers it.
        await wait_for((tmp_path / "job-msg_b.json").exists)
    finally:
        await relay.stop()
    assert factory.history[3:] == ["files#1 started", "files#1 delivered", "files#1 closed"]


async def test_the_pulse_client_and_the_http_sinks_share_one_session_the_pass_through_its_own(
    make_settings: MakeSettings,
    emulator: PulseEmulator,
    receiver: Receiver,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    emulator.add_job("job-one")
    body = make_body("job.completed", job_id="job-one")
    created: list[aiohttp.ClientSession] = []
    original_init = aiohttp.ClientSession.__init__

    def counting_init(session: aiohttp.ClientSession, *args: Any, **kwargs: Any) -> None:
        created.append(session)
        original_init(session, *args, **kwargs)

    settings = make_settings(
        pulse={"base_url": emulator.base_url, "api_key": emulator.api_key},
        sinks=[{"type": "http", "name": "app", "url": receiver.url}],
    )
    async with aiohttp.ClientSession() as client:
        monkeypatch.setattr(aiohttp.ClientSession, "__init__", counting_init)
        relay = Relay(settings)
        await relay.start()
        try:
            headers = signed(body, webhook_id="msg_one")
            async with client.post(relay.webhook_url, data=body, headers=headers) as answer:
                assert answer.status == 202
            await wait_for(lambda: len(receiver.received) == 1)
            assert emulator.get_count("job-one") == 1
            # The pass-through's pool is its own, sized by proxy.concurrency.
            (proxied,) = [s for s in created if s.connector is not None and s.connector.limit == 16]
            (session,) = [s for s in created if s is not proxied]
            assert session.connector is not proxied.connector
            assert not session.closed and not proxied.closed
        finally:
            await relay.stop()
    assert session.closed and proxied.closed


class BrokenOnClose(ObservedSink):
    async def close(self) -> None:
        await super().close()
        raise OSError("cannot close")


async def test_a_sink_that_fails_to_close_does_not_keep_the_others_open(
    make_settings: MakeSettings, tmp_path: Path
) -> None:
    history: list[str] = []
    open_gate = asyncio.Event()
    open_gate.set()

    def factory(settings: SinkSettings, *, session: aiohttp.ClientSession | None = None) -> Sink:
        kind = BrokenOnClose if settings.name == "broken" else ObservedSink
        return kind(build_sink(settings, session=session), settings.name, history, open_gate)

    settings = make_settings(
        sinks=[
            {"type": "file", "name": "broken", "directory": str(tmp_path / "a")},
            {"type": "file", "name": "fine", "directory": str(tmp_path / "b")},
        ]
    )
    relay = Relay(settings, sink_factory=factory)
    await relay.start()
    with capture_logs() as logs:
        await relay.stop()
    assert history == ["broken closed", "fine closed"]
    assert [(e["event"], e["sink"]) for e in logs if e["log_level"] == "error"] == [
        ("closing a sink failed", "broken")
    ]


async def test_a_failing_shutdown_step_still_closes_the_store(
    make_settings: MakeSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    relay = Relay(make_settings())
    await relay.start()
    assert relay.dispatcher is not None

    async def broken_stop(*, grace_seconds: float) -> None:
        raise RuntimeError("dispatcher broke")

    monkeypatch.setattr(relay.dispatcher, "stop", broken_stop)
    with capture_logs() as logs:
        await relay.stop()
    (failed,) = [line for line in logs if line["event"].startswith("a shutdown step failed")]
    assert failed["step"] == "stop_dispatcher"
    assert logs[-1]["event"] == "stopped"
    assert relay.dispatcher is None and relay.pulse is None
    with pytest.raises(StoreUnavailableError):
        await relay.store.next_due_at(["file"], include_fetches=True)


class _Node:
    def __init__(self) -> None:
        self.other: _Node | None = None


def test_startup_objects_are_frozen_after_their_garbage_is_collected() -> None:
    # A cycle that start-up left behind: only the cyclic collector can free it.
    first, second = _Node(), _Node()
    first.other, second.other = second, first
    gone = weakref.ref(first)
    del first, second
    kept = _Node()
    try:
        freeze_startup_objects()
        assert gone() is None, "garbage from before the freeze is collected, not kept"
        assert gc.get_freeze_count() > 0
        assert gc.is_tracked(kept)
    finally:
        gc.unfreeze()
    assert gc.get_freeze_count() == 0


# --- a failed start, readiness reasons -----------------------------------------------------


async def test_a_start_that_fails_stops_the_relay_and_logs_stopped_once(
    make_settings: MakeSettings,
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        settings = make_settings(server={"host": "127.0.0.1", "port": port})
        with capture_logs() as logs, pytest.raises(OSError):
            await serve(settings)
    # The failed start stops the relay, then serve stops it on its way out: once is done.
    assert [line["event"] for line in logs].count("stopped") == 1


async def test_readiness_always_says_why_the_store_is_not_writable(
    make_settings: MakeSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    relay = Relay(make_settings())
    await relay.start()
    try:
        never = asyncio.Event()

        async def no_answer() -> None:
            await never.wait()

        async def unavailable_without_text() -> None:
            raise StoreUnavailableError("")

        monkeypatch.setattr(app_module, "READINESS_STORE_TIMEOUT_SECONDS", 0.05)
        monkeypatch.setattr(relay.store, "check_writable", no_answer)
        assert await relay.readiness() == ["store not writable: no answer within 0.05 s"]
        monkeypatch.setattr(relay.store, "check_writable", unavailable_without_text)
        assert await relay.readiness() == ["store not writable: unavailable, no reason given"]
    finally:
        monkeypatch.undo()
        await relay.stop()
