"""The inspector UI: its pages over plain HTTP, then the real UI in headless Chromium.

The browser tests drive Debian's chromium (`/usr/bin/chromium`, never a downloaded
browser) with Playwright's async API against a relay on real ports, the Pulse
emulator and a real receiving app. Outside CI a machine without chromium skips
them; under CI (`$CI` set, as `.ci/run` does) that is a failure.
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest
from playwright.async_api import Browser, Dialog, Page, async_playwright, expect

from pulse_relay.admin.ui import (
    MAX_DIFF_LINES,
    age_text,
    duration_text,
    envelope_diff,
    safe_next,
    short_time,
)
from pulse_relay.app import Relay
from pulse_relay.emulator import PulseEmulator
from tests.helpers import (
    SECRET,
    Receiver,
    StartRelay,
    call,
    require_debian_package,
    signed,
    wait_for,
)
from tests.rawhttp import close, read_answer, request_bytes

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--no-first-run",
]
TOKEN = "inspector-test-token-0123456789"
XSS_TYPE = "job.completed<script>window.__xss = 'type'</script>"
XSS_DATA = {
    "note": "<script>window.__xss = 'payload'</script>",
    "html": "<img src=x onerror=window.__xss=1;alert(document.domain)>",
}
# The contract: a webhook shows in the open list within a second of its arrival.
LIVE_DEADLINE_MS = 1_000


# -- a relay with an admin listener, the emulator and a receiving app -------------------


async def start_ui_relay(
    start_relay: StartRelay,
    emulator: PulseEmulator,
    receiver: Receiver,
    **sections: Any,
) -> Relay:
    """A relay whose HTTP sink `app` posts to `receiver`, fetching jobs from the emulator."""
    return await start_relay(
        pulse={"base_url": emulator.base_url, "api_key": emulator.api_key},
        sinks=[
            {
                "name": "app",
                "type": "http",
                "url": receiver.url,
                "events": ["*"],
                "retry_initial_seconds": 0.05,
                "max_attempts": 2,
            }
        ],
        **sections,
    )


@pytest.fixture
async def relay(start_relay: StartRelay, emulator: PulseEmulator, receiver: Receiver) -> Relay:
    """A relay without an admin token (the admin listener on loopback)."""
    return await start_ui_relay(start_relay, emulator, receiver)


@pytest.fixture
async def guarded(start_relay: StartRelay, emulator: PulseEmulator, receiver: Receiver) -> Relay:
    """A relay whose admin listener needs TOKEN."""
    return await start_ui_relay(start_relay, emulator, receiver, admin={"token": TOKEN})


async def send(
    relay: Relay,
    emulator: PulseEmulator,
    event_type: str = "job.completed",
    job_id: str | None = "job-1",
    *,
    webhook_id: str,
    data: dict[str, Any] | None = None,
    add_job: bool = True,
) -> None:
    """A signed webhook through the real ingress (its job completed in the emulator)."""
    if job_id is not None and add_job:
        emulator.add_job(job_id)
    status, answer = await emulator.send_webhook(
        relay.webhook_url, SECRET, event_type, job_id, webhook_id=webhook_id, data=data
    )
    assert (status, answer.get("status")) == (202, "accepted"), answer


async def settled(relay: Relay, event_id: str, *, attempts: int = 1) -> None:
    """Wait until `event_id` has no pending delivery and at least `attempts` attempts."""

    async def done() -> bool:
        view = await relay.store.get_event(event_id)
        if view is None:
            return False
        states = [d["state"] for d in view.deliveries.values()]
        tried = [a for a in view.attempts if a.sink is not None]
        return bool(states) and "pending" not in states and len(tried) >= attempts

    await wait_for(done)


async def fetch(
    url: str, *, method: str = "GET", cookies: dict[str, str] | None = None, **kwargs: Any
) -> tuple[int, dict[str, str], str]:
    """One plain HTTP request (no redirects followed): status, headers, text."""
    async with (
        aiohttp.ClientSession(cookies=cookies) as session,
        session.request(method, url, allow_redirects=False, **kwargs) as response,
    ):
        return response.status, dict(response.headers), await response.text()


# -- the pages over plain HTTP ------------------------------------------------------------


async def test_list_and_event_pages_render_server_side(
    relay: Relay, emulator: PulseEmulator
) -> None:
    await send(relay, emulator, webhook_id="msg_plain_1")
    await settled(relay, "msg_plain_1")

    status, headers, text = await fetch(relay.admin_url + "/")
    assert status == 200
    assert headers["Content-Type"].startswith("text/html")
    assert "script-src 'self'" in headers["Content-Security-Policy"]
    assert "frame-ancestors 'none'" in headers["Content-Security-Policy"]
    assert 'data-row="msg_plain_1"' in text
    assert 'href="/events/msg_plain_1"' in text

    status, _, text = await fetch(relay.admin_url + "/events/msg_plain_1")
    assert status == 200
    assert "Envelope sent to app" in text
    assert "Replay to app" in text
    assert "job-1" in text


async def test_pages_escape_type_and_payload(relay: Relay, emulator: PulseEmulator) -> None:
    await send(relay, emulator, XSS_TYPE, webhook_id="msg_plain_xss", data=XSS_DATA)
    await settled(relay, "msg_plain_xss")

    for path in ("/", "/events/msg_plain_xss"):
        status, _, text = await fetch(relay.admin_url + path)
        assert status == 200
        assert "<script>window" not in text
        assert "<img src" not in text
        assert "&lt;script&gt;window.__xss" in text


async def test_events_holding_lone_surrogates_are_shown_with_replacements(
    relay: Relay, emulator: PulseEmulator
) -> None:
    # A job with `\ud800` escapes (the emulator answers them as a hostile document can
    # make Pulse do), and a payload field holding one.
    emulator.add_job("job-hostile", result={"text": "caf\ud800"})
    await send(
        relay,
        emulator,
        job_id="job-hostile",
        webhook_id="msg_hostile",
        data={"note": "\udfff"},
        add_job=False,
    )
    await settled(relay, "msg_hostile")
    # An event whose type holds one, sent with a header that is not UTF-8 (kept as a
    # lone surrogate in the stored headers).
    body = b'{"type": "job.\\ud800", "data": {"job_id": "job-2"}}'
    headers = {**signed(body, webhook_id="msg_bad_type"), "User-Agent": "caf\xe9"}
    reader, writer = await asyncio.open_connection("127.0.0.1", urlsplit(relay.webhook_url).port)
    writer.write(request_bytes(body, headers))
    answer = await read_answer(reader)
    await close(writer)
    assert (answer.status, answer.document["status"]) == (200, "invalid")

    for event_id in ("msg_hostile", "msg_bad_type"):
        status, _, text = await fetch(f"{relay.admin_url}/events/{event_id}")
        assert status == 200, text
        assert event_id in text
        status, document = await call("GET", f"{relay.admin_url}/api/events/{event_id}")
        assert status == 200, document
    assert "caf\ufffd" in text and "job.\ufffd" in text
    assert document["headers"]["user-agent"] == "caf\ufffd"
    assert document["payload"]["type"] == "job.\ufffd"
    status, document = await call("GET", f"{relay.admin_url}/api/events/msg_hostile")
    assert document["job"]["result"]["text"] == "caf\ufffd"
    assert document["payload"]["data"]["note"] == "\ufffd"
    assert document["envelopes"]["app"]["job"]["result"]["text"] == "caf\ufffd"


async def test_older_pages_keep_the_filters_and_the_page_size(
    relay: Relay, emulator: PulseEmulator
) -> None:
    for number in range(3):
        await send(relay, emulator, webhook_id=f"msg_page_{number}")

    _, _, text = await fetch(relay.admin_url + "/?type=job.completed&limit=2")
    assert text.count("<tr data-row=") == 2
    assert "msg_page_0" not in text
    [older] = re.findall(r'href="(/\?[^"]+)" rel="next"', text)
    older = older.replace("&amp;", "&")
    assert "type=job.completed" in older
    assert "limit=2" in older

    _, _, text = await fetch(relay.admin_url + older)
    assert text.count("<tr data-row=") == 1
    assert 'data-row="msg_page_0"' in text
    assert 'rel="next"' not in text
    assert 'href="/?type=job.completed&amp;limit=2">← newest' in text


async def test_a_payload_that_is_not_json_is_shown_as_escaped_text(relay: Relay) -> None:
    body = b"<script>alert(1)</script> not json"
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            relay.webhook_url, data=body, headers=signed(body, webhook_id="msg_raw")
        ) as answer,
    ):
        assert answer.status == 200

    status, _, text = await fetch(relay.admin_url + "/events/msg_raw")
    assert status == 200
    assert "Payload (not JSON)" in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt; not json" in text
    assert "<script>alert" not in text


async def test_unknown_event_and_bad_filters_answer_html_errors(relay: Relay) -> None:
    status, headers, text = await fetch(relay.admin_url + "/events/msg_nowhere")
    assert status == 404
    assert headers["Content-Type"].startswith("text/html")
    assert "msg_nowhere" in text

    status, _, text = await fetch(relay.admin_url + "/?state=lost")
    assert status == 400
    assert "state: must be one of" in text

    status, _, text = await fetch(relay.admin_url + "/?before=not-a-cursor")
    assert status == 400
    assert "before:" in text


async def test_event_ids_with_reserved_characters_link_to_their_page(
    relay: Relay, emulator: PulseEmulator
) -> None:
    await send(relay, emulator, webhook_id="msg_a/b?c#d", job_id="job-odd")
    await settled(relay, "msg_a/b?c#d")

    _, _, text = await fetch(relay.admin_url + "/")
    assert 'href="/events/msg_a%2Fb%3Fc%23d"' in text
    status, _, text = await fetch(relay.admin_url + "/events/msg_a%2Fb%3Fc%23d")
    assert status == 200
    assert "job-odd" in text


async def test_static_assets_need_no_token(guarded: Relay) -> None:
    relay = guarded
    for asset in ("/static/ui.js", "/static/ui.css"):
        status, _, text = await fetch(relay.admin_url + asset)
        assert status == 200
        assert text


async def test_with_a_token_the_pages_need_the_login_cookie(
    guarded: Relay, emulator: PulseEmulator
) -> None:
    relay = guarded
    await send(relay, emulator, webhook_id="msg_secret_1")
    login = relay.admin_url + "/login"

    for path in ("/", "/events/msg_secret_1", "/watches"):
        status, headers, text = await fetch(relay.admin_url + path)
        assert status == 303
        assert headers["Location"].startswith("/login")
        assert "msg_secret_1" not in text

    status, _, text = await fetch(login)
    assert status == 200
    assert 'name="token"' in text
    assert "msg_secret_1" not in text
    assert "pending per sink" not in text

    status, headers, text = await fetch(login, method="POST", data={"token": "wrong"})
    assert status == 401
    assert "not the admin token" in text
    assert "Set-Cookie" not in headers

    status, headers, _ = await fetch(
        login, method="POST", data={"token": TOKEN, "next": "//elsewhere.example/"}
    )
    assert status == 303
    assert headers["Location"] == "/"
    cookie = headers["Set-Cookie"]
    assert "HttpOnly" in cookie
    assert "SameSite=Strict" in cookie
    assert TOKEN not in cookie
    name, value = cookie.split(";", 1)[0].split("=", 1)

    status, _, text = await fetch(relay.admin_url + "/", cookies={name: value})
    assert status == 200
    assert "msg_secret_1" in text
    status, headers, _ = await fetch(login + "?next=/watches", cookies={name: value})
    assert (status, headers["Location"]) == (303, "/watches")


async def test_login_from_another_origin_is_refused(guarded: Relay) -> None:
    relay = guarded
    status, headers, _ = await fetch(
        relay.admin_url + "/login",
        method="POST",
        data={"token": TOKEN},
        headers={"Origin": "http://evil.example"},
    )
    assert status == 403
    assert "Set-Cookie" not in headers


async def test_without_a_token_login_leads_straight_to_the_list(relay: Relay) -> None:
    status, headers, _ = await fetch(relay.admin_url + "/login")
    assert (status, headers["Location"]) == (303, "/")
    status, headers, _ = await fetch(relay.admin_url + "/login", method="POST", data={"token": "x"})
    assert (status, headers["Location"]) == (303, "/")
    status, headers, _ = await fetch(relay.admin_url + "/login?next=/watches")
    assert (status, headers["Location"]) == (303, "/watches")


@pytest.mark.parametrize(
    ("target", "followed"),
    [
        ("/", "/"),
        ("/events/msg_1", "/events/msg_1"),
        ("/?state=dead&sink=files", "/?state=dead&sink=files"),
        ("/events/msg%201", "/events/msg%201"),
        (None, "/"),
        ("", "/"),
        ("events", "/"),
        ("https://evil.example/", "/"),
        ("//evil.example/", "/"),
        ("/\\evil.example", "/"),
        ("/\tevil.example", "/"),
        # Browsers drop tabs and newlines from a Location: "/\t/x" would become "//x".
        ("/\t/evil.example/x", "/"),
        ("/\n/evil.example/x", "/"),
        ("/\r/evil.example/x", "/"),
        ("/\x00/evil.example", "/"),
        ("/\x7f/evil.example", "/"),
        ("/\x85/evil.example", "/"),
        ("/events/\\x", "/"),
        # What percent-decoding makes of it counts, not the text as given.
        ("/%2F/evil.example", "/"),
        ("/%2f/evil.example", "/"),
        ("/%5Cevil.example", "/"),
        ("/%09/evil.example/x", "/"),
        ("/events/%0d%0aSet-Cookie:x", "/"),
        ("%2F%2Fevil.example", "/"),
    ],
)
def test_safe_next_keeps_logins_on_this_listener(target: str | None, followed: str) -> None:
    assert safe_next(target) == followed


def test_people_readable_times() -> None:
    assert duration_text(None) == "—"
    assert duration_text(38.4) == "38 ms"
    assert duration_text(1_240) == "1.24 s"
    assert duration_text(125_000) == "2 min 5 s"
    assert age_text(None) is None
    assert age_text(4.9) == "4 s"
    assert age_text(720) == "12 min"
    assert age_text(3 * 3_600 + 5) == "3 h"
    assert age_text(2 * 86_400) == "2 d"
    assert short_time("2026-11-23T10:30:00.123+00:00") == "2026-11-23 10:30:00.123"
    assert short_time("not a time") == "not a time"


def test_an_edited_envelope_is_diffed_line_by_line_unless_too_long() -> None:
    original = {"id": "m", "job": {"status": "failed"}, "tail": 1}
    edited = {"id": "m", "job": {"status": "completed"}, "tail": 1}
    assert envelope_diff(original, edited) == [
        ("hunk", "@@ -1,7 +1,7 @@"),
        ("same", " {"),
        ("same", '   "id": "m",'),
        ("same", '   "job": {'),
        ("del", '-    "status": "failed"'),
        ("add", '+    "status": "completed"'),
        ("same", "   },"),
        ("same", '   "tail": 1'),
        ("same", " }"),
    ]
    assert envelope_diff(original, dict(original)) == []
    long = {f"k{n}": n for n in range(MAX_DIFF_LINES)}
    assert envelope_diff(original, long) is None


# -- the real UI in headless Chromium ---------------------------------------------------


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    """Debian's chromium driven by Playwright; CI fails where a developer's machine skips."""
    require_debian_package("chromium", CHROMIUM.exists())
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS
        )
        try:
            yield launched
        finally:
            await launched.close()


class Watched:
    """What a page did that a test must see: dialogs opened and uncaught script errors."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self.dialogs: list[str] = []
        self.errors: list[str] = []
        self.accept_dialogs = False
        page.on("dialog", self._on_dialog)
        page.on("pageerror", lambda error: self.errors.append(str(error)))

    async def _on_dialog(self, dialog: Dialog) -> None:
        self.dialogs.append(dialog.message)
        if self.accept_dialogs:
            await dialog.accept()
        else:
            await dialog.dismiss()


