"""A signed test event: what `send-test` and `POST /api/send-test` send to the real ingress."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass

import aiohttp

from pulse_relay.config import Settings
from pulse_relay.ingress.signature import hex_signature, sign_headers

TEST_TIMEOUT_SECONDS = 30.0


@dataclass(frozen=True)
class SampleEvent:
    """One test webhook: its id, body and signed headers."""

    webhook_id: str
    body: bytes
    headers: dict[str, str]


def build_test_event(
    settings: Settings,
    *,
    event_type: str = "job.completed",
    job_id: str | None = None,
    secret: str | None = None,
) -> SampleEvent:
    """A `job_id` (default: a new test-… id) event signed as the relay verifies.

    Signed with `secret`, else the first configured secret; ValueError when there is none.
    """
    job = job_id or f"test-{uuid.uuid4().hex[:12]}"
    body = json.dumps(
        {"type": event_type, "data": {"job_id": job, "status": event_type.removeprefix("job.")}}
    ).encode()
    webhook_id = f"msg_test_{uuid.uuid4().hex}"
    secrets = [secret] if secret else [s.get_secret_value() for s in settings.verify.secrets]
    if not secrets:
        raise ValueError("no webhook secret configured (verify.secrets)")
    verify = settings.verify
    if verify.scheme == "hmac-sha256-hex":
        headers = {
            verify.signature_header: hex_signature(secrets[0], body),
            verify.id_header: webhook_id,
        }
    else:
        headers = sign_headers(secrets[0], webhook_id, body)
    headers["content-type"] = "application/json"
    for name, value in verify.required_headers.items():
        headers[name] = value.get_secret_value()
    return SampleEvent(webhook_id, body, headers)


async def post_test_event(
    url: str,
    event: SampleEvent,
    *,
    timeout_seconds: float = TEST_TIMEOUT_SECONDS,
    is_own_listener: bool = False,
) -> tuple[int, str]:
    """POST the event to `url`; (status, answer text). Raises aiohttp/OS errors when unreachable.

    `is_own_listener`: `url` is this relay's ingress reached on this machine, whose
    certificate (with TLS) names the public host, not the loopback address: it is
    not verified.
    """
    timeout = aiohttp.ClientTimeout(total=timeout_seconds)
    async with (
        aiohttp.ClientSession(timeout=timeout) as session,
        session.post(
            url,
            data=event.body,
            headers=event.headers,
            allow_redirects=False,
            ssl=not is_own_listener,
        ) as answer,
    ):
        return answer.status, (await answer.text()).strip()
