"""The baseline: a bare aiohttp app that reads the body and answers 200.

Run as `python -m bench.baseline PORT`. It also serves as the HTTP sink's receiver
in the fan-out scenario (any POST path answers 200).
"""

from __future__ import annotations

import sys

from aiohttp import web


async def _handle(request: web.Request) -> web.Response:
    await request.read()
    return web.Response(status=200, text="ok")


def main() -> None:
    port = int(sys.argv[1])
    app = web.Application(client_max_size=1024 * 1024)
    app.router.add_post("/{tail:.*}", _handle)
    app.router.add_get("/healthz", _handle)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


if __name__ == "__main__":
    main()
