"""Standard Webhooks' asymmetric keys (`v1a`, ed25519), in Svix's text format.

`whpk_` + base64 of the 32-byte public key verifies; `whsk_` + base64 of the 32-byte
private key then its 32-byte public key signs (docs/ingress.md, docs/envelope.md).
Pure: no I/O.
"""

from __future__ import annotations

import base64
import binascii
import hmac

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

PUBLIC_KEY_PREFIX = "whpk_"
PRIVATE_KEY_PREFIX = "whsk_"
ED25519_KEY_BYTES = 32
ED25519_SIGNATURE_BYTES = 64


def _decode_key(text: str, prefix: str, size_bytes: int, what: str) -> bytes:
    """The raw bytes of a `prefix` + base64 key of `size_bytes`; ValueError says what is wrong.

    The messages never quote the key: a private one must not reach a log or a terminal.
    """
    text = text.strip()
    if not text.startswith(prefix):
        raise ValueError(f"{what} must start with {prefix}")
    try:
        raw = base64.b64decode(text[len(prefix) :], validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(
            f"{what} is not valid base64 (expected {prefix} followed by base64)"
        ) from None
    if len(raw) != size_bytes:
        raise ValueError(f"{what} decodes to {len(raw)} bytes; {size_bytes} expected")
    return raw


def _public_bytes(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def decode_public_key(text: str) -> Ed25519PublicKey:
    """The ed25519 key of a `whpk_` public key; ValueError says what is wrong."""
    raw = _decode_key(text, PUBLIC_KEY_PREFIX, ED25519_KEY_BYTES, "public key")
    return Ed25519PublicKey.from_public_bytes(raw)


def decode_private_key(text: str) -> Ed25519PrivateKey:
    """The ed25519 key of a `whsk_` private key (private then public half, as Svix writes it);
    ValueError when it is malformed or its public half is not the private half's."""
    raw = _decode_key(text, PRIVATE_KEY_PREFIX, 2 * ED25519_KEY_BYTES, "private key")
    key = Ed25519PrivateKey.from_private_bytes(raw[:ED25519_KEY_BYTES])
    # A pasted key with a stray public half would sign what its holder's receivers cannot verify.
    if not hmac.compare_digest(_public_bytes(key.public_key()), raw[ED25519_KEY_BYTES:]):
        raise ValueError("private key: its public half does not match its private half")
    return key


def encode_public_key(key: Ed25519PublicKey) -> str:
    """`key` as a `whpk_` public key."""
    return PUBLIC_KEY_PREFIX + base64.b64encode(_public_bytes(key)).decode()


def encode_private_key(key: Ed25519PrivateKey) -> str:
    """`key` as a `whsk_` key: base64 of the private then the public half (Svix's format)."""
    private = key.private_bytes_raw()
    return PRIVATE_KEY_PREFIX + base64.b64encode(private + _public_bytes(key.public_key())).decode()


def is_valid(key: Ed25519PublicKey, signature: bytes, content: bytes) -> bool:
    """Whether `signature` is `key`'s ed25519 signature of `content`."""
    try:
        key.verify(signature, content)
    except InvalidSignature:
        return False
    return True
