"""The admin listener: health, readiness, metrics, the control API, the UI, the pass-through."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from pulse_relay.admin.api import error_middleware, setup_api
from pulse_relay.admin.auth import auth_middleware
from pulse_relay.admin.context import CONTEXT_KEY, AdminContext
from pulse_relay.admin.service import MAX_EDITED_ENVELOPE_BYTES
from pulse_relay.admin.ui import setup_ui
from pulse_relay.ingress.protocol import MalformedHook
from pulse_relay.logs import SampledLog, get_logger
from pulse_relay.metrics import CONTENT_TYPE_LATEST
from pulse_relay.proxy.forward import setup_proxy

log = get_logger("pulse_relay.admin")

# A request body the API reads whole: room for an edited replay's envelope of 1 MiB
# even when its JSON escapes every non-ASCII character (`\uXXXX`, up to 3 times longer).
MAX_API_BODY_BYTES = 4 * MAX_EDITED_ENVELOPE_BYTES


async def _healthz(_: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def _readyz(request: web.Request) -> web.Response:
    problems = await request.app[CONTEXT_KEY].readiness.problems()
    if problems:
        return web.json_response({"status": "unavailable", "reasons": problems}, status=503)
    return web.json_response({"status": "ready"})


async def _metrics(request: web.Request) -> web.Response:
    ctx = request.app[CONTEXT_KEY]
    await ctx.refresh_metrics()
    response = web.Response(body=ctx.metrics.render())
    response.headers["Content-Type"] = CONTENT_TYPE_LATEST
    return response


def build_admin_app(ctx: AdminContext) -> web.Application:
    """The aiohttp application of the admin listener."""
    # Error mapping outermost, so the auth layer's refusals are answered like any error.
    app = web.Application(
        middlewares=[error_middleware, auth_middleware(ctx.auth)],
        client_max_size=MAX_API_BODY_BYTES,
    )
    app[CONTEXT_KEY] = ctx
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    app.router.add_get("/metrics", _metrics)
    setup_api(app)
    setup_ui(app, ctx)
    setup_proxy(app, ctx)
    return app


def malformed_request_hook() -> MalformedHook:
    """What the admin listener does with a request that is not valid HTTP (an over-long
    header, say): a sampled log line, and the API's error document naming the problem."""
    refusals = SampledLog(log)

    def malformed(peer: str | None, reason: str) -> dict[str, Any]:
        refusals.emit(
            f"400:{reason}", "warning", "malformed admin request", reason=reason, peer=peer
        )
        return {"error": "bad_request", "detail": reason}

    return malformed
