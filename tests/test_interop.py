"""Interoperability: the reference libraries sign, pulse-relay verifies.

Two parts:
- the official `svix` package (what signs Pulse's webhooks) and `standardwebhooks`
  sign real requests, sent to a running relay over a socket: every case the
  reference libraries themselves accept must be accepted, and every case they
  refuse must be refused;
- the Standard Webhooks vectors: the known-answer and verification scenarios
  of the reference libraries' own test suites (standard-webhooks
  `libraries/python/tests/test_webhooks.py` and
  `libraries/javascript/src/webhook.test.ts`, svix-webhooks
  `python/tests/test_webhooks.py`), checked against the pure verifier with
  the clock injected at the vector's timestamp.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import aiohttp
import pytest
import standardwebhooks
import svix.webhooks

from pulse_relay.app import Relay
from pulse_relay.ingress.signature import StandardVerifier, VerificationError, sign
from tests.helpers import OTHER_SECRET, SECRET, StartRelay, make_body

# --- the svix package signs, the relay verifies -----------------------------------------------


@dataclass(frozen=True)
class Signed:
    """A request as the svix package signs it."""

    webhook_id: str
    timestamp: int
    body: bytes
    signature: str

    def headers(self, prefix: str) -> dict[str, str]:
        return {
            f"{prefix}id": self.webhook_id,
            f"{prefix}timestamp": str(self.timestamp),
            f"{prefix}signature": self.signature,
            "content-type": "application/json",
        }


def svix_signed(
    body: bytes,
    *,
    secret: str = SECRET,
    age_seconds: int = 0,
    webhook_id: str = "msg_svix",
    at: int | None = None,
) -> Signed:
    timestamp = (int(time.time()) if at is None else at) - age_seconds
    moment = datetime.fromtimestamp(timestamp, tz=UTC)
    signature = svix.webhooks.Webhook(secret).sign(webhook_id, moment, body.decode())
    return Signed(webhook_id, timestamp, body, signature)


def references_accept(request: Signed, headers: dict[str, str], secret: str = SECRET) -> bool:
    """Whether svix (and standardwebhooks, for webhook-* headers) accept the request."""
    try:
        svix.webhooks.Webhook(secret).verify(request.body, headers)
        if "webhook-id" in headers:
            standardwebhooks.Webhook(secret).verify(request.body, headers)
    except (svix.webhooks.WebhookVerificationError, standardwebhooks.WebhookVerificationError):
        return False
    except ValueError:
        # Some malformed entries make the Python libraries raise instead (binascii.Error,
        # or a failed unpacking): not an acceptance either.
        return False
    return True


Case = Callable[[Signed], dict[str, str]]
BODY = make_body("job.completed", job_id="job-interop")
UNKNOWN_SECRET = "whsec_" + base64.b64encode(b"a-secret-the-relay-does-not-know").decode()
UNICODE_BODY = make_body("job.completed", job_id="job-unicode", note="naïve café 日本 ✓")

ACCEPTED: dict[str, tuple[bytes, Case]] = {
    "svix-* headers": (BODY, lambda r: r.headers("svix-")),
    "webhook-* headers": (BODY, lambda r: r.headers("webhook-")),
    "non-ASCII body": (UNICODE_BODY, lambda r: r.headers("svix-")),
    "a malformed v1 entry before the match": (
        BODY,
        lambda r: r.headers("svix-") | {"svix-signature": "v1,AAAA " + r.signature},
    ),
    "a malformed v1 entry after the match": (
        BODY,
        lambda r: r.headers("svix-") | {"svix-signature": r.signature + " v1,not*base64"},
    ),
    "the reference suites' multi-signature header": (
        BODY,
        lambda r: (
            r.headers("webhook-")
            | {
                "webhook-signature": " ".join(
                    [
                        "v1,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc=",
                        "v2,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc=",
                        r.signature,
                        "v1,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc=",
                    ]
                )
            }
        ),
    ),
    "an unknown version beside the match": (
        BODY,
        lambda r: r.headers("svix-") | {"svix-signature": f"v2,{r.signature[3:]} {r.signature}"},
    ),
}

REFUSED: dict[str, tuple[bytes, Case]] = {
    "another secret's signature": (
        BODY,
        lambda r: (
            r.headers("svix-")
            | {"svix-signature": svix_signed(r.body, secret=UNKNOWN_SECRET).signature}
        ),
    ),
    "id changed after signing": (
        BODY,
        lambda r: r.headers("svix-") | {"svix-id": r.webhook_id + "x"},
    ),
    "a malformed entry alone": (BODY, lambda r: r.headers("svix-") | {"svix-signature": "v1,AAAA"}),
    "signature cut short": (
        BODY,
        lambda r: r.headers("svix-") | {"svix-signature": r.signature[:8]},
    ),
    "only an unknown version": (
        BODY,
        lambda r: r.headers("svix-") | {"svix-signature": "v2," + r.signature[3:]},
    ),
}


async def post(relay: Relay, body: bytes, headers: dict[str, str]) -> int:
    async with (
        aiohttp.ClientSession() as session,
        session.post(relay.webhook_url, data=body, headers=headers) as answer,
    ):
        return answer.status


@pytest.fixture
def signed_at() -> int:
    """The moment this test signs at; the relay's clock stands still there.

    The relay's tolerance window then has exact edges however busy the machine is (the
    reference libraries read the real clock: the cases keep 10 s of slack for them).
    """
    return int(time.time())


@pytest.fixture
async def relay(start_relay: StartRelay, signed_at: int) -> Relay:
    # Rotation: svix signs with the second secret, configured without its whsec_ prefix.
    secrets = [OTHER_SECRET, SECRET.removeprefix("whsec_")]
    return await start_relay(verify={"secrets": secrets}, clock=lambda: signed_at)


@pytest.mark.parametrize("case", sorted(ACCEPTED))
async def test_what_the_reference_libraries_accept_the_relay_accepts(
    relay: Relay, case: str
) -> None:
    body, make_headers = ACCEPTED[case]
    request = svix_signed(body, webhook_id=f"msg_case{sorted(ACCEPTED).index(case)}")
    headers = make_headers(request)
    assert references_accept(request, headers), "the case must be one the references accept"

    assert await post(relay, request.body, headers) == 202
    view = await relay.store.get_event(request.webhook_id)
    assert view is not None and view.body == request.body


@pytest.mark.parametrize("case", sorted(REFUSED))
async def test_what_the_reference_libraries_refuse_the_relay_refuses(
    relay: Relay, case: str
) -> None:
    body, make_headers = REFUSED[case]
    request = svix_signed(body)
    headers = make_headers(request)
    assert not references_accept(request, headers)

    assert await post(relay, request.body, headers) == 401


@pytest.mark.parametrize("age_seconds", [-290, 290])
async def test_timestamps_inside_the_tolerance_both_ways(
    relay: Relay, signed_at: int, age_seconds: int
) -> None:
    webhook_id = f"msg_age{age_seconds}"
    request = svix_signed(BODY, age_seconds=age_seconds, webhook_id=webhook_id, at=signed_at)
    headers = request.headers("svix-")
    assert references_accept(request, headers)

    assert await post(relay, request.body, headers) == 202


@pytest.mark.parametrize("age_seconds", [-400, 400])
async def test_timestamps_outside_the_tolerance_both_ways(
    relay: Relay, signed_at: int, age_seconds: int
) -> None:
    request = svix_signed(BODY, age_seconds=age_seconds, at=signed_at)
    headers = request.headers("svix-")
    assert not references_accept(request, headers)

    assert await post(relay, request.body, headers) == 401


def test_standardwebhooks_signs_what_svix_signs() -> None:
    request = svix_signed(BODY)
    moment = datetime.fromtimestamp(request.timestamp, tz=UTC)
    theirs = standardwebhooks.Webhook(SECRET).sign(request.webhook_id, moment, BODY.decode())
    assert theirs == request.signature == sign(SECRET, request.webhook_id, request.timestamp, BODY)


# --- the Standard Webhooks vectors ---------------------------------------------------------------

VECTOR_SECRET = "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
VECTOR_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
VECTOR_TIMESTAMP = 1614265330
VECTOR_BODY = b'{"test": 2432232314}'
VECTOR_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
TOLERANCE_SECONDS = 300


def vector_headers(prefix: str = "webhook-", **changes: str | None) -> dict[str, str]:
    headers: dict[str, str | None] = {
        "id": VECTOR_ID,
        "timestamp": str(VECTOR_TIMESTAMP),
        "signature": VECTOR_SIGNATURE,
    }
    headers.update(changes)
    return {f"{prefix}{name}": value for name, value in headers.items() if value is not None}


# (name, headers, clock offset from the vector's timestamp, secret, accepted)
VECTORS: list[tuple[str, dict[str, str], int, str, bool]] = [
    ("valid signature", vector_headers(), 0, VECTOR_SECRET, True),
    ("valid, unbranded headers", vector_headers(), 0, VECTOR_SECRET, True),
    ("valid, svix-branded headers", vector_headers("svix-"), 0, VECTOR_SECRET, True),
    ("secret with the whsec_ prefix", vector_headers(), 0, "whsec_" + VECTOR_SECRET, True),
    (
        "multi-signature header",
        vector_headers(
            signature=" ".join(
                [
                    "v1,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc=",
                    "v2,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc=",
                    VECTOR_SIGNATURE,
                    "v1,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc=",
                ]
            )
        ),
        0,
        VECTOR_SECRET,
        True,
    ),
    ("missing id", vector_headers(id=None), 0, VECTOR_SECRET, False),
    ("missing timestamp", vector_headers(timestamp=None), 0, VECTOR_SECRET, False),
    ("missing signature", vector_headers(signature=None), 0, VECTOR_SECRET, False),
    ("invalid timestamp", vector_headers(timestamp="hello"), 0, VECTOR_SECRET, False),
    (
        "invalid signature (last byte changed)",
        vector_headers(signature="v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OA="),
        0,
        VECTOR_SECRET,
        False,
    ),
    (
        "invalid signature (not a digest)",
        vector_headers(signature="v1,dawfeoifkpqwoekfpqoekf"),
        0,
        VECTOR_SECRET,
        False,
    ),
    (
        "partial signature",
        vector_headers(signature=VECTOR_SIGNATURE[:8]),
        0,
        VECTOR_SECRET,
        False,
    ),
    ("empty signature value", vector_headers(signature="v1,"), 0, VECTOR_SECRET, False),
    ("old timestamp", vector_headers(), TOLERANCE_SECONDS + 1, VECTOR_SECRET, False),
    ("new timestamp", vector_headers(), -(TOLERANCE_SECONDS + 1), VECTOR_SECRET, False),
]


@pytest.mark.parametrize(
    ("headers", "offset_seconds", "secret", "accepted"),
    [vector[1:] for vector in VECTORS],
    ids=[vector[0] for vector in VECTORS],
)
def test_standard_webhooks_vectors(
    headers: dict[str, str], offset_seconds: int, secret: str, accepted: bool
) -> None:
    verifier = StandardVerifier(
        [secret],
        tolerance_seconds=TOLERANCE_SECONDS,
        clock=lambda: VECTOR_TIMESTAMP + offset_seconds,
    )
    if accepted:
        verified = verifier.verify(headers, VECTOR_BODY)
        assert (verified.webhook_id, verified.timestamp) == (VECTOR_ID, VECTOR_TIMESTAMP)
    else:
        with pytest.raises(VerificationError):
            verifier.verify(headers, VECTOR_BODY)


def test_the_known_answer_vector() -> None:
    assert sign("whsec_" + VECTOR_SECRET, VECTOR_ID, VECTOR_TIMESTAMP, VECTOR_BODY) == (
        VECTOR_SIGNATURE
    )
    key = base64.b64decode(VECTOR_SECRET)
    assert sign(base64.b64encode(key).decode(), VECTOR_ID, VECTOR_TIMESTAMP, VECTOR_BODY) == (
        VECTOR_SIGNATURE
    )
