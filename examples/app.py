"""A stand-in for the application next to pulse-relay (examples/docker-compose.yml).

With SUBMIT_FILE_URL set, it submits that document to Pulse through the relay's
pass-through (PULSE_BASE_URL) the way the Pulse SDK's
`extract(file_url=..., async_=True)` does, and exits: the relay watches the job
and delivers it. Otherwise it takes each envelope the relay POSTs to
/pulse-events, prints what it got and whether the matching file has arrived in
the shared /results volume, and answers 204. Standard library only.
"""

from __future__ import annotations

import json
import os
import secrets
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

RESULTS = Path("/results")


def submit(file_url: str) -> None:
    """POST {PULSE_BASE_URL}/extract as multipart form fields, like the SDK."""
    url = os.environ["PULSE_BASE_URL"] + "/extract"
    if not url.startswith(("http://", "https://")):
        raise SystemExit(f"PULSE_BASE_URL must be an http(s) URL, not {url!r}")
    boundary = secrets.token_hex(16)
    fields = {"fileUrl": file_url, "async": "true"}
    body = "".join(
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'
        for name, value in fields.items()
    )
    request = urllib.request.Request(  # noqa: S310 (checked above: http or https)
        url,
        data=(body + f"--{boundary}--\r\n").encode(),
        headers={
            "Content-Type": f"multipart/form-data; boundary={boundary}",
            "x-api-key": Path(os.environ["PULSE_API_KEY_FILE"]).read_text().strip(),
            "X-Pulse-Relay-Meta-Source": "compose-example",
        },
    )
    with urllib.request.urlopen(request, timeout=60) as answer:  # noqa: S310
        print(answer.status, answer.read().decode())


class Handler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        if self.path != "/pulse-events":
            self.send_error(404)
            return
        length = int(self.headers.get("content-length", "0"))
        envelope = json.loads(self.rfile.read(length))
        job = envelope.get("job") or {}
        on_disk = (RESULTS / f"{envelope.get('job_id')}.json").exists()
        print(
            f"{envelope['type']} job={envelope.get('job_id')} status={job.get('status')} "
            f"source={envelope['source']} file_in_results={on_disk}"
        )
        self.send_response(204)
        self.end_headers()


if __name__ == "__main__":
    if os.environ.get("SUBMIT_FILE_URL"):
        submit(os.environ["SUBMIT_FILE_URL"])
    else:
        ThreadingHTTPServer(("0.0.0.0", 8000), Handler).serve_forever()  # noqa: S104
