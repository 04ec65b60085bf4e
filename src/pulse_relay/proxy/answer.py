"""What the pass-through reads from a Pulse answer: the job ids it names, to watch them.

Only a 2xx JSON answer small enough to read whole (`INSPECTED_ANSWER_MAX_BYTES`) is
read; it is decoded here (gzip or deflate included) and searched for the fields
Pulse names its jobs by. Pure but for a warning logged for an unusable job id.
"""

from __future__ import annotations

import json
import zlib
from typing import Any, Final

import aiohttp

from pulse_relay.events import is_valid_job_id
from pulse_relay.logs import get_logger

log = get_logger("pulse_relay.proxy")

# The SDK's async /tables answer names its job `tables_id`: an answer that carries only
# that field is a job to watch too.
JOB_ID_FIELDS: Final = ("job_id", "batch_job_id", "tables_id")
# Answers read whole to look for a job id: Pulse's submission answers are a few hundred bytes.
INSPECTED_ANSWER_MAX_BYTES: Final = 1_048_576
DECODED_ANSWER_MAX_BYTES: Final = 8 * 1_048_576


def decode_json(body: bytes, content_encoding: str | None) -> Any:
    """The JSON document in an answer body (decompressed if need be); None if it is not one."""
    coding = (content_encoding or "identity").strip().lower()
    try:
        if coding in ("gzip", "x-gzip", "deflate"):
            # wbits 47: a gzip or zlib header, detected; raw deflate is tried after.
            inflater = zlib.decompressobj(47)
            try:
                body = inflater.decompress(body, DECODED_ANSWER_MAX_BYTES)
            except zlib.error:
                body = zlib.decompressobj(-15).decompress(body, DECODED_ANSWER_MAX_BYTES)
        elif coding != "identity":
            return None
        return json.loads(body)
    except (zlib.error, ValueError):
        return None


def job_ids_in(document: Any) -> list[str]:
    """The usable `job_id` / `batch_job_id` / `tables_id` values of a JSON answer."""
    if not isinstance(document, dict):
        return []
    found: list[str] = []
    for name in JOB_ID_FIELDS:
        value = document.get(name)
        if value is None:
            continue
        if isinstance(value, str) and is_valid_job_id(value):
            if value not in found:
                found.append(value)
        else:
            log.warning("answer names a job id that cannot be watched", field=name)
    return found


def is_inspectable(upstream: aiohttp.ClientResponse) -> bool:
    """A 2xx JSON answer small enough to read whole."""
    length = upstream.content_length
    media = upstream.content_type.lower()
    return (
        200 <= upstream.status < 300
        and (media == "application/json" or media.endswith("+json"))
        and (length is None or length <= INSPECTED_ANSWER_MAX_BYTES)
    )
