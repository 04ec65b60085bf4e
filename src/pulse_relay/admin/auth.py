"""Who may use the admin listener: host names, the token, the login cookie, cross-site rules.

Without `admin.token`, the listener answers only requests addressed to a loopback name
or to one of `admin.allowed_hosts` (a page on a DNS-rebinding domain reaches 127.0.0.1
under its own name, and the browser takes it for the page's own origin). With a token,
the token is the guard (a rebinding page never has it, and the login cookie belongs to
the loopback name), so any name is answered unless `admin.allowed_hosts` lists some.
With `admin.token` set, `/api/` and the UI need `Authorization: Bearer <token>` or the
login cookie; ten wrong tokens from one address within a minute close the door to it
until the minute is over. Independently of the token, a state-changing request
(anything but GET/HEAD/OPTIONS) needs the token itself or the header `X-Pulse-Relay: 1`
— a cross-site form or `fetch` cannot add that header without a CORS preflight, which
this listener never grants — and an `Origin`, when present, must be the listener's
own. A cookie alone therefore never changes anything.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import re
import secrets
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Collection

from aiohttp import web
from aiohttp.typedefs import Middleware

from pulse_relay.admin.errors import Forbidden, ForbiddenHost, TooManyRequests, Unauthorized
from pulse_relay.config import is_loopback_host
from pulse_relay.logs import get_logger

log = get_logger("pulse_relay.admin")

COOKIE_NAME = "pulse_relay_session"
CSRF_HEADER = "X-Pulse-Relay"
LOGIN_PATH = "/login"
# Probes and scrapers need nothing, whatever the name they use; static files hold no data.
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
OPEN_PREFIXES = ("/static/",)
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
PROXY_PREFIX = "/pulse/"

# Failed logins (form or bearer) one address may make within the window.
MAX_FAILED_LOGINS = 10
FAILED_LOGIN_WINDOW_SECONDS = 60.0
# The throttle forgets the least recently failing addresses beyond this many.
MAX_THROTTLED_ADDRESSES = 10_000

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# ASCII digits only: str.isdigit() also accepts "²".
_PORT = re.compile(r"[0-9]{1,5}")


def _host_name(host: str) -> str | None:
    """The name in a Host header without its port, lower-case; None when it is malformed."""
    host = host.strip().lower()
    if host.startswith("["):
        address, bracket, port = host.partition("]")
        if not bracket or (port and not port.startswith(":")):
            return None
        name, port = address + bracket, port[1:]
    else:
        name, _, port = host.partition(":")
    if not name or (port and _PORT.fullmatch(port) is None):
        return None
    return name


def is_allowed_host(host: str | None, allowed_hosts: Collection[str]) -> bool:
    """Whether a request with this `Host` header is answered: a loopback name (127.x.x.x,
    [::1], localhost) or one of `allowed_hosts` (lower-case), with any port.

    A request without a Host header comes from no browser, hence from no rebinding page."""
    if host is None:
        return True
    name = _host_name(host)
    return name is not None and (is_loopback_host(name) or name in allowed_hosts)


class LoginThrottle:
    """Failed logins per client address: `max_failures` within a window close it until the
    window (which starts at the first failure) is over. In memory, at most `max_addresses`."""

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_failures: int = MAX_FAILED_LOGINS,
        window_seconds: float = FAILED_LOGIN_WINDOW_SECONDS,
        max_addresses: int = MAX_THROTTLED_ADDRESSES,
    ) -> None:
        self._clock = clock
        self._max_failures = max_failures
        self._window_seconds = window_seconds
        self._max_addresses = max_addresses
        # Address → (when its window started, failures in it); least recent failure first.
        self._windows: OrderedDict[str, tuple[float, int]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._windows)

    def _window(self, address: str, now: float) -> tuple[float, int] | None:
        window = self._windows.get(address)
        if window is not None and now - window[0] >= self._window_seconds:
            del self._windows[address]
            return None
        return window

    def retry_after_seconds(self, address: str) -> int | None:
        """Whole seconds until `address` may try again, or None when it may now."""
        now = self._clock()
        window = self._window(address, now)
        if window is None or window[1] < self._max_failures:
            return None
        return max(1, math.ceil(window[0] + self._window_seconds - now))

    def failed(self, address: str) -> int:
        """Count one failed login from `address`; returns its failures in the current window."""
        now = self._clock()
        started, failures = self._window(address, now) or (now, 0)
        self._windows[address] = (started, failures + 1)
        self._windows.move_to_end(address)
        while len(self._windows) > self._max_addresses:
            self._windows.popitem(last=False)
        return failures + 1


class AdminAuth:
    """The admin token, compared in constant time, the login cookie derived from it, the
    host names answered to, and the throttle on failed logins."""

    def __init__(
        self,
        token: str,
        *,
        allowed_hosts: Collection[str] = (),
        cookie_key: bytes | None = None,
        throttle: LoginThrottle | None = None,
    ) -> None:
        self._token = token.encode()
        self._allowed_hosts = frozenset(name.lower() for name in allowed_hosts)
        # Per process: a restart logs every browser out, and the cookie never holds the token.
        self._cookie_key = cookie_key if cookie_key is not None else secrets.token_bytes(32)
        self.throttle = throttle if throttle is not None else LoginThrottle()

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

    def answers_host(self, host: str | None) -> bool:
        """Whether a request with this `Host` header is answered (see the module docstring)."""
        if self.is_required and not self._allowed_hosts:
            return True
        return is_allowed_host(host, self._allowed_hosts)

    def check_throttle(self, request: web.Request) -> None:
        """Raise TooManyRequests while the request's address may not try a token."""
        retry_after_seconds = self.throttle.retry_after_seconds(_client(request))
        if retry_after_seconds is not None:
            raise TooManyRequests(
                f"too many failed logins from this address; retry in {retry_after_seconds} s",
                retry_after_seconds=retry_after_seconds,
            )

    def login_failed(self, request: web.Request, *, via: str) -> None:
        """Count and log a wrong token (never the guess itself)."""
        client = _client(request)
        failures = self.throttle.failed(client)
        log.warning("admin login failed", via=via, client_address=client, failures=failures)


