"""Who may use the admin listener: the token, the login cookie, and the cross-site rules.

With `admin.token` set, `/api/` and the UI need `Authorization: Bearer <token>` or the
login cookie. Independently of the token, a state-changing request (anything but
GET/HEAD/OPTIONS) needs the token itself or the header `X-Pulse-Relay: 1` — a
cross-site form or `fetch` cannot add that header without a CORS preflight, which
this listener never grants — and an `Origin`, when present, must be the listener's
own. A cookie alone therefore never changes anything.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.typedefs import Middleware

from pulse_relay.admin.service import Forbidden, Unauthorized

COOKIE_NAME = "pulse_relay_session"
CSRF_HEADER = "X-Pulse-Relay"
LOGIN_PATH = "/login"
# Probes and scrapers need nothing; static files hold no data.
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
OPEN_PREFIXES = ("/static/",)
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
PROXY_PREFIX = "/pulse/"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class AdminAuth:
    """The admin token, compared in constant time, and the login cookie derived from it."""

    def __init__(self, token: str, *, cookie_key: bytes | None = None) -> None:
        self._token = token.encode()
        # Per process: a restart logs every browser out, and the cookie never holds the token.
        self._cookie_key = cookie_key if cookie_key is not None else secrets.token_bytes(32)

    @property
    def is_required(self) -> bool:
        """True when a token is configured."""
        return bool(self._token)

    def is_token(self, given: str) -> bool:
        """Whether `given` is the token (False when none is configured)."""
        return self.is_required and hmac.compare_digest(given.encode(), self._token)

    def has_bearer(self, request: web.Request) -> bool:
        """Whether the request carries `Authorization: Bearer <token>`."""
        scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
        return scheme.lower() == "bearer" and self.is_token(credentials.strip())

    def cookie_value(self) -> str:
        """The login cookie's value: an HMAC of the token, useless anywhere else."""
        return hmac.new(self._cookie_key, self._token, hashlib.sha256).hexdigest()

    def has_cookie(self, request: web.Request) -> bool:
        """Whether the request carries a valid login cookie."""
        given = request.cookies.get(COOKIE_NAME)
        return (
            self.is_required
            and given is not None
            and hmac.compare_digest(given.encode(), self.cookie_value().encode())
        )

    def is_authenticated(self, request: web.Request) -> bool:
        """Whether the request may read: no token configured, or bearer, or cookie."""
        return not self.is_required or self.has_bearer(request) or self.has_cookie(request)


def set_login_cookie(response: web.StreamResponse, auth: AdminAuth, request: web.Request) -> None:
    """Log the browser in: an HttpOnly, SameSite=Strict session cookie for the whole listener."""
    response.set_cookie(
        COOKIE_NAME,
        auth.cookie_value(),
        path="/",
        httponly=True,
        samesite="Strict",
        secure=request_origin(request).startswith("https:"),
    )


def clear_login_cookie(response: web.StreamResponse) -> None:
    """Log the browser out."""
    response.del_cookie(COOKIE_NAME, path="/")


def _first(value: str | None) -> str | None:
    first = (value or "").split(",")[0].strip()
    return first or None


def request_origin(request: web.Request) -> str:
    """The scheme://host[:port] the client addressed, as a browser's Origin would show it.

    Behind a TLS-terminating proxy, X-Forwarded-Proto / X-Forwarded-Host say what the
    browser used. Believing them is safe here: a cross-site page cannot add these
    headers to its request without a CORS preflight, which this listener never grants.
    """
    scheme = _first(request.headers.get("X-Forwarded-Proto")) or request.scheme
    host = _first(request.headers.get("X-Forwarded-Host")) or request.host
    return f"{scheme}://{host}".lower()


def is_same_origin(request: web.Request) -> bool:
    """True without an Origin header, or when it is the scheme://host[:port] addressed."""
    origin = request.headers.get("Origin")
    return origin is None or origin.rstrip("/").lower() == request_origin(request)


def _is_open(path: str) -> bool:
    return path in OPEN_PATHS or path.startswith(OPEN_PREFIXES)


def check_request(auth: AdminAuth, request: web.Request) -> None:
    """Raise Unauthorized / Forbidden unless the request may go on (see the module docstring)."""
    path = request.path
    if _is_open(path):
        return
    if path.startswith(PROXY_PREFIX) and "x-api-key" in request.headers:
        # It acts only with the caller's own Pulse key; see docs/api.md, who may use it.
        return
    if path.startswith(PROXY_PREFIX) and auth.is_required:
        # 401 whatever the method: the caller lacks a key, not a cross-site header.
        raise Unauthorized("a request to the Pulse pass-through needs its x-api-key header")
    if request.method not in SAFE_METHODS:
        if not is_same_origin(request):
            raise Forbidden("cross-origin request refused (Origin is not this listener)")
        has_header = request.headers.get(CSRF_HEADER) == "1"
        is_login = path == LOGIN_PATH
        if not (is_login or has_header or auth.has_bearer(request)):
            raise Forbidden(
                f"a {request.method} needs the admin token (Authorization: Bearer) "
                f"or the header {CSRF_HEADER}: 1"
            )
    if path == LOGIN_PATH or auth.is_authenticated(request):
        return
    if request.method in SAFE_METHODS and not path.startswith(("/api/", PROXY_PREFIX)):
        raise web.HTTPSeeOther(LOGIN_PATH)
    raise Unauthorized("the admin token is required (Authorization: Bearer <token>)")


def auth_middleware(auth: AdminAuth) -> Middleware:
    """The aiohttp middleware applying `check_request` before every handler."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        check_request(auth, request)
        return await handler(request)

    return middleware
