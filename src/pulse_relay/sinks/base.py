"""The contract every sink implements, and the errors that drive retry or dead."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from pulse_relay.ingress.signature import decode_secret

if TYPE_CHECKING:
    from pydantic import SecretStr


@dataclass(frozen=True)
class Delivery:
    """One envelope on its way to one sink; `body` is the exact JSON every sink gets."""

    event_id: str
    event_type: str
    job_id: str | None
    job_status: str | None
    envelope: dict[str, Any]
    body: bytes
    received_at: str = ""


@dataclass(frozen=True)
class SinkResult:
    """What a successful delivery leaves in the attempt log."""

    detail: str = ""
    status_code: int | None = None
    output_tail: str | None = None


@dataclass
class SinkError(Exception):
    """A failed delivery attempt; subclasses say whether it may be retried."""

    reason: str
    status_code: int | None = None
    retry_after_seconds: float | None = None
    output_tail: str | None = field(default=None, repr=False)

    def __str__(self) -> str:
        return self.reason


class RetryableSinkError(SinkError):
    """The attempt failed but may succeed later (network, 5xx, timeout, non-zero exit)."""


class PermanentSinkError(SinkError):
    """The delivery can never succeed as configured; it goes dead at once."""


def matches_any(patterns: list[str], event_type: str) -> bool:
    """True when `event_type` matches one of the glob `patterns` (case-sensitive)."""
    return any(fnmatch.fnmatchcase(event_type, pattern) for pattern in patterns)


class Sink(Protocol):
    """A delivery target built from one `[[sinks]]` table."""

    name: str

    async def deliver(self, delivery: Delivery) -> SinkResult: ...

    async def close(self) -> None: ...


def signing_secret(sign_secret: SecretStr | None) -> str | None:
    """The secret a sink re-signs with; None when unset or empty. ValueError when unusable."""
    if sign_secret is None or not sign_secret.get_secret_value():
        return None
    secret = sign_secret.get_secret_value()
    decode_secret(secret)
    return secret
