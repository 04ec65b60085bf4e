"""Tests for Standard Webhooks `v1a` (ed25519): `pulse_relay.ingress.signature` and the
keys of `pulse_relay.ingress.ed25519`.

No reference library verifies `v1a` yet, so the vectors are built from the
specification's construction with `cryptography` alone (tests/helpers.py): the
ed25519 signature of `{id}.{timestamp}.{body}`, base64, under keys written as Svix's
server writes them (`whsk_` = base64 of the private then the public half, `whpk_` =
base64 of the public half). The verifier is pure: every test injects its clock.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import time
from collections.abc import Callable

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from hypothesis import given, settings
from hypothesis import strategies as st
from standardwebhooks.webhooks import Webhook

from pulse_relay.ingress.ed25519 import (
    decode_private_key,
    decode_public_key,
    encode_private_key,
    encode_public_key,
)
from pulse_relay.ingress.signature import (
    MAX_V1A_SIGNATURES,
    StandardVerifier,
    VerificationError,
    Verified,
    sign_headers,
    sign_v1a,
)
from tests.helpers import OTHER_KEYS, SENDER_KEYS, Ed25519Pair, ed25519_pair

# A known answer in Svix's server format. The key pair is RFC 8032's first ed25519 test
# vector (secret 9d61b1…7f60, public d75a98…511a); the signed content is the published
# Standard Webhooks vector's; the signature was made once with `cryptography` and is kept
# here as text, so a change in how the relay reads keys or builds the content shows.
VECTOR_WHSK = (
    "whsk_nWGxne/9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2DXWpgBgrEKt9VL/tPJZAc6DuFy89qmIyWvAhpo9wdRGg=="
)
VECTOR_WHPK = "whpk_11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo="
VECTOR_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
VECTOR_TIMESTAMP = 1614265330
VECTOR_BODY = b'{"test": 2432232314}'
VECTOR_V1A = (
    "v1a,fldxM4gAKugP6nnt1hdz3sgGfZ6d99nzrMFnZOELIxbzEHoVmAb2ADpkJK7zgPePmPsle0zV9jSeGlHFG2NVAw=="
)
RFC8032_PUBLIC_KEY = bytes.fromhex(
    "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"
)

SECRET = "whsec_" + base64.b64encode(b"a-shared-secret-of-32-bytes-long").decode()
NOW = 1_700_000_000
WEBHOOK_ID = "msg_v1a"
BODY = b'{"type": "job.completed", "data": {"job_id": "job-1"}}'


def fixed_clock(now: float) -> Callable[[], float]:
    return lambda: now


def verifier(
    *public_keys: str, secrets: tuple[str, ...] = (), now: float = NOW
) -> StandardVerifier:
    return StandardVerifier(
        secrets,
        public_keys=public_keys or (SENDER_KEYS.whpk,),
        tolerance_seconds=300,
        clock=fixed_clock(now),
    )


def headers_with(signature: str, *, webhook_id: str = WEBHOOK_ID) -> dict[str, str]:
    return {
        "webhook-id": webhook_id,
        "webhook-timestamp": str(NOW),
        "webhook-signature": signature,
    }


def v1a(keys: Ed25519Pair = SENDER_KEYS, body: bytes = BODY) -> str:
    return keys.v1a(WEBHOOK_ID, NOW, body)


def v1(secret: str = SECRET, body: bytes = BODY) -> str:
    """A `v1` entry made straight from the definition with `hmac`."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    digest = hmac.digest(key, f"{WEBHOOK_ID}.{NOW}.".encode() + body, hashlib.sha256)
    return "v1," + base64.b64encode(digest).decode()


def entry_of(raw: bytes) -> str:
    return "v1a," + base64.b64encode(raw).decode()


def rejection(check: StandardVerifier, headers: dict[str, str], body: bytes = BODY) -> str:
    with pytest.raises(VerificationError) as caught:
        check.verify(headers, body)
    return caught.value.reason


# -- the known answer ------------------------------------------------------------------------


def test_the_vector_key_is_rfc8032s_pair_in_svix_format() -> None:
    raw = base64.b64decode(VECTOR_WHSK.removeprefix("whsk_"))
    assert raw[32:] == RFC8032_PUBLIC_KEY
    assert base64.b64decode(VECTOR_WHPK.removeprefix("whpk_")) == RFC8032_PUBLIC_KEY
    # cryptography alone (no relay code) checks the kept signature.
    signature = base64.b64decode(VECTOR_V1A.removeprefix("v1a,"))
    Ed25519PublicKey.from_public_bytes(RFC8032_PUBLIC_KEY).verify(
        signature, f"{VECTOR_ID}.{VECTOR_TIMESTAMP}.".encode() + VECTOR_BODY
    )


