"""Which headers cross the pass-through, each way (docs/api.md, `/pulse/`; README, *Security
model*).

Hop-by-hop headers (RFC 9110 §7.6.1) never cross. Upstream never sees the admin
listener's credentials, the relay's CSRF header or its metadata headers; the caller
never gets upstream's cookies or CORS grants, and every answer is sandboxed. Pure:
the forwarding (forward.py) applies these rules.
"""

from __future__ import annotations

from typing import Final

from multidict import CIMultiDict, CIMultiDictProxy

from pulse_relay.proxy.capture import is_metadata_header

# RFC 9110 §7.6.1, plus Host (set from the upstream URL) and Expect (this hop answers it).
_NOT_FORWARDED: Final = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "expect",
    }
)
# The admin listener's own credentials and the relay's CSRF header: meant for the
# relay, never for Pulse (the metadata headers are dropped too, by `is_metadata_header`).
_NEVER_UPSTREAM: Final = frozenset({"cookie", "authorization", "x-pulse-relay"})
# An answer is served from the admin origin: upstream must not set its cookies (the
# login cookie among them) nor grant other origins access to it.
_NEVER_PASSED_BACK: Final = frozenset({"set-cookie", "set-cookie2"})
_NEVER_PASSED_BACK_PREFIX: Final = "access-control-"
# Every /pulse/ answer, whoever wrote it: never sniffed into HTML, never run as a page
# of the admin origin.
SANDBOX_HEADERS: Final = {
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "sandbox",
}
# Codings the relay can decode to look for a job id (zlib, in the standard library).
_READABLE_CODINGS: Final = frozenset({"gzip", "x-gzip", "deflate", "identity"})


Headers = CIMultiDict[str] | CIMultiDictProxy[str]


def _connection_tokens(headers: Headers) -> set[str]:
    """Header names a `Connection` header marks as hop-by-hop."""
    values = headers.getall("Connection", [])
    return {token.strip().lower() for value in values for token in value.split(",")}


def _end_to_end(headers: Headers) -> CIMultiDict[str]:
    """The headers a proxy passes on: all but hop-by-hop ones (every value kept)."""
    dropped = _NOT_FORWARDED | _connection_tokens(headers)
    return CIMultiDict((k, v) for k, v in headers.items() if k.lower() not in dropped)


def answer_headers(headers: Headers) -> CIMultiDict[str]:
    """What comes back: end-to-end headers minus cookies and CORS grants."""
    return CIMultiDict(
        (k, v)
        for k, v in _end_to_end(headers).items()
        if k.lower() not in _NEVER_PASSED_BACK
        and not k.lower().startswith(_NEVER_PASSED_BACK_PREFIX)
    )


def _readable_accept_encoding(value: str) -> str:
    """`Accept-Encoding` narrowed to codings the relay can read, so job ids are never missed."""
    kept = [item.strip() for item in value.split(",") if _coding(item) in _READABLE_CODINGS]
    return ", ".join(kept) or "identity"


def _coding(item: str) -> str:
    return item.split(";", 1)[0].strip().lower()


def forward_headers(headers: Headers) -> CIMultiDict[str]:
    """What goes upstream: end-to-end headers minus the admin credentials and relay headers."""
    forwarded = CIMultiDict(
        (k, v)
        for k, v in _end_to_end(headers).items()
        if k.lower() not in _NEVER_UPSTREAM and not is_metadata_header(k)
    )
    if "Accept-Encoding" in forwarded:
        forwarded["Accept-Encoding"] = _readable_accept_encoding(forwarded["Accept-Encoding"])
    return forwarded
