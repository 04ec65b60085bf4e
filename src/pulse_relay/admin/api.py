"""`/api/…`: thin handlers (parse → service → JSON) and the one place errors become answers."""

from __future__ import annotations

import sqlite3
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from pulse_relay.admin import service
from pulse_relay.admin.context import CONTEXT_KEY
from pulse_relay.admin.errors import BadRequest, ServiceError, json_error
from pulse_relay.admin.openapi import openapi_document
from pulse_relay.admin.stream import stream_handler
from pulse_relay.logs import get_logger
from pulse_relay.store import StoreUnavailableError
from pulse_relay.store.filters import FilterError
from pulse_relay.transfer import export_documents, export_line, parse_export_filters

log = get_logger("pulse_relay.admin")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# Paths whose every answer, errors included, is JSON.
JSON_PREFIXES = ("/api/", "/pulse/")


def _http_error(error: web.HTTPException) -> web.Response:
    detail = error.text if error.text and not error.text.startswith(f"{error.status}:") else None
    code = error.reason.lower().replace(" ", "_")
    return json_error(error.status, code, detail or error.reason)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Map every failure to an answer: ServiceError to its status, the store's to 503.

    Anything else on a JSON path is a bug: it is logged and answered 500 as a last resort.
    """
    try:
        return await handler(request)
    except ServiceError as error:
        response = json_error(error.http_status, error.error, error.detail)
        response.headers.update(error.headers)
        return response
    except (StoreUnavailableError, sqlite3.Error) as error:
        log.error("store unavailable", path=request.path, reason=str(error))
        return json_error(503, "unavailable", "the store is unavailable; retry later")
    except web.HTTPException as error:
        if error.status < 400 or not request.path.startswith(JSON_PREFIXES):
            raise
        return _http_error(error)
    except Exception:
        if not request.path.startswith(JSON_PREFIXES):
            raise
        log.exception("admin request failed", path=request.path, method=request.method)
        return json_error(500, "internal", "unexpected error; see the relay's log")


async def read_json_object(request: web.Request) -> dict[str, Any]:
    """The request's JSON object body ({} when there is none); BadRequest("body") otherwise."""
    raw = await request.read()
    if not raw.strip():
        return {}
    try:
        body = service.parse_json(raw)
    except ValueError:
        raise BadRequest("body", "not valid JSON") from None
    if not isinstance(body, dict):
        raise BadRequest("body", "a JSON object")
    return body


async def _events(request: web.Request) -> web.Response:
    ctx = request.app[CONTEXT_KEY]
    filters = service.parse_event_filters(request.query)
    return web.json_response(await service.list_events(ctx, filters))


async def _event(request: web.Request) -> web.Response:
    ctx = request.app[CONTEXT_KEY]
    return web.json_response(await service.get_event(ctx, request.match_info["event_id"]))


async def _export(request: web.Request) -> web.StreamResponse:
    """NDJSON of every event the filters let through (docs/api.md), streamed page by page."""
    try:
        filters = parse_export_filters(request.query)
    except FilterError as error:
        raise BadRequest(error.name, error.problem) from None
    documents = export_documents(request.app[CONTEXT_KEY].store, filters)
    # The first page is read before answering: a store that is down is still a 503.
    first = await anext(documents, None)
    response = web.StreamResponse()
    response.content_type = "application/x-ndjson"
    await response.prepare(request)
    try:
        if first is not None:
            await response.write(export_line(first).encode())
        async for document in documents:
            await response.write(export_line(document).encode())
    except (StoreUnavailableError, sqlite3.Error) as error:
        # The status is sent: the connection is cut before the body's last chunk, so the
        # client sees a truncated copy as truncated, never as a complete one.
        log.error("export cut short", reason=str(error))
        if request.transport is not None:
            request.transport.close()
        return response
    await response.write_eof()
    return response


async def _replay_one(request: web.Request) -> web.Response:
    ctx = request.app[CONTEXT_KEY]
    body = await read_json_object(request)
    event_id = request.match_info["event_id"]
    answer = await service.replay_one(ctx.store, event_id, body)
    ctx.wake_dispatcher()
    ctx.hub.publish_event(event_id)
    return web.json_response(answer, status=202)


async def _replay_matching(request: web.Request) -> web.Response:
    ctx = request.app[CONTEXT_KEY]
    sink_names = {sink.name for sink in ctx.settings.sinks}
    answer = await service.replay_matching(ctx.store, sink_names, await read_json_object(request))
    ctx.wake_dispatcher()
    return web.json_response(answer, status=202)


async def _watches(request: web.Request) -> web.Response:
    return web.json_response(await service.list_watches(request.app[CONTEXT_KEY].store))


async def _add_watch(request: web.Request) -> web.Response:
    ctx = request.app[CONTEXT_KEY]
    body = await read_json_object(request)
    interval_seconds = ctx.settings.poll.interval_seconds
    answer = await service.add_watch(ctx.store, body, interval_seconds=interval_seconds)
    ctx.wake_poller()
    return web.json_response(answer, status=201)


async def _remove_watch(request: web.Request) -> web.Response:
    await service.remove_watch(request.app[CONTEXT_KEY].store, request.match_info["job_id"])
    return web.Response(status=204)


async def _send_test(request: web.Request) -> web.Response:
    ctx = request.app[CONTEXT_KEY]
    answer = await service.send_test(ctx, await read_json_object(request))
    return web.json_response(answer, status=202)


async def _stats(request: web.Request) -> web.Response:
    return web.json_response(await service.stats(request.app[CONTEXT_KEY]))


async def _openapi(request: web.Request) -> web.Response:
    return web.json_response(openapi_document(request.app[CONTEXT_KEY].version))


def setup_api(app: web.Application) -> None:
    """Register the /api/ routes on the admin application."""
    app.router.add_get("/api/events", _events)
    app.router.add_get("/api/events/{event_id:.+}", _event)
    app.router.add_get("/api/export", _export)
    app.router.add_post("/api/events/{event_id:.+}/replay", _replay_one)
    app.router.add_post("/api/replay", _replay_matching)
    app.router.add_get("/api/watches", _watches)
    app.router.add_post("/api/watches", _add_watch)
    app.router.add_delete("/api/watches/{job_id}", _remove_watch)
    app.router.add_post("/api/send-test", _send_test)
    app.router.add_get("/api/stats", _stats)
    app.router.add_get("/api/stream", stream_handler)
    app.router.add_get("/api/openapi.json", _openapi)