@pytest.fixture
async def watched(browser: Browser) -> AsyncIterator[Watched]:
    """A fresh browser page whose dialogs and script errors are recorded."""
    context = await browser.new_context(
        viewport={"width": 1280, "height": 800},
        permissions=["clipboard-read", "clipboard-write"],
    )
    page = await context.new_page()
    page.set_default_timeout(10_000)
    yield Watched(page)
    await context.close()


async def open_live(page: Page, url: str) -> None:
    """Open `url` and wait until its change stream is connected."""
    await page.goto(url)
    await expect(page.locator("#live.on")).to_be_visible()


async def test_a_webhook_shows_in_the_list_within_a_second_without_reload(
    relay: Relay, emulator: PulseEmulator, watched: Watched
) -> None:
    page = watched.page
    await open_live(page, relay.admin_url + "/")
    await page.evaluate("window.__sameDocument = true")

    await send(relay, emulator, webhook_id="msg_live_1", job_id="job-live")
    row = page.locator('tr[data-row="msg_live_1"]')
    await expect(row).to_be_visible(timeout=LIVE_DEADLINE_MS)
    await expect(row).to_contain_text("job-live")
    # Its delivery outcome follows over the same stream.
    await expect(row.locator("td.state")).to_have_text("delivered")
    assert await page.evaluate("window.__sameDocument") is True
    assert watched.errors == []


