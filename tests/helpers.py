"""Real peers for end-to-end tests: a receiving HTTP server and a recording command."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web


@dataclass
class Received:
    """One request the receiver got."""

    headers: dict[str, str]
    body: bytes

    @property
    def envelope(self) -> dict[str, Any]:
        document: dict[str, Any] = json.loads(self.body)
        return document


@dataclass
class Receiver:
    """An aiohttp server standing in for the operator's app: records and answers as told."""

    answers: list[int] = field(default_factory=list)
    received: list[Received] = field(default_factory=list)
    attempts: int = 0
    _runner: web.AppRunner | None = None
    url: str = ""

    async def start(self, port: int = 0) -> str:
        app = web.Application()
        app.router.add_post("/hook", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port)
        await site.start()
        bound = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{bound}/hook"
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _handle(self, request: web.Request) -> web.Response:
        self.attempts += 1
        body = await request.read()
        status = self.answers.pop(0) if self.answers else 200
        if 200 <= status < 300:
            self.received.append(Received(dict(request.headers), body))
        return web.json_response({"ok": 200 <= status < 300}, status=status)


RECORDER = """\
import json, os, pathlib, sys
out = pathlib.Path(sys.argv[1])
fail_marker = out / "fail-next"
data = sys.stdin.buffer.read()
envelope = json.loads(data)
if fail_marker.exists():
    fail_marker.unlink()
    print("failing on purpose", file=sys.stderr)
    sys.exit(1)
env = {k: v for k, v in os.environ.items() if k.startswith("PULSE_")}
name = envelope["id"].replace(":", "_")
(out / (name + ".json")).write_bytes(data)
(out / (name + ".env")).write_text(json.dumps(env))
print("recorded", envelope["id"])
"""


def recorder_argv(tmp_path: Path) -> tuple[list[str], Path]:
    """argv for a command sink that records each envelope and its PULSE_* env in a folder."""
    script = tmp_path / "recorder.py"
    script.write_text(RECORDER)
    out = tmp_path / "command-out"
    out.mkdir(exist_ok=True)
    return [sys.executable, str(script), str(out)], out
