"""The public edge: who is calling, who may call, and what is refused before a body is read.

Everything here is pure except `sample_accept_errors`, which hooks the event
loop: the ingress (server.py) asks these questions of each request and maps the
answers to HTTP.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import hmac
import ipaddress
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

from pulse_relay.logs import SampledLog

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# Headers a sender may give once only: a second copy could make the stored headers
# disagree with the ones that were verified.
SIGNATURE_HEADER_PREFIXES = ("webhook-", "svix-")
# Forwarded (RFC 7239): elements are split on commas and parameters on semicolons,
# except inside quoted strings.
_FORWARDED_PART = re.compile(r'(?:[^,;"]|"(?:[^"\\]|\\.)*")+|[,;]')


class Headers(Protocol):
    """What the edge reads of a request's headers: aiohttp's CIMultiDictProxy fits."""

    def getall(self, key: str, default: list[str]) -> list[str]:
        """Every value of `key` (case-insensitive), in the order received."""
        ...

    def items(self) -> Iterable[tuple[str, str]]:
        """Every header, once per occurrence (iterating names may skip repeats)."""
        ...

    def __contains__(self, key: object) -> bool:
        """Whether `key` (case-insensitive) is present at all."""
        ...


def parse_network(text: str) -> IPNetwork:
    """An address or CIDR block; ValueError with a message that says what is wrong."""
    try:
        return ipaddress.ip_network(text.strip(), strict=True)
    except ValueError as error:
        if "has host bits set" in str(error):
            loose = ipaddress.ip_network(text.strip(), strict=False)
            raise ValueError(f"{text!r} has host bits set (did you mean {loose}?)") from None
        raise ValueError(f"{text!r} is not an IP address or CIDR block") from None


def parse_networks(texts: Iterable[str]) -> tuple[IPNetwork, ...]:
    """`parse_network` over a list."""
    return tuple(parse_network(text) for text in texts)


def _contains(networks: Sequence[IPNetwork], address: IPAddress) -> bool:
    return any(address.version == network.version and address in network for network in networks)


@functools.lru_cache(maxsize=1024)
def parse_address(text: str | None) -> IPAddress | None:
    """An IP address as a socket or a proxy reports it, or None when it is not one.

    Accepts `[v6]:port`, `v4:port` and IPv4-mapped IPv6 (shown as IPv4), which
    proxies and dual-stack sockets produce. Cached: a sender's peer address is
    parsed on every request it makes, and ipaddress parses in Python.
    """
    if not text:
        return None
    text = text.strip()
    if text.startswith("["):
        text = text[1:].partition("]")[0]
    elif text.count(":") == 1:
        text = text.partition(":")[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _forwarded_for(values: Sequence[str]) -> list[str | None] | None:
    """The `for=` node of each Forwarded element (None for an element without one).

    None when no element has a `for=` at all, so that X-Forwarded-For is used instead.
    """
    nodes: list[str | None] = []
    node: str | None = None
    for part in [*_FORWARDED_PART.findall(", ".join(values)), ","]:
        if part == ",":
            nodes.append(node)
            node = None
            continue
        name, equals, value = part.strip().partition("=")
        if equals and name.strip().lower() == "for":
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] == '"':
                value = value[1:-1].replace("\\", "")
            node = value
    return nodes if any(node is not None for node in nodes) else None


def client_address(
    peer: str | None,
    *,
    forwarded: Sequence[str],
    x_forwarded_for: Sequence[str],
    trusted_proxies: Sequence[IPNetwork],
) -> IPAddress | None:
    """The address of the client as docs/ingress.md (trusted proxies) defines it; None when
    it cannot be known.

    The peer is the client unless it is a trusted proxy; then the hops that proxies
    appended are walked from the right, and the first that is not a trusted proxy
    is the client. A hop a trusted proxy reported as unknown (or garbled) ends the
    walk with None: nothing further left can be believed.
    """
    address = parse_address(peer)
    if address is None or not _contains(trusted_proxies, address):
        return address
    hops = _forwarded_for(forwarded)
    if hops is None:
        hops = [entry for value in x_forwarded_for for entry in value.split(",")]
    for hop in reversed(hops):
        hop_address = parse_address(hop)
        if hop_address is None:
            return None
        address = hop_address
        if not _contains(trusted_proxies, address):
            return address
    # Every hop is a trusted proxy: the farthest one is where the request came from.
    return address


def is_allowed(address: IPAddress | None, allow_from: Sequence[IPNetwork]) -> bool:
    """Empty `allow_from` lets anyone in; otherwise the address must be in one of its blocks."""
    if not allow_from:
        return True
    return address is not None and _contains(allow_from, address)


def digest_header_values(required: Mapping[str, str]) -> dict[str, bytes]:
    """Required header values as SHA-256 digests, keyed by lower-case name.

    Comparing digests takes the same time whatever the length of the value sent.
    """
    return {
        name.lower(): hashlib.sha256(value.encode()).digest() for name, value in required.items()
    }


def wrong_required_header(headers: Headers, required: Mapping[str, bytes]) -> str | None:
    """The name of the first required header missing, repeated or wrong; None when all match."""
    wrong: str | None = None
    for name, expected in required.items():
        values = headers.getall(name, [])
        given = values[0] if len(values) == 1 else ""
        digest = hashlib.sha256(given.encode("utf-8", "surrogateescape")).digest()
        # Every header is compared, so the time taken does not say which one failed.
        if not hmac.compare_digest(digest, expected) or len(values) != 1:
            wrong = wrong or name
    return wrong


def signature_headers(
    headers: Headers, extra_names: Iterable[str] = ()
) -> tuple[dict[str, str], str | None]:
    """The `webhook-*`/`svix-*` (and other named) headers by lower-case name, and the first
    of them given more than once (None when none is).

    One pass over the request's headers: the verifier then reads a few entries, not a
    lower-cased copy of every header.
    """
    named = {name.lower() for name in extra_names} if extra_names else ()
    found: dict[str, str] = {}
    for name, value in headers.items():
        lowered = name.lower()
        if not (lowered.startswith(SIGNATURE_HEADER_PREFIXES) or lowered in named):
            continue
        if lowered in found:
            return found, lowered
        found[lowered] = value
    return found, None


def is_identity_encoding(headers: Headers) -> bool:
    """Whether the body is sent as is: no Content-Encoding, or only `identity`."""
    if "Content-Encoding" not in headers:
        return True
    tokens = (
        token.strip().lower()
        for value in headers.getall("Content-Encoding", [])
        for token in value.split(",")
    )
    return all(token in ("", "identity") for token in tokens)


def sample_accept_errors(loop: asyncio.AbstractEventLoop, sampled: SampledLog) -> None:
    """Log the event loop's failed accept() calls (out of file descriptors) through sampling.

    asyncio reports each one with a traceback and retries a second later; with
    thousands of idle connections holding every descriptor that would be one
    error line per listener per second, for as long as they stay.
    """

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        message = str(context.get("message", ""))
        if _is_stale_accept_retry(context):
            return
        if not message.startswith("socket.accept() out of system resource"):
            loop.default_exception_handler(context)
            return
        error = context.get("exception")
        sampled.emit(
            "accept",
            "error",
            "cannot accept connections; retrying in 1 s",
            reason=getattr(error, "strerror", None) or str(error),
        )

    loop.set_exception_handler(handler)


def _is_stale_accept_retry(context: dict[str, Any]) -> bool:
    """Whether `context` is a retry of accept() that fired after its listener was closed.

    Up to Python 3.13, one readiness event that meets EMFILE schedules a retry for every
    remaining slot of the accept loop (CPython gh-151615), so retries can still be pending
    when the relay closes its listeners at shutdown; each then fails on the closed socket
    with ValueError. Nothing is lost: the listener is gone on purpose.
    """
    callback = getattr(context.get("handle"), "_callback", None)
    return getattr(callback, "__name__", "") == "_start_serving" and isinstance(
        context.get("exception"), ValueError
    )