async def test_opening_an_event_shows_payload_attempts_and_replay_adds_one(
    relay: Relay, emulator: PulseEmulator, receiver: Receiver, watched: Watched
) -> None:
    page = watched.page
    await send(relay, emulator, webhook_id="msg_open_1", job_id="job-open", data={"pages": 7})
    await settled(relay, "msg_open_1")
    await open_live(page, relay.admin_url + "/")

    await page.locator('tr[data-row="msg_open_1"] td.type a').click()
    await expect(page).to_have_url(re.compile(r"/events/msg_open_1$"))
    await expect(page.locator("#payload-json")).to_contain_text('"pages": 7')
    await expect(page.locator("#job-json")).to_contain_text('"status": "completed"')
    await expect(page.locator("#envelope-1")).to_contain_text('"id": "msg_open_1"')
    await page.locator('button[data-copy="payload-json"]').click()
    await expect(page.locator('button[data-copy="payload-json"]')).to_have_text("Copied")
    assert '"pages": 7' in await page.evaluate("navigator.clipboard.readText()")
    await expect(page.locator("#payload-json")).to_be_visible()
    card = page.locator('[data-sink="app"]')
    await expect(card.locator("table.attempts tbody tr")).to_have_count(1)
    await expect(card.locator("table.attempts tbody tr")).to_contain_text("200")

    await page.evaluate("window.__sameDocument = true")
    await expect(page.locator("#live.on")).to_be_visible()
    await card.get_by_role("button", name="Replay to app").click()
    await expect(card.locator("table.attempts tbody tr")).to_have_count(2)
    await expect(card.locator("table.attempts tbody tr").nth(1)).to_contain_text("200")
    assert await page.evaluate("window.__sameDocument") is True
    assert receiver.attempts == 2
    assert watched.errors == []


