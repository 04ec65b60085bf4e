"""The README's Control API examples, run as written (curl, bash) against a real relay."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

from tests.helpers import StartRelay

README = Path(__file__).resolve().parent.parent / "README.md"
README_ADMIN = "ADMIN=http://127.0.0.1:8788"
# Each request's outcome on a line of its own; a stream is cut off after a moment.
CURL_REPORTING_STATUS = (
    "curl() { command curl --max-time 2 -o /dev/null"
    " -w '%{http_code} %{method} %{url_effective}\\n' \"$@\"; }"
)


def control_api_blocks() -> str:
    """The shell blocks of the README's "Control API" section, in order."""
    text = README.read_text(encoding="utf-8")
    section = text.split("### Control API", 1)[1].split("\n### ", 1)[0]
    blocks = re.findall(r"```sh\n(.*?)```", section, re.DOTALL)
    assert len(blocks) == 2, "the Control API section no longer has its two sh blocks"
    assert README_ADMIN in blocks[0]
    return "\n".join(blocks)


async def test_the_control_api_examples_work_as_written_without_a_token(
    start_relay: StartRelay, tmp_path: Path
) -> None:
    relay = await start_relay(sinks=[{"type": "file", "name": "app", "directory": "out"}])
    script = control_api_blocks().replace(README_ADMIN, f"ADMIN={relay.admin_url}")
    process = await asyncio.create_subprocess_exec(
        "bash",
        "-c",
        CURL_REPORTING_STATUS + "\n" + script,
        cwd=tmp_path,  # no admin-token file here: the relay has no token
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    outcomes = [line.split(" ", 2) for line in out.decode().splitlines()]
    assert outcomes, err.decode()
    by_request = {
        (method, url.removeprefix(relay.admin_url)): int(code) for code, method, url in outcomes
    }
    # No request of the block is refused for want of the token or the header.
    assert not [o for o in outcomes if o[0] in ("401", "403")], outcomes
    assert by_request[("POST", "/api/watches")] == 201
    assert by_request[("DELETE", "/api/watches/job_123")] == 204
    assert by_request[("POST", "/api/replay")] == 202
    assert by_request[("POST", "/api/send-test")] == 202
    assert by_request[("GET", "/api/stats")] == 200