def _client(request: web.Request) -> str:
    # The peer: behind a proxy every client shares its address, and so its throttle.
    return request.remote or "unknown"


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


def _has_own_pulse_key(request: web.Request) -> bool:
    return request.path.startswith(PROXY_PREFIX) and "x-api-key" in request.headers


def _presents_bearer(request: web.Request) -> bool:
    scheme, _, _ = request.headers.get("Authorization", "").partition(" ")
    return scheme.lower() == "bearer"


def guard_logins(auth: AdminAuth, request: web.Request) -> None:
    """Refuse a token from an address that guessed too often (429); count a wrong bearer."""
    if not auth.is_required or _is_open(request.path) or _has_own_pulse_key(request):
        return
    is_login_form = request.path == LOGIN_PATH and request.method == "POST"
    if not (is_login_form or _presents_bearer(request)):
        return
    # Even the right token is refused then: answering it would tell a guess apart.
    auth.check_throttle(request)
    if not is_login_form and not auth.has_bearer(request):
        auth.login_failed(request, via="bearer")


def check_request(auth: AdminAuth, request: web.Request) -> None:
    """Raise Unauthorized / Forbidden unless the request may go on (see the module docstring)."""
    path = request.path
    if _is_open(path):
        return
    if _has_own_pulse_key(request):
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
    """The aiohttp middleware applying the host rule, the login throttle and `check_request`
    before every handler (the pass-through and the event stream included)."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path not in OPEN_PATHS and not auth.answers_host(request.headers.get("Host")):
            # The name is not echoed: it is the caller's own, and may be long.
            raise ForbiddenHost(
                "this listener answers only loopback host names (127.0.0.1, [::1], localhost)"
                " and those in admin.allowed_hosts"
            )
        guard_logins(auth, request)
        check_request(auth, request)
        return await handler(request)

    return middleware
