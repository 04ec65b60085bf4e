"""The inspector UI (placeholder page until the inspector lands)."""

from __future__ import annotations

from aiohttp import web

from pulse_relay.admin.context import AdminContext


def setup_ui(app: web.Application, ctx: AdminContext) -> None:
    """Register the UI's routes ("/", "/login", "/events/{id}", "/watches", static files)."""

    async def index(_: web.Request) -> web.Response:
        return web.Response(
            text="<!doctype html><title>pulse-relay</title><p>pulse-relay admin: see /api/</p>",
            content_type="text/html",
        )

    app.router.add_get("/", index)
