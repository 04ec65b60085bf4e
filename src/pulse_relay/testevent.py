"""A signed test event: what `send-test` and `POST /api/send-test` send to the real ingress."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING

import aiohttp

from pulse_relay.config import Settings
from pulse_relay.ingress.signature import hex_signature, sign_headers

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

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
    private_key: Ed25519PrivateKey | None = None,
) -> SampleEvent:
    """A `job_id` (default: a new test-… id) event signed as the relay verifies.

    Signed with `secret`, else the first configured secret, and with `private_key` (a `v1a`
    entry, the standard scheme only) when given; ValueError when there is nothing to sign with.
    """
    job = job_id or f"test-{uuid.uuid4().hex[:12]}"
    body = json.dumps(
        {"type": event_type, "data": {"job_id": job, "status": event_type.removeprefix("job.")}}
    ).encode()
    webhook_id = f"msg_test_{uuid.uuid4().hex}"
    secrets = [secret] if secret else [s.get_secret_value() for s in settings.verify.secrets]
    verify = settings.verify
    if private_key is not None and verify.scheme == "hmac-sha256-hex":
        raise ValueError(f"the {verify.scheme} scheme has no v1a signatures (verify.scheme)")
    if not secrets and private_key is None:
        raise ValueError(_nothing_to_sign_with(settings))
    if verify.scheme == "hmac-sha256-hex":
        headers = {
            verify.signature_header: hex_signature(secrets[0], body),
            verify.id_header: webhook_id,
        }
    else:
        headers = sign_headers(
            secrets[0] if secrets else None, webhook_id, body, private_key=private_key
        )
    headers["content-type"] = "application/json"
    for name, value in verify.required_headers.items():
        headers[name] = value.get_secret_value()
    return SampleEvent(webhook_id, body, headers)


def _nothing_to_sign_with(settings: Settings) -> str:
    if settings.verify.public_keys:
        # The relay verifies v1a entries but only their sender holds the private key.
        return (
            "no webhook secret configured (verify.secrets), and the public keys"
            " (verify.public_keys) only verify: a test event needs a key to sign with"
        )
    return "no webhook secret configured (verify.secrets): the relay is in polling-only mode"


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
