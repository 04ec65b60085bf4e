"""The inspector: server-rendered pages over the same documents the API serves.

Every piece of data is rendered, and escaped, on the server (Jinja autoescape).
The one script, static/ui.js, never builds markup from data: when /api/stream
reports a change it fetches the page again and swaps the `data-live` sections,
and it sends the page's actions to /api/ with the `X-Pulse-Relay: 1` header.
No CDN, no build step: templates and assets ship inside the package.
"""

from __future__ import annotations

import difflib
import json
import unicodedata
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlencode

import aiohttp_jinja2
import jinja2
from aiohttp import web

from pulse_relay.admin import service
from pulse_relay.admin.auth import clear_login_cookie, set_login_cookie
from pulse_relay.admin.context import AdminContext
from pulse_relay.admin.errors import BadRequest, ServiceError
from pulse_relay.serialize import document_summary_state
from pulse_relay.store import DELIVERY_STATES
from pulse_relay.store.filters import EVENT_STATES, SOURCES

STATIC_DIR = Path(__file__).with_name("static")
# Behind autoescape, a second wall: no inline script runs, nothing loads from
# elsewhere, and no other site can frame the replay buttons.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
# Beyond this many lines a side, an edited envelope is shown whole rather than as a
# diff: difflib's matching time grows with the product of the two lengths.
MAX_DIFF_LINES = 5_000
LIST_FILTERS = ("type", "state", "sink", "source", "job_id", "q")
# What the "older" and "newest" links carry over from the current page.
CARRIED_PARAMS = (*LIST_FILTERS, "limit")