async def test_a_script_in_type_or_payload_is_shown_never_run(
    relay: Relay, emulator: PulseEmulator, watched: Watched
) -> None:
    page = watched.page
    await open_live(page, relay.admin_url + "/")
    # Through the live path (a swapped-in row) first, then a full render of its page.
    await send(relay, emulator, XSS_TYPE, webhook_id="msg_xss_1", data=XSS_DATA)
    row = page.locator('tr[data-row="msg_xss_1"]')
    await expect(row.locator("td.type")).to_have_text(XSS_TYPE)
    await settled(relay, "msg_xss_1")

    await row.locator("td.type a").click()
    await expect(page.locator("h1")).to_contain_text(XSS_TYPE)
    await expect(page.locator("#payload-json")).to_contain_text(XSS_DATA["html"])
    await expect(page.locator("#payload-json")).to_contain_text(XSS_DATA["note"])
    assert await page.evaluate("window.__xss") is None
    assert await page.locator("#payload-json img, main script").count() == 0
    assert watched.dialogs == []
    assert watched.errors == []


async def test_filters_narrow_the_list(
    relay: Relay, emulator: PulseEmulator, watched: Watched
) -> None:
    await send(
        relay, emulator, "job.completed", "job-a", webhook_id="msg_filter_a", data={"po": "PO-4471"}
    )
    await send(relay, emulator, "job.failed", "job-b", webhook_id="msg_filter_b")
    await send(relay, emulator, "credits.low_balance", None, webhook_id="msg_filter_c")
    page = watched.page
    await open_live(page, relay.admin_url + "/")
    await expect(page.locator("tr[data-row]")).to_have_count(3)

    await page.get_by_label("type").fill("job.failed")
    await page.get_by_role("button", name="Filter").click()
    await expect(page.locator("tr[data-row]")).to_have_count(1)
    await expect(page.locator('tr[data-row="msg_filter_b"]')).to_be_visible()

    await page.get_by_role("link", name="Clear").click()
    await page.get_by_label("search").fill("PO-4471")
    await page.get_by_role("button", name="Filter").click()
    await expect(page.locator("tr[data-row]")).to_have_count(1)
    await expect(page.locator('tr[data-row="msg_filter_a"]')).to_be_visible()

    await page.get_by_role("link", name="Clear").click()
    await page.get_by_label("job id").fill("job-a")
    await page.get_by_role("button", name="Filter").click()
    await expect(page.locator("tr[data-row]")).to_have_count(1)
    await expect(page.locator('tr[data-row="msg_filter_a"]')).to_be_visible()

    # A new event that the filters exclude does not appear; one they match does.
    await expect(page.locator("#live.on")).to_be_visible()
    await send(relay, emulator, "job.completed", "job-z", webhook_id="msg_filter_z")
    await send(relay, emulator, "job.completed", "job-a", webhook_id="msg_filter_a2")
    await expect(page.locator('tr[data-row="msg_filter_a2"]')).to_be_visible()
    await expect(page.locator("tr[data-row]")).to_have_count(2)
    assert watched.errors == []


