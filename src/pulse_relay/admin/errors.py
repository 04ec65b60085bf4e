"""The admin listener's error answers: the ServiceError family and the JSON body they become.

A leaf module: the service functions, the authentication checks and the pass-through
raise or answer these, and the API's error middleware (api.py) turns a ServiceError
into its answer, so none of them need each other to speak of an error.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web


def json_error(http_status: int, error: str, detail: Any) -> web.Response:
    """The body of every error answer: {"error": ..., "detail": ...}."""
    return web.json_response({"error": error, "detail": detail}, status=http_status)


class ServiceError(Exception):
    """A request that cannot be answered as asked; `detail` says why, for the caller."""

    http_status = 500
    error = "internal"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail
        # Headers the answer carries besides its JSON body.
        self.headers: dict[str, str] = {}


class BadRequest(ServiceError):
    """A parameter or body field is invalid; the detail starts with its name."""

    http_status = 400
    error = "bad_request"

    def __init__(self, param: str, problem: str) -> None:
        super().__init__(f"{param}: {problem}")
        self.param = param


class Unauthorized(ServiceError):
    """The admin token is missing or wrong."""

    http_status = 401
    error = "unauthorized"


class Forbidden(ServiceError):
    """A state-changing request without the token or the CSRF header, or from another origin."""

    http_status = 403
    error = "forbidden"


class ForbiddenHost(ServiceError):
    """A Host name the admin listener does not answer to (DNS rebinding)."""

    http_status = 403
    error = "forbidden_host"


class TooManyRequests(ServiceError):
    """Too many failed logins from one address: try again after `retry_after_seconds`."""

    http_status = 429
    error = "too_many_requests"

    def __init__(self, detail: str, *, retry_after_seconds: int) -> None:
        super().__init__(detail)
        self.headers["Retry-After"] = str(retry_after_seconds)


class NotFound(ServiceError):
    """No such event, watch or route."""

    http_status = 404
    error = "not_found"


class Conflict(ServiceError):
    """The request contradicts the current state (e.g. a replay of a pruned event)."""

    http_status = 409
    error = "conflict"


class Unavailable(ServiceError):
    """The store (or the ingress) cannot be used now; retry later."""

    http_status = 503
    error = "unavailable"
