"""Webhook signatures: Standard Webhooks (as Svix signs Pulse's webhooks) and a hex HMAC scheme.

Standard Webhooks has two signature versions: `v1`, an HMAC-SHA256 under a shared
`whsec_` secret, and `v1a`, an ed25519 signature that a `whpk_` public key verifies
(docs/ingress.md; the keys are read in ed25519.py). Everything here is pure: no I/O,
and the clock is injected, so the published Standard Webhooks test vectors can be
checked.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import math
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from pulse_relay.ingress.ed25519 import ED25519_SIGNATURE_BYTES, decode_public_key, is_valid
from pulse_relay.ingress.secret import decode_secret

MAX_ID_LENGTH = 256

# A sender signs once per active key, two during a rotation. Each v1a entry costs an
# ed25519 verification per configured key (tens of microseconds, unlike an HMAC), so a
# header listing more than this many is refused rather than checked entry by entry.
MAX_V1A_SIGNATURES = 8

# Digits only, no sign, no padding: the header text must be the integer that was signed.
_TIMESTAMP = re.compile(r"0|[1-9][0-9]{0,14}")
# A body's `timestamp` given as text of Unix seconds (the hex scheme).
_UNIX_SECONDS = re.compile(r"[0-9]{1,15}(\.[0-9]+)?")
# Printable ASCII without space and '.', which would make the signed content ambiguous.
_WEBHOOK_ID = re.compile(r"[\x21-\x2d\x2f-\x7e]{1,256}")

Clock = Callable[[], float]


class VerificationError(Exception):
    """A request that is not proven genuine; `reason` is short and safe to return to the sender."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Verified:
    """A request whose signature holds; `webhook_id` is the dedupe key.

    `body_digest` ("sha256:<hex>") is a second dedupe key, given when the body is
    the only signed part: the same body under another id is then a replay.
    """

    webhook_id: str
    timestamp: int | None
    body_digest: str | None = None


@dataclass(frozen=True, slots=True)
class CheckedHeaders:
    """What `check_headers` read from the headers, handed back to `verify` with the body
    so that the headers are parsed once per request."""

    webhook_id: str | None
    timestamp: int | None
    signatures: tuple[str, ...]
    # The decoded `v1a` (ed25519) signatures, for a verifier that has public keys.
    v1a_signatures: tuple[bytes, ...] = ()


class Verifier(Protocol):
    """Proves a request genuine or raises `VerificationError`."""

    def check_headers(self, headers: Mapping[str, str]) -> CheckedHeaders:
        """Raise VerificationError if the headers alone already fail (read before the body)."""
        ...

    def verify(
        self, headers: Mapping[str, str], body: bytes, checked: CheckedHeaders | None = None
    ) -> Verified:
        """Return the verified id, or raise VerificationError; `checked` is what
        `check_headers` returned for these same headers, when it was called."""
        ...


def _lower(headers: Mapping[str, str]) -> dict[str, str]:
    return {key.lower(): value for key, value in headers.items()}


# `webhook-{name}` and `svix-{name}` for each name _header looks up, built once.
_HEADER_NAMES = {
    name: (f"webhook-{name}", f"svix-{name}") for name in ("id", "timestamp", "signature")
}


def _header(headers: dict[str, str], name: str) -> str | None:
    """`webhook-{name}`, else `svix-{name}`: webhook-* wins when both are present."""
    standard, svix = _HEADER_NAMES[name]
    value = headers.get(standard)
    if value is None:
        value = headers.get(svix)
    return value


def signed_content(webhook_id: str, timestamp: int, body: bytes) -> bytes:
    """What both `v1` and `v1a` sign: `{id}.{timestamp}.{body}`."""
    return b"%s.%d.%s" % (webhook_id.encode(), timestamp, body)


def _hmac_base64(key: bytes, signed: bytes) -> str:
    # hmac.digest with a digest name is OpenSSL's one-shot HMAC, without an HMAC object.
    return base64.b64encode(hmac.digest(key, signed, "sha256")).decode()


def _keyed_base64(keyed: hmac.HMAC, signed: bytes) -> str:
    mac = keyed.copy()
    mac.update(signed)
    return base64.b64encode(mac.digest()).decode()