async def test_replay_all_dead_and_login_with_a_token(
    guarded: Relay, emulator: PulseEmulator, receiver: Receiver, watched: Watched
) -> None:
    relay = guarded
    receiver.answers = [400]
    await send(relay, emulator, webhook_id="msg_dead_1")
    await settled(relay, "msg_dead_1")
    page = watched.page

    await page.goto(relay.admin_url + "/")
    await expect(page).to_have_url(re.compile(r"/login"))
    await expect(page.locator("body")).not_to_contain_text("msg_dead_1")
    await page.get_by_label("token").fill("not the token")
    await page.get_by_role("button", name="Log in").click()
    await expect(page.get_by_role("alert")).to_contain_text("not the admin token")
    await page.get_by_label("token").fill(TOKEN)
    await page.get_by_role("button", name="Log in").click()
    await expect(page.locator('tr[data-row="msg_dead_1"] td.state')).to_have_text("dead")
    [cookie] = await page.context.cookies()
    assert cookie["httpOnly"] is True
    assert cookie["sameSite"] == "Strict"
    assert cookie["value"] != TOKEN

    await expect(page.locator("#live.on")).to_be_visible()
    watched.accept_dialogs = True
    await page.get_by_role("button", name="Replay all dead").click()
    await expect(page.locator("#flash")).to_contain_text("Replaying 1")
    await expect(page.locator('tr[data-row="msg_dead_1"] td.state')).to_have_text("delivered")
    assert receiver.attempts == 2
    assert watched.dialogs == ["Deliver every dead delivery again?"]

    await page.get_by_role("button", name="Log out").click()
    await expect(page).to_have_url(re.compile(r"/login"))
    assert watched.errors == []