def test_the_relay_reads_the_vector_keys() -> None:
    private_key = decode_private_key(VECTOR_WHSK)
    assert encode_public_key(private_key.public_key()) == VECTOR_WHPK
    assert encode_public_key(decode_public_key(VECTOR_WHPK)) == VECTOR_WHPK
    assert encode_private_key(private_key) == VECTOR_WHSK


def test_sign_v1a_reproduces_the_vector() -> None:
    # ed25519 is deterministic: the same key and content give the same signature.
    key = decode_private_key(VECTOR_WHSK)
    assert sign_v1a(key, VECTOR_ID, VECTOR_TIMESTAMP, VECTOR_BODY) == VECTOR_V1A


def test_the_vector_is_accepted_with_the_clock_injected() -> None:
    check = StandardVerifier([], public_keys=[VECTOR_WHPK], clock=fixed_clock(VECTOR_TIMESTAMP))
    headers = {
        "svix-id": VECTOR_ID,
        "svix-timestamp": str(VECTOR_TIMESTAMP),
        "svix-signature": VECTOR_V1A,
    }
    assert check.verify(headers, VECTOR_BODY) == Verified(VECTOR_ID, VECTOR_TIMESTAMP)


def test_the_vector_is_stale_against_the_real_clock() -> None:
    check = StandardVerifier([], public_keys=[VECTOR_WHPK])
    headers = {
        "webhook-id": VECTOR_ID,
        "webhook-timestamp": str(VECTOR_TIMESTAMP),
        "webhook-signature": VECTOR_V1A,
    }
    assert rejection(check, headers, VECTOR_BODY) == "timestamp outside tolerance"


def test_helper_keys_match_the_relays_encoding() -> None:
    # The helpers encode with cryptography alone; the relay must read them as written.
    assert encode_private_key(decode_private_key(SENDER_KEYS.whsk)) == SENDER_KEYS.whsk
    assert encode_public_key(SENDER_KEYS.private_key.public_key()) == SENDER_KEYS.whpk


# -- what is accepted --------------------------------------------------------------------------


def test_v1a_alone_is_accepted_with_public_keys_only() -> None:
    assert verifier().verify(headers_with(v1a()), BODY) == Verified(WEBHOOK_ID, NOW)


def test_any_configured_public_key_will_do() -> None:
    check = verifier(OTHER_KEYS.whpk, SENDER_KEYS.whpk)
    assert check.verify(headers_with(v1a()), BODY).webhook_id == WEBHOOK_ID
    assert check.verify(headers_with(v1a(OTHER_KEYS)), BODY).webhook_id == WEBHOOK_ID


@pytest.mark.parametrize(
    "entries",
    [
        pytest.param(lambda: [v1(), v1a()], id="both-good-v1-first"),
        pytest.param(lambda: [v1a(), v1()], id="both-good-v1a-first"),
        pytest.param(lambda: [v1("whsec_" + "B" * 44), v1a()], id="v1-wrong-v1a-good"),
        pytest.param(lambda: [v1a(OTHER_KEYS), v1()], id="v1a-wrong-v1-good"),
        pytest.param(lambda: ["v2,whatever", v1a(OTHER_KEYS), v1a()], id="unknown-and-wrong"),
    ],
)
def test_mixed_v1_and_v1a_lists_are_accepted_when_one_entry_matches(
    entries: Callable[[], list[str]],
) -> None:
    check = verifier(secrets=(SECRET,))
    header = " ".join(entries())
    assert check.verify(headers_with(header), BODY) == Verified(WEBHOOK_ID, NOW)


def test_a_mixed_list_with_no_matching_entry_is_rejected() -> None:
    check = verifier(secrets=(SECRET,))
    header = f"{v1('whsec_' + 'B' * 44)} {v1a(OTHER_KEYS)}"
    assert rejection(check, headers_with(header)) == "no matching signature"


def test_v1a_with_secrets_only_is_skipped_as_an_unknown_version() -> None:
    check = StandardVerifier([SECRET], clock=fixed_clock(NOW))
    # Refused on the headers alone: no entry this relay can check.
    with pytest.raises(VerificationError, match="no matching signature"):
        check.check_headers(headers_with(v1a()))
    assert check.verify(headers_with(f"{v1a()} {v1()}"), BODY).webhook_id == WEBHOOK_ID


def test_v1_with_public_keys_only_is_skipped() -> None:
    with pytest.raises(VerificationError, match="no matching signature"):
        verifier().check_headers(headers_with(v1()))


# -- what is refused ---------------------------------------------------------------------------


