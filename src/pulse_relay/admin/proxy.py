"""The Pulse API pass-through under /pulse/ (not served yet)."""

from __future__ import annotations

from aiohttp import web

from pulse_relay.admin.context import AdminContext


def setup_proxy(app: web.Application, ctx: AdminContext) -> None:
    """Register "/pulse/{tail:.*}" (nothing yet)."""
