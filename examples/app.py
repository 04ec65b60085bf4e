"""A stand-in for the application next to pulse-relay (examples/docker-compose.yml).

It takes each envelope the relay POSTs to /pulse-events, prints what it got and
whether the matching file has arrived in the shared /results volume, and answers
204. Standard library only.
"""

from __future__ import annotations

import json
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

RESULTS = Path("/results")


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
    ThreadingHTTPServer(("0.0.0.0", 8000), Handler).serve_forever()  # noqa: S104
