"""The Standard Webhooks secret's text form, decoded: base64 after an optional `whsec_`.

Apart from the verification itself, so that validating a configuration (every CLI
command does) needs neither the signature schemes nor the ed25519 library.
"""

from __future__ import annotations

import base64
import binascii

SECRET_PREFIX = "whsec_"  # noqa: S105 - a format prefix, not a secret
MIN_SECRET_BYTES = 16


def decode_secret(secret: str) -> bytes:
    """Decode a `whsec_`-prefixed (prefix optional) base64 secret; ValueError says what is wrong."""
    text = secret.strip()
    if text.startswith(SECRET_PREFIX):
        text = text[len(SECRET_PREFIX) :]
    if not text:
        raise ValueError("secret is empty")
    try:
        key = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        message = "secret is not valid base64 (expected whsec_ followed by base64)"
        raise ValueError(message) from None
    if len(key) < MIN_SECRET_BYTES:
        raise ValueError(f"secret decodes to {len(key)} bytes; at least {MIN_SECRET_BYTES} needed")
    return key