def test_a_signature_by_another_key_is_rejected() -> None:
    assert rejection(verifier(), headers_with(v1a(OTHER_KEYS))) == "no matching signature"


@pytest.mark.parametrize("index", [0, 10, len(BODY) - 1])
def test_a_tampered_body_is_rejected(index: int) -> None:
    tampered = bytearray(BODY)
    tampered[index] ^= 0x01
    assert rejection(verifier(), headers_with(v1a()), bytes(tampered)) == "no matching signature"


def test_the_id_and_timestamp_are_signed_too() -> None:
    signature = v1a()
    assert rejection(verifier(), headers_with(signature, webhook_id="msg_other")) == (
        "no matching signature"
    )
    moved = {**headers_with(signature), "webhook-timestamp": str(NOW + 1)}
    assert rejection(verifier(), moved) == "no matching signature"


def test_a_signature_made_over_the_body_alone_is_rejected() -> None:
    signature = entry_of(SENDER_KEYS.private_key.sign(BODY))
    assert rejection(verifier(), headers_with(signature)) == "no matching signature"


def _good_raw() -> bytes:
    return base64.b64decode(v1a().removeprefix("v1a,"))


MALFORMED_V1A = {
    "not-base64": "v1a,not*base64!",
    "bad-padding": "v1a," + base64.b64encode(_good_raw()).decode().rstrip("="),
    "63-bytes": entry_of(_good_raw()[:63]),
    "65-bytes": entry_of(_good_raw() + b"\0"),
    "32-bytes": entry_of(_good_raw()[:32]),
    "urlsafe-alphabet": "v1a," + base64.urlsafe_b64encode(b"\xfb" * 64).decode(),
}


@pytest.mark.parametrize("entry", MALFORMED_V1A.values(), ids=MALFORMED_V1A.keys())
def test_a_malformed_v1a_entry_alone_is_refused_before_the_body(entry: str) -> None:
    with pytest.raises(VerificationError, match="malformed webhook-signature entry"):
        verifier().check_headers(headers_with(entry))
    assert rejection(verifier(), headers_with(entry)) == "malformed webhook-signature entry"


@pytest.mark.parametrize("entry", MALFORMED_V1A.values(), ids=MALFORMED_V1A.keys())
def test_a_malformed_v1a_entry_beside_a_matching_v1_is_accepted(entry: str) -> None:
    check = verifier(secrets=(SECRET,))
    assert check.verify(headers_with(f"{entry} {v1()}"), BODY).webhook_id == WEBHOOK_ID


@pytest.mark.parametrize("entry", MALFORMED_V1A.values(), ids=MALFORMED_V1A.keys())
def test_a_malformed_v1a_entry_beside_a_matching_v1a_is_accepted(entry: str) -> None:
    assert verifier().verify(headers_with(f"{entry} {v1a()}"), BODY).webhook_id == WEBHOOK_ID


def test_up_to_the_limit_of_v1a_entries_are_checked() -> None:
    wrong = [v1a(ed25519_pair(bytes([seed]) * 32)) for seed in range(MAX_V1A_SIGNATURES - 1)]
    header = " ".join([*wrong, v1a()])
    assert verifier().verify(headers_with(header), BODY).webhook_id == WEBHOOK_ID


def test_more_v1a_entries_than_the_limit_are_refused_before_the_body() -> None:
    wrong = [v1a(ed25519_pair(bytes([seed]) * 32)) for seed in range(MAX_V1A_SIGNATURES)]
    header = " ".join([*wrong, v1a()])
    with pytest.raises(VerificationError, match=f"more than {MAX_V1A_SIGNATURES} v1a"):
        verifier().check_headers(headers_with(header))


def test_checked_headers_carry_the_decoded_v1a_signatures() -> None:
    check = verifier()
    checked = check.check_headers(headers_with(v1a()))
    assert checked.v1a_signatures == (_good_raw(),)
    assert checked.signatures == ()
    assert check.verify(headers_with(v1a()), BODY, checked).webhook_id == WEBHOOK_ID
    with pytest.raises(VerificationError, match="no matching signature"):
        check.verify(headers_with(v1a()), BODY + b" ", checked)


@settings(max_examples=200, deadline=None)
@given(signature_header=st.text(max_size=400))
def test_arbitrary_signature_headers_only_ever_raise_verification_error(
    signature_header: str,
) -> None:
    check = verifier(secrets=(SECRET,))
    with contextlib.suppress(VerificationError):
        check.verify(headers_with(signature_header), BODY)
    # Whatever garbage comes first, a good entry after it still counts.
    genuine = headers_with(f"{signature_header} {v1a()}")
    assert check.verify(genuine, BODY).webhook_id == WEBHOOK_ID