async def test_watches_are_added_with_metadata_and_removed(
    relay: Relay, emulator: PulseEmulator, watched: Watched
) -> None:
    emulator.add_job("job-watch", status="processing")
    page = watched.page
    await page.goto(relay.admin_url + "/watches")
    await expect(page.locator("tr[data-row]")).to_have_count(0)

    await page.get_by_label("job id").fill("job-watch")
    await page.get_by_label("metadata").fill("user=alice\nfile = invoice.pdf")
    await page.get_by_role("button", name="Watch").click()
    row = page.locator('tr[data-row="job-watch"]')
    await expect(row).to_contain_text("user=alice")
    await expect(row).to_contain_text("file=invoice.pdf")
    [watch] = await relay.store.list_watches()
    assert watch.metadata == {"user": "alice", "file": "invoice.pdf"}

    await page.get_by_label("metadata").fill("no equals sign")
    await page.get_by_label("job id").fill("job-other")
    await page.get_by_role("button", name="Watch").click()
    await expect(page.locator("#flash")).to_contain_text("not KEY=VALUE")
    await page.get_by_label("metadata").fill("")
    await page.get_by_label("job id").fill("not a job id!")
    await page.get_by_role("button", name="Watch").click()
    await expect(page.locator("#flash")).to_contain_text("400 bad_request: job_id:")
    await expect(page.locator("tr[data-row]")).to_have_count(1)

    await row.get_by_role("button", name="Remove").click()
    await expect(row).to_have_count(0)
    assert await relay.store.list_watches() == []
    assert watched.errors == []


