"""Tests for `pulse_relay.ingress.signature`: Standard Webhooks, the hex HMAC scheme and the
no-op verifier.

The verifier is pure, so every test injects its clock. Expected signatures are
computed here with `hmac` directly and cross-checked against the published
Standard Webhooks vector and the independent `standardwebhooks` package, so the
module is never only checked against itself.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import string
import time
from collections.abc import Callable
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict
from standardwebhooks.webhooks import Webhook

from pulse_relay.ingress.signature import (
    HexHmacVerifier,
    NoneVerifier,
    StandardVerifier,
    VerificationError,
    Verified,
    compute_signature,
    decode_secret,
    hex_signature,
    is_valid_webhook_id,
    sign,
    sign_headers,
)

# The published Standard Webhooks known-answer vector.
VECTOR_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
VECTOR_KEY = base64.b64decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
VECTOR_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
VECTOR_TIMESTAMP = 1614265330
VECTOR_BODY = b'{"test": 2432232314}'
VECTOR_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="

OTHER_KEY = bytes(range(32))
OTHER_SECRET = "whsec_" + base64.b64encode(OTHER_KEY).decode()

TOLERANCE_SECONDS = 300

# Non-ASCII decimal digits, which int() would accept but a plain timestamp must not contain.
ARABIC_INDIC_TIMESTAMP = "".join(chr(0x0660 + int(d)) for d in str(VECTOR_TIMESTAMP))
FULLWIDTH_TIMESTAMP = "".join(chr(0xFF10 + int(d)) for d in str(VECTOR_TIMESTAMP))

# Printable ASCII without space and '.': the characters a webhook-id may contain.
ID_ALPHABET = "".join(c for c in string.printable if c not in string.whitespace and c != ".")


def fixed_clock(now: float) -> Callable[[], float]:
    return lambda: now


def make_verifier(
    *secrets: str | bytes,
    now: float = VECTOR_TIMESTAMP,
    tolerance_seconds: int = TOLERANCE_SECONDS,
) -> StandardVerifier:
    return StandardVerifier(
        secrets or (VECTOR_SECRET,),
        tolerance_seconds=tolerance_seconds,
        clock=fixed_clock(now),
    )


def reference_signature(key: bytes, webhook_id: str, timestamp: int, body: bytes) -> str:
    """`v1,<base64>` computed straight from the Standard Webhooks definition."""
    signed = webhook_id.encode() + b"." + str(timestamp).encode() + b"." + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


def signed_headers(
    *,
    key: bytes = VECTOR_KEY,
    webhook_id: str = VECTOR_ID,
    timestamp: int = VECTOR_TIMESTAMP,
    body: bytes = VECTOR_BODY,
    prefix: str = "webhook-",
) -> dict[str, str]:
    return {
        f"{prefix}id": webhook_id,
        f"{prefix}timestamp": str(timestamp),
        f"{prefix}signature": reference_signature(key, webhook_id, timestamp, body),
    }


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def wrong_signature(seed: int) -> str:
    """A well-formed `v1` entry that matches nothing."""
    return "v1," + b64(hashlib.sha256(b"wrong %d" % seed).digest())


def rejection_reason(verifier: StandardVerifier, headers: dict[str, str], body: bytes) -> str:
    with pytest.raises(VerificationError) as excinfo:
        verifier.verify(headers, body)
    return excinfo.value.reason


# --- Known-answer vector -----------------------------------------------------


def test_reference_signature_reproduces_the_published_vector() -> None:
    assert (
        reference_signature(VECTOR_KEY, VECTOR_ID, VECTOR_TIMESTAMP, VECTOR_BODY)
        == VECTOR_SIGNATURE
    )


def test_compute_signature_reproduces_the_published_vector() -> None:
    assert (
        "v1," + compute_signature(VECTOR_KEY, VECTOR_ID, VECTOR_TIMESTAMP, VECTOR_BODY)
        == VECTOR_SIGNATURE
    )


@pytest.mark.parametrize("secret", [VECTOR_SECRET, VECTOR_SECRET.removeprefix("whsec_")])
def test_sign_reproduces_the_published_vector(secret: str) -> None:
    assert sign(secret, VECTOR_ID, VECTOR_TIMESTAMP, VECTOR_BODY) == VECTOR_SIGNATURE


@pytest.mark.parametrize("secret", [VECTOR_SECRET, VECTOR_SECRET.removeprefix("whsec_")])
def test_published_vector_is_accepted_with_the_clock_injected(secret: str) -> None:
    headers = {
        "webhook-id": VECTOR_ID,
        "webhook-timestamp": str(VECTOR_TIMESTAMP),
        "webhook-signature": VECTOR_SIGNATURE,
    }

    verified = make_verifier(secret).verify(headers, VECTOR_BODY)

    assert verified == Verified(webhook_id=VECTOR_ID, timestamp=VECTOR_TIMESTAMP)


def test_published_vector_is_stale_against_the_real_clock() -> None:
    verifier = StandardVerifier([VECTOR_SECRET])

    assert rejection_reason(verifier, signed_headers(), VECTOR_BODY) == (
        "timestamp outside tolerance"
    )


def test_raw_key_bytes_are_accepted_as_a_secret() -> None:
    verified = make_verifier(VECTOR_KEY).verify(signed_headers(), VECTOR_BODY)

    assert verified == Verified(webhook_id=VECTOR_ID, timestamp=VECTOR_TIMESTAMP)


def test_sign_headers_with_a_given_timestamp() -> None:
    headers = sign_headers(VECTOR_SECRET, VECTOR_ID, VECTOR_BODY, timestamp=VECTOR_TIMESTAMP)

    assert headers == {
        "webhook-id": VECTOR_ID,
        "webhook-timestamp": str(VECTOR_TIMESTAMP),
        "webhook-signature": VECTOR_SIGNATURE,
    }


def test_sign_headers_defaults_to_now() -> None:
    before = int(time.time())
    headers = sign_headers(VECTOR_SECRET, VECTOR_ID, VECTOR_BODY)
    after = int(time.time())

    timestamp = int(headers["webhook-timestamp"])
    assert before <= timestamp <= after
    assert headers["webhook-signature"] == reference_signature(
        VECTOR_KEY, VECTOR_ID, timestamp, VECTOR_BODY
    )


# --- Several signatures and several secrets -----------------------------------


@pytest.mark.parametrize("position", [0, 1, 2])
def test_one_matching_signature_among_several_in_any_position(position: int) -> None:
    entries = [wrong_signature(1), wrong_signature(2)]
    entries.insert(position, VECTOR_SIGNATURE)
    headers = signed_headers() | {"webhook-signature": " ".join(entries)}

    verified = make_verifier().verify(headers, VECTOR_BODY)

    assert verified == Verified(webhook_id=VECTOR_ID, timestamp=VECTOR_TIMESTAMP)


def test_several_signatures_none_matching_are_rejected() -> None:
    headers = signed_headers() | {"webhook-signature": f"{wrong_signature(1)} {wrong_signature(2)}"}

    assert rejection_reason(make_verifier(), headers, VECTOR_BODY) == "no matching signature"


@pytest.mark.parametrize(
    "signature_header",
    [
        f"v2,{VECTOR_SIGNATURE[3:]} {VECTOR_SIGNATURE}",
        f"v2,not-even-base64!! {VECTOR_SIGNATURE}",
        f"{VECTOR_SIGNATURE} v1a,{VECTOR_SIGNATURE[3:]} v2,x",
    ],
)
def test_unknown_versions_are_skipped(signature_header: str) -> None:
    headers = signed_headers() | {"webhook-signature": signature_header}

    verified = make_verifier().verify(headers, VECTOR_BODY)

    assert verified == Verified(webhook_id=VECTOR_ID, timestamp=VECTOR_TIMESTAMP)


@pytest.mark.parametrize(
    "signature_header",
    [
        f"v2,{VECTOR_SIGNATURE[3:]}",
        f"v2,{VECTOR_SIGNATURE[3:]} V1,{VECTOR_SIGNATURE[3:]} v1a,{VECTOR_SIGNATURE[3:]}",
    ],
)
def test_a_header_with_only_unknown_versions_is_rejected(signature_header: str) -> None:
    headers = signed_headers() | {"webhook-signature": signature_header}

    assert rejection_reason(make_verifier(), headers, VECTOR_BODY) == "no matching signature"


def test_rotation_accepts_a_signature_made_with_the_second_secret() -> None:
    verifier = make_verifier(OTHER_SECRET, VECTOR_SECRET)

    verified = verifier.verify(signed_headers(key=VECTOR_KEY), VECTOR_BODY)

    assert verified == Verified(webhook_id=VECTOR_ID, timestamp=VECTOR_TIMESTAMP)


def test_rotation_accepts_a_signature_made_with_the_first_secret() -> None:
    verifier = make_verifier(OTHER_SECRET, VECTOR_SECRET)

    verified = verifier.verify(signed_headers(key=OTHER_KEY), VECTOR_BODY)

    assert verified == Verified(webhook_id=VECTOR_ID, timestamp=VECTOR_TIMESTAMP)


def test_a_signature_by_a_secret_not_configured_is_rejected() -> None:
    verifier = make_verifier(OTHER_SECRET)

    assert rejection_reason(verifier, signed_headers(key=VECTOR_KEY), VECTOR_BODY) == (
        "no matching signature"
    )


def test_no_secrets_is_a_configuration_error() -> None:
    with pytest.raises(ValueError, match="at least one secret or public key is required"):
        StandardVerifier([])


def test_an_invalid_secret_is_a_configuration_error() -> None:
    with pytest.raises(ValueError, match="not valid base64"):
        StandardVerifier([VECTOR_SECRET, "whsec_not base64"])


# --- Timestamp -----------------------------------------------------------------


@pytest.mark.parametrize("offset_seconds", [-300, -299, -1, 0, 1, 299, 300])
def test_timestamp_within_tolerance_is_accepted(offset_seconds: int) -> None:
    timestamp = VECTOR_TIMESTAMP + offset_seconds
    headers = signed_headers(timestamp=timestamp)

    verified = make_verifier(now=VECTOR_TIMESTAMP).verify(headers, VECTOR_BODY)

    assert verified == Verified(webhook_id=VECTOR_ID, timestamp=timestamp)


@pytest.mark.parametrize("offset_seconds", [-301, 301, -86_400, 86_400])
def test_timestamp_outside_tolerance_is_rejected(offset_seconds: int) -> None:
    headers = signed_headers(timestamp=VECTOR_TIMESTAMP + offset_seconds)

    assert rejection_reason(make_verifier(now=VECTOR_TIMESTAMP), headers, VECTOR_BODY) == (
        "timestamp outside tolerance"
    )


@pytest.mark.parametrize(("offset_seconds", "is_accepted"), [(10, True), (11, False)])
def test_tolerance_is_configurable(offset_seconds: int, is_accepted: bool) -> None:
    verifier = make_verifier(tolerance_seconds=10)
    headers = signed_headers(timestamp=VECTOR_TIMESTAMP - offset_seconds)

    if is_accepted:
        assert verifier.verify(headers, VECTOR_BODY).timestamp == VECTOR_TIMESTAMP - offset_seconds
    else:
        assert rejection_reason(verifier, headers, VECTOR_BODY) == "timestamp outside tolerance"


@pytest.mark.parametrize(
    "timestamp_text",
    [
        "",
        "abc",
        "1614265330.0",
        "1614265330.5",
        " 1614265330",
        "1614265330 ",
        "1614265330\n",
        "+1614265330",
        "-1614265330",
        "-1",
        "1e9",
        "0x6037a2f2",
        "1_614_265_330",
        ARABIC_INDIC_TIMESTAMP,
        FULLWIDTH_TIMESTAMP,
        "1" + ARABIC_INDIC_TIMESTAMP[1:],
        str(VECTOR_TIMESTAMP)[:-1] + FULLWIDTH_TIMESTAMP[-1],
        "9" * 16,
        "9" * 5000,
    ],
)
def test_malformed_timestamp_is_rejected(timestamp_text: str) -> None:
    headers = signed_headers() | {"webhook-timestamp": timestamp_text}

    assert rejection_reason(make_verifier(), headers, VECTOR_BODY) == (
        "malformed webhook-timestamp"
    )


@pytest.mark.parametrize(
    "timestamp_text", ["0" + str(VECTOR_TIMESTAMP), "00" + str(VECTOR_TIMESTAMP)]
)
def test_timestamp_with_leading_zeros_is_rejected(timestamp_text: str) -> None:
    """A zero-padded timestamp is not the integer text a sender signs, so it never verifies."""
    key = decode_secret(VECTOR_SECRET)
    signed = f"{VECTOR_ID}.{timestamp_text}.".encode() + VECTOR_BODY
    signature = "v1," + b64(hmac.new(key, signed, hashlib.sha256).digest())
    headers = {
        "webhook-id": VECTOR_ID,
        "webhook-timestamp": timestamp_text,
        "webhook-signature": f"{signature} {VECTOR_SIGNATURE}",
    }

    with pytest.raises(VerificationError):
        make_verifier().verify(headers, VECTOR_BODY)


@pytest.mark.parametrize("timestamp", [0, 999_999_999_999_999])
def test_well_formed_but_absurd_timestamp_is_outside_tolerance(timestamp: int) -> None:
    headers = signed_headers(timestamp=timestamp)

    assert rejection_reason(make_verifier(), headers, VECTOR_BODY) == (
        "timestamp outside tolerance"
    )


def test_timestamp_is_part_of_the_signed_content() -> None:
    headers = signed_headers() | {"webhook-timestamp": str(VECTOR_TIMESTAMP + 1)}

    assert rejection_reason(make_verifier(), headers, VECTOR_BODY) == "no matching signature"


# --- Headers ---------------------------------------------------------------------


@pytest.mark.parametrize("missing", ["webhook-id", "webhook-timestamp", "webhook-signature"])
def test_missing_header_is_rejected(missing: str) -> None:
    headers = signed_headers()
    del headers[missing]

    assert rejection_reason(make_verifier(), headers, VECTOR_BODY) == "missing signature headers"


def test_no_headers_at_all_is_rejected() -> None:
    assert rejection_reason(make_verifier(), {}, VECTOR_BODY) == "missing signature headers"


@pytest.mark.parametrize(
    ("name", "value", "reason"),
    [
        ("webhook-id", "", "malformed webhook-id"),
        ("webhook-timestamp", "", "malformed webhook-timestamp"),
        ("webhook-signature", "", "empty webhook-signature"),
        ("webhook-signature", "   ", "empty webhook-signature"),
    ],
)
def test_empty_header_value_is_rejected(name: str, value: str, reason: str) -> None:
    headers = signed_headers() | {name: value}

    assert rejection_reason(make_verifier(), headers, VECTOR_BODY) == reason


def test_svix_prefixed_headers_are_accepted() -> None:
    headers = signed_headers(prefix="svix-")

    verified = make_verifier().verify(headers, VECTOR_BODY)

    assert verified == Verified(webhook_id=VECTOR_ID, timestamp=VECTOR_TIMESTAMP)


def test_webhook_headers_win_over_valid_svix_headers() -> None:
    svix = signed_headers(prefix="svix-")
    webhook = signed_headers(key=OTHER_KEY, prefix="webhook-")

    assert rejection_reason(make_verifier(), svix | webhook, VECTOR_BODY) == (
        "no matching signature"
    )


def test_valid_webhook_headers_win_over_invalid_svix_headers() -> None:
    svix = signed_headers(key=OTHER_KEY, prefix="svix-")
    webhook = signed_headers(prefix="webhook-")

    verified = make_verifier().verify(svix | webhook, VECTOR_BODY)

    assert verified == Verified(webhook_id=VECTOR_ID, timestamp=VECTOR_TIMESTAMP)


@pytest.mark.parametrize(
    ("name", "conflicting_value"),
    [
        ("id", "msg_someone_else"),
        ("timestamp", str(VECTOR_TIMESTAMP + 1)),
        ("signature", wrong_signature(1)),
    ],
)
def test_webhook_header_wins_over_svix_header_one_by_one(name: str, conflicting_value: str) -> None:
    """Each webhook-* header alone is preferred, so a wrong one breaks a valid svix-* set."""
    headers = signed_headers(prefix="svix-") | {f"webhook-{name}": conflicting_value}

    assert rejection_reason(make_verifier(), headers, VECTOR_BODY) == "no matching signature"


def test_header_names_are_case_insensitive() -> None:
    valid = signed_headers()
    headers = {
        "Webhook-Id": valid["webhook-id"],
        "WEBHOOK-TIMESTAMP": valid["webhook-timestamp"],
        "wEbHoOk-SiGnAtUrE": valid["webhook-signature"],
    }

    verified = make_verifier().verify(headers, VECTOR_BODY)

    assert verified == Verified(webhook_id=VECTOR_ID, timestamp=VECTOR_TIMESTAMP)


def test_svix_header_names_are_case_insensitive() -> None:
    valid = signed_headers(prefix="svix-")
    headers = {name.title(): value for name, value in valid.items()}

    verified = make_verifier().verify(headers, VECTOR_BODY)

    assert verified == Verified(webhook_id=VECTOR_ID, timestamp=VECTOR_TIMESTAMP)


def test_case_insensitive_multidict_headers_are_accepted() -> None:
    headers = CIMultiDict(
        {name.upper(): value for name, value in signed_headers(prefix="svix-").items()}
    )

    verified = make_verifier().verify(headers, VECTOR_BODY)

    assert verified == Verified(webhook_id=VECTOR_ID, timestamp=VECTOR_TIMESTAMP)


# --- webhook-id --------------------------------------------------------------------


@pytest.mark.parametrize(
    "webhook_id",
    [VECTOR_ID, "a", "x" * 256, ID_ALPHABET[:256], "msg_2KWPBgLlAfxdpx2AI54pPJ85f4W", "!~"],
)
def test_valid_webhook_ids(webhook_id: str) -> None:
    assert is_valid_webhook_id(webhook_id) is True


INVALID_WEBHOOK_IDS = [
    "",
    "x" * 257,
    "msg.1",
    ".",
    "msg 1",
    " msg",
    "msg_é",
    "msg_\u2028",
    "msg_\x00",
    "msg_\x1f",
    "msg_\x7f",
    "msg_\t",
    "msg_\n",
    "msg\n",
]


@pytest.mark.parametrize("webhook_id", INVALID_WEBHOOK_IDS)
def test_invalid_webhook_ids(webhook_id: str) -> None:
    assert is_valid_webhook_id(webhook_id) is False


def test_webhook_id_of_256_characters_is_accepted() -> None:
    webhook_id = "m" * 256

    verified = make_verifier().verify(signed_headers(webhook_id=webhook_id), VECTOR_BODY)

    assert verified == Verified(webhook_id=webhook_id, timestamp=VECTOR_TIMESTAMP)


@pytest.mark.parametrize("webhook_id", INVALID_WEBHOOK_IDS[1:])
def test_correctly_signed_request_with_invalid_webhook_id_is_rejected(webhook_id: str) -> None:
    headers = signed_headers(webhook_id=webhook_id)

    assert rejection_reason(make_verifier(), headers, VECTOR_BODY) == "malformed webhook-id"


def test_webhook_id_is_part_of_the_signed_content() -> None:
    headers = signed_headers() | {"webhook-id": VECTOR_ID + "x"}

    assert rejection_reason(make_verifier(), headers, VECTOR_BODY) == "no matching signature"


# --- Malformed signature entries -------------------------------------------------


MALFORMED_SIGNATURE_ENTRIES = [
    "v1",  # no comma
    VECTOR_SIGNATURE.replace(",", ""),
    "," + VECTOR_SIGNATURE[3:],  # empty version
    "v1,",  # empty value
    ",",
    "v1,not base64!",
    "v1,!!!!",
    "v1," + VECTOR_SIGNATURE[3:].rstrip("="),  # padding dropped
    "v1," + VECTOR_SIGNATURE[3:] + "=",
    "v1," + b64(bytes(31)),
    "v1," + b64(bytes(33)),
    "v1," + b64(b""),
    "v1," + VECTOR_SIGNATURE[3:].replace("+", "-").replace("/", "_"),  # urlsafe alphabet
    VECTOR_SIGNATURE + ",extra",
    "v1,é" + VECTOR_SIGNATURE[5:],
    "garbage",
    "\x00",
]


@pytest.mark.parametrize("entry", MALFORMED_SIGNATURE_ENTRIES)
def test_malformed_signature_entry_is_rejected(entry: str) -> None:
    headers = signed_headers() | {"webhook-signature": entry}

    assert rejection_reason(make_verifier(), headers, VECTOR_BODY) == (
        "malformed webhook-signature entry"
    )


@pytest.mark.parametrize("entry", MALFORMED_SIGNATURE_ENTRIES)
@pytest.mark.parametrize("match_first", [True, False])
def test_malformed_entry_next_to_a_match_is_accepted(entry: str, match_first: bool) -> None:
    # As in svix and standardwebhooks: a malformed entry matches nothing, the good one still does.
    entries = [VECTOR_SIGNATURE, entry] if match_first else [entry, VECTOR_SIGNATURE]
    headers = signed_headers() | {"webhook-signature": " ".join(entries)}

    verified = make_verifier().verify(headers, VECTOR_BODY)

    assert verified == Verified(webhook_id=VECTOR_ID, timestamp=VECTOR_TIMESTAMP)


@pytest.mark.parametrize("entry", MALFORMED_SIGNATURE_ENTRIES)
def test_malformed_entry_next_to_a_wrong_signature_is_rejected(entry: str) -> None:
    wrong = "v1," + b64(bytes(32))
    headers = signed_headers() | {"webhook-signature": f"{entry} {wrong}"}

    assert rejection_reason(make_verifier(), headers, VECTOR_BODY) == "no matching signature"


@pytest.mark.parametrize("entry", MALFORMED_SIGNATURE_ENTRIES)
def test_a_header_of_malformed_entries_fails_on_the_headers_alone(entry: str) -> None:
    headers = signed_headers() | {"webhook-signature": f"{entry} v2,{VECTOR_SIGNATURE[3:]}"}

    with pytest.raises(VerificationError) as excinfo:
        make_verifier().check_headers(headers)
    assert excinfo.value.reason == "malformed webhook-signature entry"


@pytest.mark.parametrize("signature_header", ["", " ", "\t\n", " \r\n "])
def test_whitespace_only_signature_header_is_rejected(signature_header: str) -> None:
    headers = signed_headers() | {"webhook-signature": signature_header}

    assert rejection_reason(make_verifier(), headers, VECTOR_BODY) == "empty webhook-signature"


# --- Body --------------------------------------------------------------------------


@pytest.mark.parametrize("index", range(len(VECTOR_BODY)))
def test_body_changed_by_one_byte_is_rejected(index: int) -> None:
    body = bytearray(VECTOR_BODY)
    body[index] ^= 0x01

    assert rejection_reason(make_verifier(), signed_headers(), bytes(body)) == (
        "no matching signature"
    )


@pytest.mark.parametrize("body", [VECTOR_BODY + b"\n", VECTOR_BODY[:-1], b""])
def test_body_lengthened_or_shortened_is_rejected(body: bytes) -> None:
    assert rejection_reason(make_verifier(), signed_headers(), body) == "no matching signature"


@pytest.mark.parametrize(
    "dump_options",
    [{"separators": (",", ":")}, {"indent": 2}, {"separators": (", ", " : ")}],
)
def test_reserialised_json_body_is_rejected(dump_options: dict[str, object]) -> None:
    reserialised = json.dumps(json.loads(VECTOR_BODY), **dump_options).encode()  # type: ignore[arg-type]
    assert reserialised != VECTOR_BODY
    assert json.loads(reserialised) == json.loads(VECTOR_BODY)

    assert rejection_reason(make_verifier(), signed_headers(), reserialised) == (
        "no matching signature"
    )


NON_UTF8_BODY = b"\xff\xfe\x00binary\x80\xc3(\n"


def test_non_utf8_body_is_signed_and_verified_byte_exact() -> None:
    with pytest.raises(UnicodeDecodeError):
        NON_UTF8_BODY.decode()
    headers = sign_headers(VECTOR_SECRET, VECTOR_ID, NON_UTF8_BODY, timestamp=VECTOR_TIMESTAMP)

    assert headers["webhook-signature"] == reference_signature(
        VECTOR_KEY, VECTOR_ID, VECTOR_TIMESTAMP, NON_UTF8_BODY
    )
    assert make_verifier().verify(headers, NON_UTF8_BODY) == Verified(
        webhook_id=VECTOR_ID, timestamp=VECTOR_TIMESTAMP
    )


def test_non_utf8_body_after_lossy_decoding_is_rejected() -> None:
    headers = signed_headers(body=NON_UTF8_BODY)
    lossy = NON_UTF8_BODY.decode("utf-8", errors="replace").encode()

    assert rejection_reason(make_verifier(), headers, lossy) == "no matching signature"


# --- decode_secret -------------------------------------------------------------------


@pytest.mark.parametrize(
    "secret",
    [
        VECTOR_SECRET,
        VECTOR_SECRET.removeprefix("whsec_"),
        f"  {VECTOR_SECRET}\n",  # as read from a secret file
    ],
)
def test_decode_secret(secret: str) -> None:
    assert decode_secret(secret) == VECTOR_KEY
    assert len(VECTOR_KEY) == 24


@pytest.mark.parametrize(
    "secret",
    [
        "whsec_not base64",
        "whsec_abc",  # bad padding
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaS",  # one character short
        "whsec_MfKQ9r8GKYqrTwjUPD8I!PZIo2LaLaSw",
        "whsec_MfKQ9r8GKYqrTwjUPD8I LPZIo2LaLaSw",
        "whsec_" + base64.urlsafe_b64encode(b"\xfb\xff" * 12).decode(),
        "whsec_é" + "A" * 23,
        "WHSEC_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
    ],
)
def test_decode_secret_rejects_invalid_base64(secret: str) -> None:
    with pytest.raises(ValueError, match=r"^secret is not valid base64 \(expected whsec_"):
        decode_secret(secret)


@pytest.mark.parametrize("length", [1, 8, 15])
def test_decode_secret_rejects_short_keys(length: int) -> None:
    secret = "whsec_" + b64(bytes(length))

    with pytest.raises(
        ValueError, match=rf"^secret decodes to {length} bytes; at least 16 needed$"
    ):
        decode_secret(secret)


def test_decode_secret_accepts_sixteen_bytes() -> None:
    key = bytes(range(16))

    assert decode_secret("whsec_" + b64(key)) == key


@pytest.mark.parametrize("secret", ["", "whsec_", "   ", " whsec_ \n"])
def test_decode_secret_rejects_empty(secret: str) -> None:
    with pytest.raises(ValueError, match=r"^secret is empty$"):
        decode_secret(secret)


# --- Independent implementation: the standardwebhooks package ----------------------


INDEPENDENT_CASES = [
    (VECTOR_SECRET, VECTOR_ID, VECTOR_TIMESTAMP, VECTOR_BODY.decode()),
    (VECTOR_SECRET, "msg_1", 0, ""),
    (OTHER_SECRET, "evt_2KWPBgLlAfxdpx2AI54pPJ85f4W", 1_700_000_000, '{"type":"job.completed"}'),
    (OTHER_SECRET, "!#$%&'()*+,-/:;<=>?@[]^_`{|}~", 2_000_000_000, "héllo wörld ✓\n"),
    (
        "whsec_" + b64(b"0123456789abcdef"),
        "x" * 256,
        1_614_265_330,
        json.dumps({"nested": {"list": [1, 2.5, None, True]}}),
    ),
]


def webhook_datetime(timestamp: int) -> datetime:
    return datetime.fromtimestamp(timestamp, tz=UTC)


@pytest.mark.parametrize(("secret", "webhook_id", "timestamp", "body"), INDEPENDENT_CASES)
def test_sign_equals_standardwebhooks_byte_for_byte(
    secret: str, webhook_id: str, timestamp: int, body: str
) -> None:
    theirs = Webhook(secret).sign(webhook_id, webhook_datetime(timestamp), body)

    assert sign(secret, webhook_id, timestamp, body.encode()) == theirs


def test_standardwebhooks_reproduces_the_published_vector() -> None:
    theirs = Webhook(VECTOR_SECRET).sign(
        VECTOR_ID, webhook_datetime(VECTOR_TIMESTAMP), VECTOR_BODY.decode()
    )

    assert theirs == VECTOR_SIGNATURE


@pytest.mark.parametrize(("secret", "webhook_id", "timestamp", "body"), INDEPENDENT_CASES)
def test_verifier_accepts_standardwebhooks_signatures(
    secret: str, webhook_id: str, timestamp: int, body: str
) -> None:
    headers = {
        "webhook-id": webhook_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": Webhook(secret).sign(webhook_id, webhook_datetime(timestamp), body),
    }
    verifier = StandardVerifier([secret], clock=fixed_clock(timestamp + 120))

    assert verifier.verify(headers, body.encode()) == Verified(
        webhook_id=webhook_id, timestamp=timestamp
    )


@pytest.mark.parametrize(("secret", "webhook_id", "_timestamp", "body"), INDEPENDENT_CASES)
def test_standardwebhooks_accepts_sign_headers_output(
    secret: str, webhook_id: str, _timestamp: int, body: str
) -> None:
    # standardwebhooks checks the timestamp against the real clock, so sign "now".
    headers = sign_headers(secret, webhook_id, body.encode())

    assert Webhook(secret).verify(body.encode(), headers, json_parse=False) is None


def test_standardwebhooks_parses_the_body_it_verified() -> None:
    body = b'{"type": "job.completed", "data": {"job_id": "job_123"}}'
    headers = sign_headers(VECTOR_SECRET, VECTOR_ID, body)

    assert Webhook(VECTOR_SECRET).verify(body, headers) == {
        "type": "job.completed",
        "data": {"job_id": "job_123"},
    }


# --- Properties ------------------------------------------------------------------------


webhook_ids = st.text(alphabet=ID_ALPHABET, min_size=1, max_size=256)
timestamps = st.integers(min_value=0, max_value=10**12)
offsets_seconds = st.integers(min_value=-TOLERANCE_SECONDS, max_value=TOLERANCE_SECONDS)
keys = st.binary(min_size=16, max_size=64)

property_settings = settings(max_examples=200, deadline=None)


@property_settings
@given(
    key=keys, webhook_id=webhook_ids, timestamp=timestamps, offset=offsets_seconds, body=st.binary()
)
def test_sign_then_verify_round_trips(
    key: bytes, webhook_id: str, timestamp: int, offset: int, body: bytes
) -> None:
    secret = "whsec_" + b64(key)
    headers = sign_headers(secret, webhook_id, body, timestamp=timestamp)
    verifier = StandardVerifier([secret], clock=fixed_clock(timestamp + offset))

    assert verifier.verify(headers, body) == Verified(webhook_id=webhook_id, timestamp=timestamp)
    # The ingress hands the headers it checked to the verification of the body.
    checked = verifier.check_headers(headers)
    assert verifier.verify(headers, body, checked) == verifier.verify(headers, body)


@property_settings
@given(
    webhook_id=webhook_ids,
    timestamp=timestamps,
    body=st.binary(min_size=1),
    data=st.data(),
)
def test_flipping_any_body_byte_is_rejected(
    webhook_id: str, timestamp: int, body: bytes, data: st.DataObject
) -> None:
    headers = sign_headers(VECTOR_SECRET, webhook_id, body, timestamp=timestamp)
    index = data.draw(st.integers(min_value=0, max_value=len(body) - 1), label="index")
    mask = data.draw(st.integers(min_value=1, max_value=255), label="mask")
    tampered = bytearray(body)
    tampered[index] ^= mask

    verifier = make_verifier(now=timestamp)
    assert rejection_reason(verifier, headers, bytes(tampered)) == "no matching signature"
    with pytest.raises(VerificationError, match="no matching signature"):
        verifier.verify(headers, bytes(tampered), verifier.check_headers(headers))


def test_the_window_is_judged_again_when_the_body_has_arrived() -> None:
    # Headers checked in time, then a body that arrives after the window has closed.
    now = [float(VECTOR_TIMESTAMP)]
    verifier = StandardVerifier([VECTOR_SECRET], clock=lambda: now[0])
    headers = signed_headers()
    checked = verifier.check_headers(headers)
    now[0] += TOLERANCE_SECONDS + 1

    with pytest.raises(VerificationError, match="timestamp outside tolerance"):
        verifier.verify(headers, VECTOR_BODY, checked)


def test_checked_headers_carry_what_verification_needs() -> None:
    checked = make_verifier().check_headers(signed_headers())

    assert checked.webhook_id == VECTOR_ID
    assert checked.timestamp == VECTOR_TIMESTAMP
    assert checked.signatures == (VECTOR_SIGNATURE.removeprefix("v1,"),)


@property_settings
@given(webhook_id=webhook_ids, timestamp=timestamps, body=st.binary(), data=st.data())
def test_flipping_any_byte_of_the_digest_is_rejected(
    webhook_id: str, timestamp: int, body: bytes, data: st.DataObject
) -> None:
    digest = bytearray(base64.b64decode(sign(VECTOR_SECRET, webhook_id, timestamp, body)[3:]))
    index = data.draw(st.integers(min_value=0, max_value=len(digest) - 1), label="index")
    mask = data.draw(st.integers(min_value=1, max_value=255), label="mask")
    digest[index] ^= mask
    headers = {
        "webhook-id": webhook_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": "v1," + b64(bytes(digest)),
    }

    verifier = make_verifier(now=timestamp)
    assert rejection_reason(verifier, headers, body) == "no matching signature"


@property_settings
@given(webhook_id=webhook_ids, timestamp=timestamps, body=st.binary(), data=st.data())
def test_flipping_any_character_of_the_signature_header_is_rejected(
    webhook_id: str, timestamp: int, body: bytes, data: st.DataObject
) -> None:
    signature = sign(VECTOR_SECRET, webhook_id, timestamp, body)
    index = data.draw(st.integers(min_value=0, max_value=len(signature) - 1), label="index")
    mask = data.draw(st.integers(min_value=1, max_value=0x7FF), label="mask")
    tampered = signature[:index] + chr(ord(signature[index]) ^ mask) + signature[index + 1 :]
    headers = {
        "webhook-id": webhook_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": tampered,
    }

    with pytest.raises(VerificationError):
        make_verifier(now=timestamp).verify(headers, body)


@property_settings
@given(webhook_id=st.text(), timestamp=st.text(), signature=st.text(), body=st.binary())
def test_arbitrary_header_values_only_ever_raise_verification_error(
    webhook_id: str, timestamp: str, signature: str, body: bytes
) -> None:
    headers = {
        "webhook-id": webhook_id,
        "webhook-timestamp": timestamp,
        "webhook-signature": signature,
    }

    with pytest.raises(VerificationError):
        make_verifier().verify(headers, body)


@property_settings
@given(signature=st.text(), body=st.binary())
def test_arbitrary_signature_header_next_to_valid_id_and_timestamp(
    signature: str, body: bytes
) -> None:
    headers = signed_headers(body=body) | {"webhook-signature": signature}

    with pytest.raises(VerificationError):
        make_verifier().verify(headers, body)


@property_settings
@given(
    key=keys,
    webhook_id=webhook_ids,
    timestamp=st.integers(min_value=0, max_value=2**32),
    body=st.text(),
)
def test_sign_matches_standardwebhooks(
    key: bytes, webhook_id: str, timestamp: int, body: str
) -> None:
    secret = "whsec_" + b64(key)
    theirs = Webhook(secret).sign(webhook_id, webhook_datetime(timestamp), body)

    assert sign(secret, webhook_id, timestamp, body.encode()) == theirs


# --- HexHmacVerifier ---------------------------------------------------------------------


HEX_SECRET = "docextract-shared-secret"
HEX_BODY = b'{"job_id": "job_123", "status": "completed"}'
HEX_DIGEST = hmac.new(HEX_SECRET.encode(), HEX_BODY, hashlib.sha256).hexdigest()
HEX_BODY_ID = "sha256:" + hashlib.sha256(HEX_BODY).hexdigest()


@pytest.mark.parametrize(
    "signature",
    [
        HEX_DIGEST,
        HEX_DIGEST.upper(),
        f"sha256={HEX_DIGEST}",
        f"SHA256={HEX_DIGEST.upper()}",
        f" sha256={HEX_DIGEST}\n",
    ],
)
def test_hex_hmac_accepts_valid_signatures(signature: str) -> None:
    verifier = HexHmacVerifier([HEX_SECRET])
    headers = {"X-DocExtract-Signature": signature}

    verified = verifier.verify(headers, HEX_BODY)

    assert verified == Verified(webhook_id=HEX_BODY_ID, timestamp=None, body_digest=HEX_BODY_ID)
    assert verifier.verify(headers, HEX_BODY, verifier.check_headers(headers)) == verified


@pytest.mark.parametrize("webhook_id", [None, "delivery-42"])
def test_hex_hmac_with_checked_headers_refuses_another_body(webhook_id: str | None) -> None:
    verifier = HexHmacVerifier([HEX_SECRET])
    headers = {"X-DocExtract-Signature": HEX_DIGEST}
    if webhook_id is not None:
        headers["X-Webhook-Id"] = webhook_id
    checked = verifier.check_headers(headers)

    assert verifier.verify(headers, HEX_BODY, checked).webhook_id == (webhook_id or HEX_BODY_ID)
    with pytest.raises(VerificationError, match="no matching signature"):
        verifier.verify(headers, HEX_BODY + b" ", checked)


def test_hex_signature_is_the_hex_hmac_of_the_body_with_the_secret_as_utf8() -> None:
    assert hex_signature(HEX_SECRET, HEX_BODY) == HEX_DIGEST
    assert hex_signature(HEX_SECRET.encode(), HEX_BODY) == HEX_DIGEST


def test_hex_hmac_header_name_is_case_insensitive() -> None:
    verifier = HexHmacVerifier([HEX_SECRET])

    verified = verifier.verify({"x-docextract-signature": HEX_DIGEST}, HEX_BODY)

    assert verified.webhook_id == HEX_BODY_ID


def test_hex_hmac_takes_the_id_from_the_id_header() -> None:
    verifier = HexHmacVerifier([HEX_SECRET])
    headers = {"X-DocExtract-Signature": HEX_DIGEST, "x-webhook-id": "delivery-42"}

    assert verifier.verify(headers, HEX_BODY) == Verified(
        webhook_id="delivery-42", timestamp=None, body_digest=HEX_BODY_ID
    )


def test_hex_hmac_empty_id_header_falls_back_to_the_body_hash() -> None:
    verifier = HexHmacVerifier([HEX_SECRET])
    headers = {"X-DocExtract-Signature": HEX_DIGEST, "X-Webhook-Id": ""}

    assert verifier.verify(headers, HEX_BODY).webhook_id == HEX_BODY_ID


@pytest.mark.parametrize("webhook_id", ["a.b", "a b", "x" * 257, "é"])
def test_hex_hmac_rejects_a_malformed_id_header(webhook_id: str) -> None:
    verifier = HexHmacVerifier([HEX_SECRET])
    headers = {"X-DocExtract-Signature": HEX_DIGEST, "X-Webhook-Id": webhook_id}

    with pytest.raises(VerificationError) as excinfo:
        verifier.verify(headers, HEX_BODY)
    assert excinfo.value.reason == "malformed id header"


def test_hex_hmac_custom_header_names() -> None:
    verifier = HexHmacVerifier(
        [HEX_SECRET], signature_header="X-Hub-Signature-256", id_header="X-GitHub-Delivery"
    )
    headers = {"x-hub-signature-256": f"sha256={HEX_DIGEST}", "X-GitHub-Delivery": "abc-123"}

    assert verifier.verify(headers, HEX_BODY).webhook_id == "abc-123"


def test_hex_hmac_custom_signature_header_ignores_the_default_one() -> None:
    verifier = HexHmacVerifier([HEX_SECRET], signature_header="X-Signature")

    with pytest.raises(VerificationError) as excinfo:
        verifier.verify({"X-DocExtract-Signature": HEX_DIGEST}, HEX_BODY)
    assert excinfo.value.reason == "missing signature header"


def test_hex_hmac_custom_id_header_ignores_the_default_one() -> None:
    verifier = HexHmacVerifier([HEX_SECRET], id_header="X-Request-Id")
    headers = {"X-DocExtract-Signature": HEX_DIGEST, "X-Webhook-Id": "delivery-42"}

    assert verifier.verify(headers, HEX_BODY).webhook_id == HEX_BODY_ID


@pytest.mark.parametrize(
    "secrets", [[b"old-secret", HEX_SECRET], [HEX_SECRET, b"new-secret"]], ids=["second", "first"]
)
def test_hex_hmac_rotation_accepts_either_secret(secrets: list[str | bytes]) -> None:
    verifier = HexHmacVerifier(secrets)

    assert verifier.verify({"X-DocExtract-Signature": HEX_DIGEST}, HEX_BODY).webhook_id == (
        HEX_BODY_ID
    )


@pytest.mark.parametrize(
    ("headers", "body", "reason"),
    [
        ({"X-DocExtract-Signature": HEX_DIGEST}, HEX_BODY + b" ", "no matching signature"),
        ({}, HEX_BODY, "missing signature header"),
        ({"X-Webhook-Id": "delivery-42"}, HEX_BODY, "missing signature header"),
        ({"X-DocExtract-Signature": ""}, HEX_BODY, "malformed signature"),
        ({"X-DocExtract-Signature": "sha256="}, HEX_BODY, "malformed signature"),
        ({"X-DocExtract-Signature": HEX_DIGEST[:-1]}, HEX_BODY, "malformed signature"),
        ({"X-DocExtract-Signature": HEX_DIGEST + "0"}, HEX_BODY, "malformed signature"),
        ({"X-DocExtract-Signature": "g" + HEX_DIGEST[1:]}, HEX_BODY, "malformed signature"),
        ({"X-DocExtract-Signature": f"sha1={HEX_DIGEST}"}, HEX_BODY, "malformed signature"),
        ({"X-DocExtract-Signature": f"v1,{HEX_DIGEST}"}, HEX_BODY, "malformed signature"),
        ({"X-DocExtract-Signature": "\u0660" * 64}, HEX_BODY, "malformed signature"),
        (
            {"X-DocExtract-Signature": base64.b64encode(bytes.fromhex(HEX_DIGEST)).decode()},
            HEX_BODY,
            "malformed signature",
        ),
    ],
)
def test_hex_hmac_rejections(headers: dict[str, str], body: bytes, reason: str) -> None:
    verifier = HexHmacVerifier([HEX_SECRET])

    with pytest.raises(VerificationError) as excinfo:
        verifier.verify(headers, body)
    assert excinfo.value.reason == reason


def test_hex_hmac_rejects_a_wrong_secret() -> None:
    verifier = HexHmacVerifier(["another-secret"])

    with pytest.raises(VerificationError) as excinfo:
        verifier.verify({"X-DocExtract-Signature": HEX_DIGEST}, HEX_BODY)
    assert excinfo.value.reason == "no matching signature"


def test_hex_hmac_requires_a_secret() -> None:
    with pytest.raises(ValueError, match="at least one secret is required"):
        HexHmacVerifier([])


@property_settings
@given(
    signature=st.text(),
    webhook_id=st.text(),
    body=st.binary(),
)
def test_hex_hmac_arbitrary_headers_only_ever_raise_verification_error(
    signature: str, webhook_id: str, body: bytes
) -> None:
    verifier = HexHmacVerifier([HEX_SECRET])

    with pytest.raises(VerificationError):
        verifier.verify({"X-DocExtract-Signature": signature, "X-Webhook-Id": webhook_id}, body)


# The body is the hex scheme's only signed part: its own `timestamp` bounds a replay.
HEX_NOW = 1_700_000_000  # 2023-11-14T22:13:20Z


def hex_verifier(now: float = HEX_NOW) -> HexHmacVerifier:
    return HexHmacVerifier([HEX_SECRET], tolerance_seconds=TOLERANCE_SECONDS, clock=lambda: now)


def hex_signed(document: object) -> tuple[dict[str, str], bytes]:
    body = json.dumps(document).encode()
    return {"X-DocExtract-Signature": hex_signature(HEX_SECRET, body)}, body


@pytest.mark.parametrize(
    "timestamp",
    [
        HEX_NOW,
        HEX_NOW - TOLERANCE_SECONDS,
        HEX_NOW + TOLERANCE_SECONDS,
        HEX_NOW + 0.5,
        str(HEX_NOW),
        "2023-11-14T22:13:20Z",
        "2023-11-14T22:08:20.000Z",
        "2023-11-14T23:13:20+01:00",
        "2023-11-14T22:13:20",  # no offset: UTC
        None,  # null: no timestamp given
    ],
)
def test_hex_hmac_accepts_a_body_timestamp_within_tolerance(timestamp: object) -> None:
    headers, body = hex_signed({"type": "job.completed", "timestamp": timestamp})

    verified = hex_verifier().verify(headers, body)

    assert verified.body_digest == "sha256:" + hashlib.sha256(body).hexdigest()


@pytest.mark.parametrize(
    "timestamp",
    [
        HEX_NOW - TOLERANCE_SECONDS - 1,
        HEX_NOW + TOLERANCE_SECONDS + 1,
        0,
        1e300,
        str(HEX_NOW - 86_400),
        "2023-11-14T22:08:19Z",
        "2023-11-14T22:18:21+00:00",
        "2023-11-14",
    ],
)
def test_hex_hmac_refuses_a_body_timestamp_outside_tolerance(timestamp: object) -> None:
    headers, body = hex_signed({"type": "job.completed", "timestamp": timestamp})

    with pytest.raises(VerificationError) as excinfo:
        hex_verifier().verify(headers, body)
    assert excinfo.value.reason == "timestamp outside tolerance"


@pytest.mark.parametrize(
    "timestamp",
    [
        "yesterday",
        "",
        "17e8",
        True,
        [HEX_NOW],
        {"s": HEX_NOW},
        float("nan"),
        float("inf"),
        10**400,
    ],
)
def test_hex_hmac_refuses_a_body_timestamp_in_no_known_form(timestamp: object) -> None:
    headers, body = hex_signed({"type": "job.completed", "timestamp": timestamp})

    with pytest.raises(VerificationError) as excinfo:
        hex_verifier().verify(headers, body)
    assert excinfo.value.reason == "malformed timestamp in body"


@pytest.mark.parametrize(
    "body", [b"not json", b"[1, 2]", b'{"data": {"timestamp": 0}}', b'{"type": "x"}', b"\xff"]
)
def test_hex_hmac_without_a_top_level_timestamp_checks_no_window(body: bytes) -> None:
    headers = {"X-DocExtract-Signature": hex_signature(HEX_SECRET, body)}

    assert hex_verifier().verify(headers, body).webhook_id.startswith("sha256:")


def test_hex_hmac_judges_the_signature_before_the_timestamp() -> None:
    _, body = hex_signed({"type": "job.completed", "timestamp": 0})

    with pytest.raises(VerificationError) as excinfo:
        hex_verifier().verify({"X-DocExtract-Signature": "0" * 64}, body)
    assert excinfo.value.reason == "no matching signature"


def test_hex_hmac_body_digest_is_a_second_key_beside_the_id_header() -> None:
    headers, body = hex_signed({"type": "job.completed", "timestamp": HEX_NOW})

    first = hex_verifier().verify({**headers, "X-Webhook-Id": "delivery-1"}, body)
    second = hex_verifier().verify({**headers, "X-Webhook-Id": "delivery-2"}, body)

    assert (first.webhook_id, second.webhook_id) == ("delivery-1", "delivery-2")
    assert first.body_digest == second.body_digest == "sha256:" + hashlib.sha256(body).hexdigest()


def test_standard_webhooks_sign_the_id_so_they_carry_no_body_digest() -> None:
    verifier = StandardVerifier([VECTOR_SECRET], clock=lambda: VECTOR_TIMESTAMP)
    headers = {
        "webhook-id": VECTOR_ID,
        "webhook-timestamp": str(VECTOR_TIMESTAMP),
        "webhook-signature": VECTOR_SIGNATURE,
    }

    assert verifier.verify(headers, VECTOR_BODY).body_digest is None


@property_settings
@given(
    timestamp=st.recursive(
        st.none() | st.booleans() | st.floats() | st.integers() | st.text(),
        lambda inner: st.lists(inner) | st.dictionaries(st.text(), inner),
    )
)
def test_hex_hmac_any_signed_timestamp_only_ever_raises_verification_error(
    timestamp: object,
) -> None:
    headers, body = hex_signed({"timestamp": timestamp})

    with contextlib.suppress(VerificationError):
        hex_verifier().verify(headers, body)


# --- NoneVerifier ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"webhook-signature": "garbage", "webhook-timestamp": "never"},
        {"webhook-id": "has.a.dot"},
        {"webhook-id": ""},
    ],
)
def test_none_verifier_accepts_anything_with_the_body_hash_as_id(
    headers: dict[str, str],
) -> None:
    body = b"\x00anything at all\xff"

    verified = NoneVerifier().verify(headers, body)

    assert verified == Verified(
        webhook_id="sha256:" + hashlib.sha256(body).hexdigest(), timestamp=None
    )


def test_none_verifier_empty_body_id() -> None:
    assert NoneVerifier().verify({}, b"").webhook_id == (
        "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    )


@pytest.mark.parametrize("name", ["webhook-id", "Webhook-Id", "svix-id", "SVIX-ID"])
def test_none_verifier_takes_the_id_from_the_id_header(name: str) -> None:
    headers = {name: "msg_local", "webhook-signature": "v1,nonsense"}
    verifier = NoneVerifier()

    assert verifier.verify(headers, b"body") == Verified(webhook_id="msg_local", timestamp=None)
    checked = verifier.check_headers(headers)
    assert verifier.verify(headers, b"body", checked) == verifier.verify(headers, b"body")


def test_none_verifier_prefers_webhook_id_over_svix_id() -> None:
    headers = {"svix-id": "msg_svix", "webhook-id": "msg_webhook"}

    assert NoneVerifier().verify(headers, b"body").webhook_id == "msg_webhook"


# --- Headers before the body ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ({}, "missing signature headers"),
        (signed_headers() | {"webhook-id": "a.b"}, "malformed webhook-id"),
        (signed_headers() | {"webhook-timestamp": "x"}, "malformed webhook-timestamp"),
        (signed_headers(timestamp=VECTOR_TIMESTAMP - 301), "timestamp outside tolerance"),
        (signed_headers() | {"webhook-signature": " "}, "empty webhook-signature"),
        (signed_headers() | {"webhook-signature": "v1,AAAA"}, "malformed webhook-signature entry"),
        (signed_headers() | {"webhook-signature": "v2,AAAA"}, "no matching signature"),
    ],
)
def test_check_headers_refuses_what_no_body_can_save(headers: dict[str, str], reason: str) -> None:
    with pytest.raises(VerificationError) as excinfo:
        make_verifier().check_headers(headers)

    assert excinfo.value.reason == reason
    assert rejection_reason(make_verifier(), headers, VECTOR_BODY) == reason


def test_check_headers_passes_a_request_whose_body_is_yet_to_be_verified() -> None:
    headers = signed_headers() | {"webhook-signature": "v1," + b64(bytes(32))}

    make_verifier().check_headers(headers)
    assert rejection_reason(make_verifier(), headers, VECTOR_BODY) == "no matching signature"


@property_settings
@given(webhook_id=st.text(), timestamp=st.text(), signature=st.text())
def test_verify_refuses_for_the_same_reason_as_check_headers(
    webhook_id: str, timestamp: str, signature: str
) -> None:
    headers = {
        "webhook-id": webhook_id,
        "webhook-timestamp": timestamp,
        "webhook-signature": signature,
    }
    try:
        make_verifier().check_headers(headers)
    except VerificationError as error:
        assert rejection_reason(make_verifier(), headers, VECTOR_BODY) == error.reason


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ({}, "missing signature header"),
        ({"X-DocExtract-Signature": "nothex"}, "malformed signature"),
        ({"X-DocExtract-Signature": HEX_DIGEST, "X-Webhook-Id": "a b"}, "malformed id header"),
    ],
)
def test_hex_check_headers_refuses_before_the_body(headers: dict[str, str], reason: str) -> None:
    with pytest.raises(VerificationError) as excinfo:
        HexHmacVerifier([HEX_SECRET]).check_headers(headers)

    assert excinfo.value.reason == reason


def test_hex_and_none_check_headers_pass_well_formed_headers() -> None:
    HexHmacVerifier([HEX_SECRET]).check_headers({"X-DocExtract-Signature": HEX_DIGEST})
    NoneVerifier().check_headers({})