def compute_signature(key: bytes, webhook_id: str, timestamp: int, body: bytes) -> str:
    """The base64 HMAC-SHA256 of `{id}.{timestamp}.{body}` (without the `v1,` prefix)."""
    return _hmac_base64(key, signed_content(webhook_id, timestamp, body))


def sign(secret: str, webhook_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` header value (`v1,<base64>`) for one secret."""
    return "v1," + compute_signature(decode_secret(secret), webhook_id, timestamp, body)


def sign_v1a(key: Ed25519PrivateKey, webhook_id: str, timestamp: int, body: bytes) -> str:
    """The `v1a,<base64>` entry: the ed25519 signature of `{id}.{timestamp}.{body}`."""
    signature = key.sign(signed_content(webhook_id, timestamp, body))
    return "v1a," + base64.b64encode(signature).decode()


def hex_signature(secret: str | bytes, body: bytes) -> str:
    """The hmac-sha256-hex scheme's signature: hex HMAC-SHA256 of the body alone.

    A text secret is used as its UTF-8 bytes, as such providers document it.
    """
    key = secret if isinstance(secret, bytes) else secret.encode()
    return hmac.digest(key, body, "sha256").hex()


def sign_headers(
    secret: str | None,
    webhook_id: str,
    body: bytes,
    *,
    timestamp: int | None = None,
    private_key: Ed25519PrivateKey | None = None,
) -> dict[str, str]:
    """The three Standard Webhooks headers for `body`, timestamped now unless given.

    The signature header holds a `v1` entry for `secret` and a `v1a` entry for
    `private_key`, each when given; ValueError when neither is.
    """
    when = int(time.time()) if timestamp is None else timestamp
    entries = []
    if secret is not None:
        entries.append(sign(secret, webhook_id, when, body))
    if private_key is not None:
        entries.append(sign_v1a(private_key, webhook_id, when, body))
    if not entries:
        raise ValueError("a secret or a private key is required to sign")
    return {
        "webhook-id": webhook_id,
        "webhook-timestamp": str(when),
        "webhook-signature": " ".join(entries),
    }


def is_valid_webhook_id(webhook_id: str) -> bool:
    """1-256 printable ASCII characters, no space, no '.'."""
    return _WEBHOOK_ID.fullmatch(webhook_id) is not None


class StandardVerifier:
    """Standard Webhooks verification: `v1` entries against one or more secrets (rotation),
    `v1a` entries against one or more ed25519 public keys; a match of either kind will do."""

    def __init__(
        self,
        secrets: Iterable[str | bytes],
        *,
        public_keys: Iterable[str | Ed25519PublicKey] = (),
        tolerance_seconds: int = 300,
        clock: Clock = time.time,
    ) -> None:
        self._keys = [s if isinstance(s, bytes) else decode_secret(s) for s in secrets]
        # Keyed once: each request copies a keyed HMAC instead of keying a new one. And
        # hmac.digest (OpenSSL's one-shot) lets go of the GIL even for a small body; every
        # such release can hand the GIL to the store's writer thread, and the event loop
        # then waits to get it back.
        self._macs = [hmac.new(key, digestmod="sha256") for key in self._keys]
        self._public_keys = [
            key if isinstance(key, Ed25519PublicKey) else decode_public_key(key)
            for key in public_keys
        ]
        if not self._keys and not self._public_keys:
            raise ValueError("at least one secret or public key is required")
        self._tolerance_seconds = tolerance_seconds
        self._clock = clock

    def check_headers(self, headers: Mapping[str, str]) -> CheckedHeaders:
        """Presence and form of the three headers, and the timestamp window."""
        webhook_id, timestamp, (v1, v1a) = self._parse(headers)
        return CheckedHeaders(webhook_id, timestamp, v1, v1a)

    def verify(
        self, headers: Mapping[str, str], body: bytes, checked: CheckedHeaders | None = None
    ) -> Verified:
        """Return the verified id, or raise VerificationError with a short reason."""
        if checked is None or checked.webhook_id is None or checked.timestamp is None:
            webhook_id, timestamp, (v1, v1a) = self._parse(headers)
        else:
            webhook_id, timestamp = checked.webhook_id, checked.timestamp
            v1, v1a = checked.signatures, checked.v1a_signatures
            # The body took time to arrive: the window is judged again, now.
            self._check_window(timestamp)
        signed = signed_content(webhook_id, timestamp, body)
        expected = [_keyed_base64(mac, signed) for mac in self._macs]
        # Every pair is compared so the time taken does not depend on where a match is.
        matched = False
        for candidate in v1:
            for signature in expected:
                # Both are base64 text (ASCII), which compare_digest takes as it is.
                matched |= hmac.compare_digest(candidate, signature)
        # No secret is involved in checking a v1a entry (the keys are public), so its
        # timing reveals nothing and the first valid signature ends the search.
        matched = matched or any(
            is_valid(key, signature, signed) for signature in v1a for key in self._public_keys
        )
        if not matched:
            raise VerificationError("no matching signature")
        return Verified(webhook_id=webhook_id, timestamp=timestamp)

    def _parse(self, headers: Mapping[str, str]) -> tuple[str, int, _Candidates]:
        """The id, the timestamp and the usable v1 and v1a signatures; VerificationError if none."""
        lowered = _lower(headers)
        webhook_id = _header(lowered, "id")
        timestamp_text = _header(lowered, "timestamp")
        signature_header = _header(lowered, "signature")
        if webhook_id is None or timestamp_text is None or signature_header is None:
            raise VerificationError("missing signature headers")
        if not is_valid_webhook_id(webhook_id):
            raise VerificationError("malformed webhook-id")
        if _TIMESTAMP.fullmatch(timestamp_text) is None:
            raise VerificationError("malformed webhook-timestamp")
        timestamp = int(timestamp_text)
        self._check_window(timestamp)
        candidates = _candidate_signatures(
            signature_header, has_secrets=bool(self._keys), has_public_keys=bool(self._public_keys)
        )
        return webhook_id, timestamp, candidates

    def _check_window(self, timestamp: int) -> None:
        if abs(self._clock() - timestamp) > self._tolerance_seconds:
            raise VerificationError("timestamp outside tolerance")


# A header's usable `v1` entries (base64 text) and `v1a` entries (decoded signatures).
_Candidates = tuple[tuple[str, ...], tuple[bytes, ...]]


def _candidate_signatures(header: str, *, has_secrets: bool, has_public_keys: bool) -> _Candidates:
    """The well-formed `v1` (with secrets) and `v1a` (with public keys) signatures of a header.

    A malformed entry (no comma, not base64, not 32 bytes for v1 or 64 for v1a)
    matches nothing but does not spoil the others, as in the reference libraries: a
    request signed by one good entry next to a garbled one is genuine. Other versions,
    and a version this verifier has no key for, are skipped. A header with no usable
    entry at all can never match, so it is refused before the body is read.
    """
    entries = header.split()
    if not entries:
        raise VerificationError("empty webhook-signature")
    v1: list[str] = []
    v1a: list[bytes] = []
    has_malformed = False
    for entry in entries:
        version, comma, value = entry.partition(",")
        if not comma or not version or not value:
            has_malformed = True
        elif version == "v1" and has_secrets:
            if _decoded_size(value) == hashlib.sha256().digest_size:
                v1.append(value)
            else:
                has_malformed = True
        elif version == "v1a" and has_public_keys:
            if _decoded_size(value) == ED25519_SIGNATURE_BYTES:
                v1a.append(base64.b64decode(value))
            else:
                has_malformed = True
    if len(v1a) > MAX_V1A_SIGNATURES:
        raise VerificationError(f"more than {MAX_V1A_SIGNATURES} v1a signatures")
    if not v1 and not v1a:
        raise VerificationError(
            "malformed webhook-signature entry" if has_malformed else "no matching signature"
        )
    return tuple(v1), tuple(v1a)


def _decoded_size(value: str) -> int | None:
    """How many bytes the base64 `value` holds; None when it is not base64."""
    try:
        return len(base64.b64decode(value, validate=True))
    except (binascii.Error, ValueError):
        return None


def body_timestamp(body: bytes) -> float | None:
    """The body's top-level `timestamp` in Unix seconds; None when it has none.

    Unix seconds (a JSON number or a text of digits) or ISO 8601 text (UTC when it
    has no offset); VerificationError for any other value.
    """
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        return None
    if not isinstance(document, dict) or document.get("timestamp") is None:
        return None
    seconds = _unix_seconds(document["timestamp"])
    if seconds is None or not math.isfinite(seconds):
        raise VerificationError("malformed timestamp in body")
    return seconds


def _unix_seconds(value: object) -> float | None:
    try:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str) and _UNIX_SECONDS.fullmatch(value):
            return float(value)
        if isinstance(value, str) and value:
            moment = datetime.fromisoformat(value)
            return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()
    except (ValueError, OverflowError):
        pass
    return None


class HexHmacVerifier:
    """HMAC-SHA256 of the body alone, hex encoded, in a configurable header.

    Nothing but the body is signed, so a captured request could be sent again
    under any id: a body's own top-level `timestamp` must be within the
    tolerance, and the body's SHA-256 is handed back as a second dedupe key.
    """

    def __init__(
        self,
        secrets: Iterable[str | bytes],
        *,
        signature_header: str = "X-DocExtract-Signature",
        id_header: str = "X-Webhook-Id",
        tolerance_seconds: int = 300,
        clock: Clock = time.time,
    ) -> None:
        self._secrets = list(secrets)
        if not self._secrets:
            raise ValueError("at least one secret is required")
        self._signature_header = signature_header.lower()
        self._id_header = id_header.lower()
        self._tolerance_seconds = tolerance_seconds
        self._clock = clock

    def check_headers(self, headers: Mapping[str, str]) -> CheckedHeaders:
        """Presence and form of the signature header and of the id header when given."""
        given, webhook_id = self._parse(_lower(headers))
        return CheckedHeaders(webhook_id, None, (given,))

    def verify(
        self, headers: Mapping[str, str], body: bytes, checked: CheckedHeaders | None = None
    ) -> Verified:
        """Return the id (the id header, else the body's SHA-256), or raise VerificationError."""
        if checked is None:
            given, webhook_id = self._parse(_lower(headers))
        else:
            (given,), webhook_id = checked.signatures, checked.webhook_id
        matched = False
        for secret in self._secrets:
            expected = hex_signature(secret, body)
            matched |= hmac.compare_digest(expected.encode(), given.encode())
        if not matched:
            raise VerificationError("no matching signature")
        # Read only once the signature holds: a forged body's claims are never parsed.
        sent_at = body_timestamp(body)
        if sent_at is not None and abs(self._clock() - sent_at) > self._tolerance_seconds:
            raise VerificationError("timestamp outside tolerance")
        body_digest = "sha256:" + hashlib.sha256(body).hexdigest()
        return Verified(
            webhook_id=webhook_id or body_digest,
            timestamp=None if sent_at is None else int(sent_at),
            body_digest=body_digest,
        )

    def _parse(self, lowered: dict[str, str]) -> tuple[str, str | None]:
        """The lower-case hex signature and the id header (None when absent or empty)."""
        given = lowered.get(self._signature_header)
        if given is None:
            raise VerificationError("missing signature header")
        given = given.strip()
        if given[:7].lower() == "sha256=":
            given = given[7:]
        if re.fullmatch(r"[0-9a-fA-F]{64}", given) is None:
            raise VerificationError("malformed signature")
        webhook_id = lowered.get(self._id_header) or None
        if webhook_id is not None and not is_valid_webhook_id(webhook_id):
            raise VerificationError("malformed id header")
        return given.lower(), webhook_id


class NoneVerifier:
    """Accepts everything (local experiments only); the id is the id header or the body hash."""

    def check_headers(self, headers: Mapping[str, str]) -> CheckedHeaders:
        """Nothing to check."""
        return CheckedHeaders(None, None, ())

    def verify(
        self, headers: Mapping[str, str], body: bytes, checked: CheckedHeaders | None = None
    ) -> Verified:
        """Return an id without checking anything."""
        lowered = _lower(headers)
        webhook_id = _header(lowered, "id")
        if webhook_id is None or not is_valid_webhook_id(webhook_id):
            webhook_id = "sha256:" + hashlib.sha256(body).hexdigest()
        return Verified(webhook_id=webhook_id, timestamp=None)