def setup_ui(app: web.Application, ctx: AdminContext) -> None:
    """Register the inspector's pages and static files on the admin app."""
    environment = aiohttp_jinja2.setup(
        app,
        loader=jinja2.PackageLoader("pulse_relay.admin", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    environment.filters.update(pretty=pretty_json, when=short_time, duration=duration_text)
    pages = _Pages(ctx)
    app.router.add_get("/", pages.events)
    app.router.add_get("/events/{event_id}", pages.event)
    app.router.add_get("/watches", pages.watches)
    app.router.add_get("/login", pages.login_form)
    app.router.add_post("/login", pages.login)
    app.router.add_post("/logout", pages.logout)
    app.router.add_static("/static/", STATIC_DIR)


def pretty_json(value: Any) -> str:
    """A document as indented JSON text (escaped later, like any text)."""
    if isinstance(value, str):
        return value
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=False)


def short_time(iso: str) -> str:
    """`2026-11-23T10:30:00.123+00:00` as `2026-11-23 10:30:00.123`."""
    try:
        moment = datetime.fromisoformat(iso)
    except ValueError:
        return iso
    return moment.strftime("%Y-%m-%d %H:%M:%S.") + f"{moment.microsecond // 1000:03d}"


def duration_text(milliseconds: float | None) -> str:
    """A duration for people: `38 ms`, `1.24 s`, `2 min 5 s`."""
    if milliseconds is None:
        return "—"
    if milliseconds < 1000:
        return f"{milliseconds:.0f} ms"
    seconds = milliseconds / 1000
    if seconds < 60:
        return f"{seconds:.2f} s"
    return f"{int(seconds // 60)} min {int(seconds % 60)} s"


def age_text(seconds: float | None) -> str | None:
    """How old something is, coarsely: `4 s`, `12 min`, `3 h`, `2 d`; None stays None."""
    if seconds is None:
        return None
    for unit_seconds, unit in ((86_400, "d"), (3_600, "h"), (60, "min")):
        if seconds >= unit_seconds:
            return f"{int(seconds // unit_seconds)} {unit}"
    return f"{int(seconds)} s"


def path_segment(value: str) -> str:
    """`value` percent-encoded as one URL path segment (ids may hold `/`, `?` or `#`)."""
    return quote(value, safe="")


def safe_next(target: str | None) -> str:
    """Where to go after logging in: a path on this listener, never another site.

    `target` is followed only when, as given and percent-decoded, it starts with one `/`
    followed by neither `/` nor `\\` and holds no control character or backslash:
    browsers drop tabs and newlines from a Location and read `\\` as `/`, so `/%09/evil`
    would lead to `//evil`, another site. Anything else leads to `/`.
    """
    if not target:
        return "/"
    for form in (target, unquote(target)):
        if not form.startswith("/") or form.startswith(("//", "/\\")):
            return "/"
        if "\\" in form or any(unicodedata.category(char) == "Cc" for char in form):
            return "/"
    return target


def _event_links(document: dict[str, Any]) -> dict[str, Any]:
    """A list item or full event document plus its page and API paths and its summary state."""
    segment = path_segment(document["id"])
    return {
        **document,
        "href": f"/events/{segment}",
        "api_href": f"/api/events/{segment}",
        "summary": document_summary_state(document),
    }


def envelope_diff(original: Any, edited: Any) -> list[tuple[str, str]] | None:
    """A unified line diff from `original` to `edited`, both pretty-printed: (kind, line)
    with kind "add", "del", "hunk" or "same"; [] when they are equal, None when either is
    over MAX_DIFF_LINES. The lines are text, escaped when rendered like any other."""
    before, after = pretty_json(original).splitlines(), pretty_json(edited).splitlines()
    if max(len(before), len(after)) > MAX_DIFF_LINES:
        return None
    kinds = {"+": "add", "-": "del", "@": "hunk"}
    lines = list(difflib.unified_diff(before, after, lineterm=""))[2:]  # no file names
    return [(kinds.get(line[:1], "same"), line) for line in lines]


def _edits(attempts: list[dict[str, Any]], original: Any) -> list[dict[str, Any]]:
    """The edited envelopes a sink's attempts sent, each once (its retries send it again),
    with its diff against `original`."""
    edits = []
    previous = None
    for attempt in attempts:
        envelope = attempt["edited_envelope"]
        if envelope is not None and envelope != previous:
            diff = envelope_diff(original, envelope)
            edits.append({"attempt": attempt, "envelope": envelope, "diff": diff})
        previous = envelope
    return edits


def _sink_views(document: dict[str, Any], original: Any = None) -> list[dict[str, Any]]:
    """Per sink of an event: its delivery state, its attempts, the envelope it received,
    and its edited replays' envelopes against `original` (the event's first envelope)."""
    envelopes = document.get("envelopes") or {}
    views = []
    for name, delivery in document["deliveries"].items():
        attempts = [a for a in document["attempts"] if a["sink"] == name]
        views.append(
            {
                "name": name,
                "delivery": delivery,
                "attempts": attempts,
                "envelope": envelopes.get(name),
                "edits": _edits(attempts, original),
            }
        )
    return views


class _Pages:
    """The inspector's request handlers; all data comes from `service`, as the API's does."""

    def __init__(self, ctx: AdminContext) -> None:
        self._ctx = ctx

    async def _render(
        self,
        request: web.Request,
        template: str,
        context: dict[str, Any],
        *,
        status: int = 200,
        shows_state: bool = True,
    ) -> web.Response:
        """A page with the shared header (backlog strip, navigation) and the security headers.

        `shows_state` is False for the login form, which tells a visitor nothing.
        """
        ctx = self._ctx
        backlog = _backlog(await service.stats(ctx)) if shows_state else None
        page = {
            "version": ctx.version,
            "has_token": ctx.auth.is_required,
            "backlog": backlog,
            "nav": None,
            "event_id": None,
            **context,
        }
        response = aiohttp_jinja2.render_template(template, request, page, status=status)
        response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "same-origin"
        response.headers["Cache-Control"] = "no-store"
        return response

    async def _error(self, request: web.Request, error: ServiceError) -> web.Response:
        context = {"status": error.http_status, "reason": error.error, "message": error.detail}
        return await self._render(request, "error.html", context, status=error.http_status)

    async def events(self, request: web.Request) -> web.Response:
        """`/`: the event list, filtered and paged like `GET /api/events`."""
        shown = {name: request.query.get(name, "") for name in LIST_FILTERS}
        active = {name: request.query[name] for name in CARRIED_PARAMS if request.query.get(name)}
        context: dict[str, Any] = {
            "nav": "events",
            "filters": shown,
            "choices": self._choices(),
            "before": request.query.get("before"),
            "newest_href": "/?" + urlencode(active) if active else "/",
            "next_href": None,
            "error": None,
            "events": [],
        }
        try:
            page = await service.list_events(self._ctx, service.parse_event_filters(request.query))
        except BadRequest as error:
            context["error"] = error.detail
            return await self._render(request, "events.html", context, status=400)
        context["events"] = [_event_links(item) for item in page["events"]]
        if page["next"] is not None:
            context["next_href"] = "/?" + urlencode({**active, "before": page["next"]})
        context["choices"]["types"] = sorted({e["type"] for e in page["events"] if e["type"]})
        return await self._render(request, "events.html", context)

    def _choices(self) -> dict[str, Any]:
        settings = self._ctx.settings
        return {
            "states": EVENT_STATES + DELIVERY_STATES,
            "sources": SOURCES,
            "sinks": [sink.name for sink in settings.sinks],
            "types": [],
        }

    async def event(self, request: web.Request) -> web.Response:
        """`/events/{id}`: one event with its request, job, envelopes and attempt timelines."""
        event_id = request.match_info["event_id"]
        try:
            answer, original = await service.event_page(self._ctx, event_id)
        except ServiceError as error:
            return await self._error(request, error)
        document = _event_links(answer)
        sinks = _sink_views(document, original)
        context = {
            "event": document,
            "event_id": document["id"],
            "sinks": sinks,
            "fetch_attempts": [a for a in document["attempts"] if a["sink"] is None],
            # What "Edit and replay" starts from: the envelope each sink received.
            "editable": [s for s in sinks if s["envelope"] is not None],
        }
        return await self._render(request, "event.html", context)

    async def watches(self, request: web.Request) -> web.Response:
        """`/watches`: watched jobs, a form to add one, a button to remove each."""
        answer = await service.list_watches(self._ctx.store)
        watches = [
            {**watch, "api_href": f"/api/watches/{path_segment(watch['job_id'])}"}
            for watch in answer["watches"]
        ]
        return await self._render(request, "watches.html", {"nav": "watches", "watches": watches})

    async def login_form(self, request: web.Request) -> web.StreamResponse:
        """`GET /login`: the token form (straight on when no token is needed or already in)."""
        target = safe_next(request.query.get("next"))
        auth = self._ctx.auth
        if not auth.is_required or auth.is_authenticated(request):
            raise web.HTTPSeeOther(target)
        context = {"next": target, "error": None}
        return await self._render(request, "login.html", context, shows_state=False)

    async def login(self, request: web.Request) -> web.StreamResponse:
        """`POST /login`: the right token sets the session cookie; a wrong one shows the form."""
        form = await request.post()
        target = safe_next(str(form.get("next") or "/"))
        token = form.get("token")
        auth = self._ctx.auth
        if not auth.is_required:
            raise web.HTTPSeeOther("/")
        if not isinstance(token, str) or not auth.is_token(token):
            auth.login_failed(request, via="form")
            context = {"next": target, "error": "That is not the admin token."}
            return await self._render(request, "login.html", context, status=401, shows_state=False)
        response = web.Response(status=303, headers={"Location": target})
        set_login_cookie(response, auth, request)
        return response

    async def logout(self, request: web.Request) -> web.Response:
        """`POST /logout`: forget the session cookie."""
        response = web.json_response({"status": "logged out"})
        clear_login_cookie(response)
        return response


def _backlog(stats: dict[str, Any]) -> dict[str, Any]:
    """The header strip: counts by state, pending per sink, the oldest pending event's age."""
    return {
        "events": stats["events"],
        "deliveries": stats["deliveries"],
        "pending": stats["pending"],
        "oldest_pending": age_text(stats["oldest_pending_seconds"]),
    }