@settings(max_examples=200, deadline=None)
@given(raw=st.binary(min_size=0, max_size=100))
def test_arbitrary_v1a_bytes_never_verify_and_never_crash(raw: bytes) -> None:
    assert raw != _good_raw()
    with pytest.raises(VerificationError):
        verifier().verify(headers_with(entry_of(raw)), BODY)


# -- signing -----------------------------------------------------------------------------------


def test_sign_headers_with_a_private_key_only_verifies_with_cryptography() -> None:
    headers = sign_headers(
        None, WEBHOOK_ID, BODY, timestamp=NOW, private_key=SENDER_KEYS.private_key
    )
    version, _, value = headers["webhook-signature"].partition(",")
    assert version == "v1a"
    SENDER_KEYS.private_key.public_key().verify(
        base64.b64decode(value, validate=True), f"{WEBHOOK_ID}.{NOW}.".encode() + BODY
    )


def test_sign_headers_with_both_gives_v1_then_v1a() -> None:
    headers = sign_headers(
        SECRET, WEBHOOK_ID, BODY, timestamp=NOW, private_key=SENDER_KEYS.private_key
    )
    assert headers["webhook-signature"] == f"{v1()} {v1a()}"


def test_a_library_that_knows_only_v1_skips_the_v1a_entry() -> None:
    now = int(time.time())
    headers = sign_headers(
        SECRET, WEBHOOK_ID, BODY, timestamp=now, private_key=SENDER_KEYS.private_key
    )
    assert " v1a," in headers["webhook-signature"]
    assert Webhook(SECRET).verify(BODY, headers) == {
        "type": "job.completed",
        "data": {"job_id": "job-1"},
    }


def test_sign_headers_needs_something_to_sign_with() -> None:
    with pytest.raises(ValueError, match="a secret or a private key is required"):
        sign_headers(None, WEBHOOK_ID, BODY)


# -- keys --------------------------------------------------------------------------------------

_PUBLIC_RAW = base64.b64decode(SENDER_KEYS.whpk.removeprefix("whpk_"))
_PRIVATE_RAW = base64.b64decode(SENDER_KEYS.whsk.removeprefix("whsk_"))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "must start with whpk_"),
        (SENDER_KEYS.whpk.removeprefix("whpk_"), "must start with whpk_"),
        ("whsec_" + SENDER_KEYS.whpk.removeprefix("whpk_"), "must start with whpk_"),
        (SENDER_KEYS.whsk, "must start with whpk_"),
        ("whpk_not*base64", "not valid base64"),
        ("whpk_" + base64.b64encode(_PUBLIC_RAW[:31]).decode(), "decodes to 31 bytes; 32"),
        ("whpk_" + base64.b64encode(_PUBLIC_RAW + b"\0").decode(), "decodes to 33 bytes; 32"),
        ("whpk_" + base64.b64encode(_PRIVATE_RAW).decode(), "decodes to 64 bytes; 32"),
    ],
)
def test_malformed_public_keys_are_refused(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        decode_public_key(text)
    with pytest.raises(ValueError, match=message):
        StandardVerifier([], public_keys=[text])


def _whsk(raw: bytes) -> str:
    return "whsk_" + base64.b64encode(raw).decode()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (SENDER_KEYS.whpk, "must start with whsk_"),
        (SENDER_KEYS.whsk.removeprefix("whsk_"), "must start with whsk_"),
        ("whsk_not*base64", "not valid base64"),
        (_whsk(_PRIVATE_RAW[:32]), "decodes to 32 bytes; 64"),
        (_whsk(_PRIVATE_RAW[:63]), "decodes to 63 bytes; 64"),
        (_whsk(_PRIVATE_RAW[:32] + _PUBLIC_RAW[:31] + b"\0"), "public half does not match"),
        (_whsk(_PRIVATE_RAW[:32] + base64.b64decode(OTHER_KEYS.whpk[5:])), "does not match"),
    ],
)
def test_malformed_private_keys_are_refused_without_quoting_them(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as caught:
        decode_private_key(text)
    assert text.removeprefix("whsk_")[:12] not in str(caught.value)


def test_keys_are_read_with_surrounding_whitespace() -> None:
    # As read from a file or an environment variable.
    assert encode_public_key(decode_public_key(f" {SENDER_KEYS.whpk}\n")) == SENDER_KEYS.whpk
    assert encode_private_key(decode_private_key(f"{SENDER_KEYS.whsk}\n")) == SENDER_KEYS.whsk


def test_a_verifier_needs_a_secret_or_a_public_key() -> None:
    with pytest.raises(ValueError, match="at least one secret or public key"):
        StandardVerifier([], public_keys=[])