# -- screenshots for the README -----------------------------------------------------------

DOCS = Path(__file__).resolve().parent.parent / "docs"


async def build_demo_state(
    start_relay: StartRelay, emulator: PulseEmulator, tmp_path: Path, app: Receiver, crm: Receiver
) -> tuple[Relay, str]:
    """A relay that has seen some traffic; returns it and a featured event id.

    `app` answers 503 once to the featured event; `crm` answers 422 (dead at once).
    """
    script = tmp_path / "index.py"
    script.write_text(
        "import json, sys\nevent = json.load(sys.stdin)\nprint('indexed', event['job_id'])\n"
    )
    relay = await start_relay(
        pulse={"base_url": emulator.base_url, "api_key": emulator.api_key},
        poll={"interval_seconds": 0.1, "max_interval_seconds": 0.2},
        sinks=[
            {"name": "files", "type": "file", "directory": str(tmp_path / "results")},
            {"name": "app", "type": "http", "url": app.url, "retry_initial_seconds": 0.05},
            {
                "name": "search-index",
                "type": "command",
                "argv": [sys.executable, str(script)],
                "events": ["job.completed"],
            },
            {"name": "crm", "type": "http", "url": crm.url, "events": ["job.failed"]},
        ],
    )
    emulator.add_job("job-invoice-2291")
    emulator.add_job("job-contract-7730", large_result=True)
    emulator.add_job("job-receipt-0412", status="failed", error="the scan is unreadable")
    emulator.add_job("job-watched-5150", statuses=["processing", "completed"])
    story = [
        ("job.created", "job-invoice-2291", None),
        ("job.processing", "job-invoice-2291", None),
        ("job.completed", "job-contract-7730", None),
        ("job.failed", "job-receipt-0412", None),
        ("credits.low_balance", None, {"remaining_credits": 120}),
    ]
    for number, (event_type, job_id, data) in enumerate(story):
        webhook_id = f"msg_demo_{number}"
        await send(
            relay, emulator, event_type, job_id, webhook_id=webhook_id, data=data, add_job=False
        )
    await relay.store.add_watches(
        ["job-watched-5150"], metadata={"user": "alice"}, interval_seconds=0.1
    )
    assert relay.poller is not None
    relay.poller.notify()

    async def quiet() -> bool:
        return not await relay.store.pending_counts()

    await wait_for(quiet)
    app.answers = [503]
    featured = "msg_2Jv7pYGL7UwXqF3v6RjLVxQYPZG"
    await send(
        relay, emulator, "job.completed", "job-invoice-2291", webhook_id=featured, add_job=False
    )
    await settled(relay, featured, attempts=3)
    await settled(relay, "poll:job-watched-5150:completed", attempts=3)
    return relay, featured


