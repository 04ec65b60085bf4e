"""The HTTP sink: POST the envelope to one URL, optionally re-signed with Standard Webhooks
(`v1` with a shared secret, `v1a` with an ed25519 private key; docs/envelope.md)."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

import aiohttp

from pulse_relay import __version__
from pulse_relay.ingress.signature import sign_headers
from pulse_relay.retry import is_retryable_status, parse_retry_after
from pulse_relay.sinks.base import (
    Delivery,
    PermanentSinkError,
    RetryableSinkError,
    SinkResult,
)

if TYPE_CHECKING:
    from pulse_relay.config import HttpSinkSettings

# How much of a response body is kept for the attempt log. An HTTP error body
# states its reason up front, so the first bytes are the useful ones, and
# nothing beyond them is read.
MAX_RESPONSE_EXCERPT_BYTES = 4096


class HttpSink:
    """POSTs each delivery's body to `settings.url`; owns its session unless one is given."""

    def __init__(
        self, settings: HttpSinkSettings, *, session: aiohttp.ClientSession | None = None
    ) -> None:
        self.name = settings.name
        self._settings = settings
        secret = settings.sign_secret
        self._secret = None if secret is None else secret.get_secret_value()
        private_key = settings.sign_private_key
        self._private_key = None if private_key is None else private_key.key
        self._session = session
        self._owns_session = session is None
        self._timeout = aiohttp.ClientTimeout(total=settings.timeout_seconds)

    def _headers(self, delivery: Delivery) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "User-Agent": f"pulse-relay/{__version__}"}
        # Configured headers may override the defaults (a vendor content type,
        # say) but never the signature, which must describe this exact body.
        _override(headers, self._settings.headers)
        if self._secret is not None or self._private_key is not None:
            signature = sign_headers(
                self._secret, delivery.event_id, delivery.body, private_key=self._private_key
            )
            _override(headers, signature)
        return headers

    def _client(self) -> aiohttp.ClientSession:
        # Created on first use, inside the running loop, as aiohttp requires.
        if self._session is None:
            self._session = aiohttp.ClientSession()
        return self._session

    async def deliver(self, delivery: Delivery) -> SinkResult:
        """POST the body: 2xx delivered; 408/425/429/5xx/network/timeout retryable; else dead."""
        try:
            async with self._client().post(
                self._settings.url,
                data=delivery.body,
                headers=self._headers(delivery),
                timeout=self._timeout,
                allow_redirects=False,
            ) as response:
                excerpt = await _read_excerpt(response)
                status = response.status
                retry_after_seconds = parse_retry_after(response.headers.get("Retry-After"))
                location = response.headers.get("Location")
        except (aiohttp.InvalidURL, aiohttp.NonHttpUrlClientError):
            # The URL itself stays out of the reason: it may carry a token.
            raise PermanentSinkError("the configured url is not a valid http(s) URL") from None
        except TimeoutError:
            raise RetryableSinkError(
                f"no response within {self._settings.timeout_seconds:g}s"
            ) from None
        except aiohttp.ClientError as exc:
            raise RetryableSinkError(f"request failed: {type(exc).__name__}: {exc}") from None
        if 200 <= status < 300:
            return SinkResult(detail=f"HTTP {status}", status_code=status, output_tail=excerpt)
        if 300 <= status < 400:
            target = f" to {location}" if location else ""
            raise PermanentSinkError(
                f"HTTP {status}: redirect{target} not followed; configure the final URL",
                status_code=status,
                output_tail=excerpt,
            )
        if is_retryable_status(status):
            raise RetryableSinkError(
                f"HTTP {status}",
                status_code=status,
                retry_after_seconds=retry_after_seconds,
                output_tail=excerpt,
            )
        raise PermanentSinkError(f"HTTP {status}", status_code=status, output_tail=excerpt)

    async def close(self) -> None:
        """Close the session if this sink created it; a shared session is its owner's."""
        if self._owns_session and self._session is not None:
            await self._session.close()
            self._session = None


def _override(headers: dict[str, str], overrides: dict[str, str]) -> None:
    """Set `overrides` in `headers`, replacing any header of the same name in another case."""
    for name, value in overrides.items():
        for existing in [key for key in headers if key.lower() == name.lower()]:
            del headers[existing]
        headers[name] = value


async def _read_excerpt(response: aiohttp.ClientResponse) -> str | None:
    """The first MAX_RESPONSE_EXCERPT_BYTES of the body, decoded leniently; None when empty."""
    data = bytearray()
    # The status has already decided the outcome; a body that breaks off or
    # stalls only shortens the excerpt (the total timeout still bounds it).
    with contextlib.suppress(aiohttp.ClientError, TimeoutError):
        while len(data) < MAX_RESPONSE_EXCERPT_BYTES:
            chunk = await response.content.read(MAX_RESPONSE_EXCERPT_BYTES - len(data))
            if not chunk:
                break
            data += chunk
    if not data:
        return None
    try:
        return data.decode(response.charset or "utf-8", errors="replace")
    except LookupError:
        return data.decode("utf-8", errors="replace")
