"""The ingress's parts from settings: its verifier, its limits and its edge rules.

What each setting means is in docs/configuration.md (`[server]`, `[verify]`) and
docs/ingress.md (verification schemes, status codes).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from pulse_relay.config import Settings
from pulse_relay.ingress.edge import digest_header_values
from pulse_relay.ingress.server import IngressConfig
from pulse_relay.ingress.signature import HexHmacVerifier, NoneVerifier, StandardVerifier, Verifier


def build_verifier(
    settings: Settings, *, clock: Callable[[], float] = time.time
) -> Verifier | None:
    """The verifier the settings ask for; None means polling-only mode (no secret and,
    for the standard scheme, no public key)."""
    verify = settings.verify
    secrets = [secret.get_secret_value() for secret in verify.secrets]
    public_keys = [public.key for public in verify.public_keys]
    if verify.scheme == "none":
        return NoneVerifier()
    if not secrets and not public_keys:
        return None
    if verify.scheme == "hmac-sha256-hex":
        return HexHmacVerifier(
            secrets,
            signature_header=verify.signature_header,
            id_header=verify.id_header,
            tolerance_seconds=verify.tolerance_seconds,
            clock=clock,
        )
    return StandardVerifier(
        secrets,
        public_keys=public_keys,
        tolerance_seconds=verify.tolerance_seconds,
        clock=clock,
    )


def build_ingress_config(settings: Settings, *, closed_reason: str | None) -> IngressConfig:
    """The ingress's limits and edge rules from settings."""
    server, verify = settings.server, settings.verify
    required = {name: value.get_secret_value() for name, value in verify.required_headers.items()}
    return IngressConfig(
        max_body_bytes=server.max_body_bytes,
        read_timeout_seconds=server.read_timeout_seconds,
        fetch_on=frozenset(settings.pulse.fetch_on),
        closed_reason=closed_reason,
        allow_from=server.allow_from,
        trusted_proxies=server.trusted_proxies,
        required_headers=digest_header_values(required),
        single_headers=(
            (verify.signature_header, verify.id_header)
            if verify.scheme == "hmac-sha256-hex"
            else ()
        ),
    )