async def test_screenshots_of_a_demo_state(
    request: pytest.FixtureRequest,
    start_relay: StartRelay,
    emulator: PulseEmulator,
    receiver: Receiver,
    watched: Watched,
    tmp_path: Path,
) -> None:
    """With --screenshots this writes docs/inspector-*.png; always, the pages render cleanly."""
    out = DOCS if request.config.getoption("--screenshots") else tmp_path
    crm = Receiver(answers=[422] * 10)
    await crm.start()
    try:
        relay, featured = await build_demo_state(start_relay, emulator, tmp_path, receiver, crm)
        await take_screenshots(relay, featured, watched, out)
    finally:
        await crm.stop()
    for name in ("inspector-list.png", "inspector-event.png"):
        assert (out / name).stat().st_size > 10_000
    assert watched.errors == []


async def take_screenshots(relay: Relay, featured: str, watched: Watched, out: Path) -> None:
    """The list and the featured event's page, as a visitor sees them."""
    page = watched.page
    await page.set_viewport_size({"width": 1280, "height": 560})

    await open_live(page, relay.admin_url + "/")
    await expect(page.locator("tr[data-row]")).to_have_count(7)
    await page.screenshot(path=out / "inspector-list.png", full_page=True)

    await open_live(page, f"{relay.admin_url}/events/{featured}")
    await expect(page.locator('[data-sink="app"] table.attempts tbody tr')).to_have_count(2)
    await page.screenshot(path=out / "inspector-event.png", full_page=True)


HOSTILE_NOTE = "</textarea><script>alert(1)</script><img src=x onerror=window.__xss=1>"


async def test_edit_and_replay_checks_the_envelope_sends_it_and_shows_its_diff(
    relay: Relay, emulator: PulseEmulator, receiver: Receiver, watched: Watched
) -> None:
    await send(relay, emulator, webhook_id="msg_edit_1", job_id="job-edit")
    await settled(relay, "msg_edit_1")
    page = watched.page
    await open_live(page, relay.admin_url + "/events/msg_edit_1")
    await page.get_by_text("Edit and replay").click()
    form = page.locator("form#edit-replay")
    area = form.locator("textarea")
    original = json.loads(await area.input_value())
    assert (original["id"], original["job"]["status"]) == ("msg_edit_1", "completed")
    await expect(form.get_by_label("app")).to_be_checked()

    # Checked in the page: nothing reaches the API.
    send_button = form.get_by_role("button", name="Replay edited envelope")
    for text, problem in (("[1, 2]", "must be a JSON object"), ("{oops", "not valid JSON")):
        await area.fill(text)
        await send_button.click()
        await expect(form.locator("[data-edit-error]")).to_contain_text(f"envelope: {problem}")
    await area.fill(json.dumps(original))
    await form.get_by_label("app").uncheck()
    await send_button.click()
    await expect(form.locator("[data-edit-error]")).to_contain_text("sinks: choose")
    assert receiver.attempts == 1

    edited = {**original, "job": {**original["job"], "status": "fixed"}, "note": HOSTILE_NOTE}
    await form.get_by_label("app").check()
    await area.fill(json.dumps(edited, indent=2))
    await send_button.click()
    await expect(page.locator("#flash")).to_have_text("Edited envelope queued for app.")
    await expect(form.locator("[data-edit-error]")).to_be_hidden()
    card = page.locator('[data-sink="app"]')
    await expect(card.locator("table.attempts tbody tr")).to_have_count(2)
    await expect(card.locator("table.attempts tbody tr").nth(1)).to_contain_text("edited")
    assert receiver.received[-1].envelope == edited
    diff = card.locator("pre.diff")
    # Against the original envelope, line by line: only what was edited.
    await expect(diff.locator(".del")).to_have_text(['-    "status": "completed",', "-  }"])
    await expect(diff.locator(".add")).to_have_text(
        ['+    "status": "fixed",', "+  },", f'+  "note": {json.dumps(HOSTILE_NOTE)}']
    )

    # A full render: the textarea now starts from what the sink received, as text.
    await page.reload()
    await page.get_by_text("Edit and replay").click()
    assert json.loads(await area.input_value()) == edited
    assert await page.evaluate("window.__xss") is None
    assert await page.locator("main script, main img").count() == 0
    assert watched.dialogs == []
    assert watched.errors == []
