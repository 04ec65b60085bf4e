"""ingress/edge.py: client addresses behind proxies, the allowlist, header rules, accept errors."""

from __future__ import annotations

import asyncio
import errno
import ipaddress
from collections.abc import Sequence

import pytest
from multidict import CIMultiDict, CIMultiDictProxy
from structlog.testing import capture_logs

from pulse_relay.ingress.edge import (
    client_address,
    digest_header_values,
    is_allowed,
    is_identity_encoding,
    parse_address,
    parse_network,
    parse_networks,
    sample_accept_errors,
    signature_headers,
    wrong_required_header,
)
from pulse_relay.logs import LogSampler, SampledLog, get_logger


def headers(*pairs: tuple[str, str]) -> CIMultiDictProxy[str]:
    return CIMultiDictProxy(CIMultiDict(pairs))


# --- networks and addresses -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "network"),
    [
        ("10.0.0.0/8", "10.0.0.0/8"),
        (" 192.0.2.7 ", "192.0.2.7/32"),
        ("2001:db8::/32", "2001:db8::/32"),
        ("::1", "::1/128"),
    ],
)
def test_parse_network_accepts_blocks_and_addresses(text: str, network: str) -> None:
    assert str(parse_network(text)) == network


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("10.0.0.1/8", "'10.0.0.1/8' has host bits set (did you mean 10.0.0.0/8?)"),
        ("example.com", "'example.com' is not an IP address or CIDR block"),
        ("10.0.0.0/33", "'10.0.0.0/33' is not an IP address or CIDR block"),
        ("", "'' is not an IP address or CIDR block"),
    ],
)
def test_parse_network_says_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(ValueError) as excinfo:
        parse_network(text)
    assert str(excinfo.value) == message


@pytest.mark.parametrize(
    ("text", "address"),
    [
        ("192.0.2.1", "192.0.2.1"),
        ("192.0.2.1:4711", "192.0.2.1"),
        ("[2001:db8::1]:4711", "2001:db8::1"),
        ("[2001:db8::1]", "2001:db8::1"),
        ("2001:db8::1", "2001:db8::1"),
        ("::ffff:192.0.2.1", "192.0.2.1"),
        (" 192.0.2.1 ", "192.0.2.1"),
        ("unknown", None),
        ("_hidden", None),
        ("", None),
        (None, None),
        ("999.1.1.1", None),
    ],
)
def test_parse_address(text: str | None, address: str | None) -> None:
    parsed = parse_address(text)
    assert (None if parsed is None else str(parsed)) == address


PROXY = "10.0.0.5"
TRUSTED = parse_networks(["10.0.0.0/24", "2001:db8:1::/48"])


def resolve(
    peer: str | None,
    *,
    forwarded: Sequence[str] = (),
    xff: Sequence[str] = (),
    trusted: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network] = TRUSTED,
) -> str | None:
    address = client_address(
        peer, forwarded=forwarded, x_forwarded_for=xff, trusted_proxies=trusted
    )
    return None if address is None else str(address)


def test_the_peer_is_the_client_when_no_proxy_is_trusted() -> None:
    assert resolve("203.0.113.9", xff=["198.51.100.1"], trusted=()) == "203.0.113.9"


def test_forwarding_headers_from_an_untrusted_peer_are_ignored() -> None:
    assert resolve("203.0.113.9", xff=["198.51.100.1"], forwarded=["for=1.2.3.4"]) == (
        "203.0.113.9"
    )


def test_a_trusted_proxy_without_forwarding_headers_is_the_client() -> None:
    assert resolve(PROXY) == PROXY


def test_the_rightmost_address_that_is_not_a_trusted_proxy_is_the_client() -> None:
    # The client wrote a fake address first; the proxies appended the real ones.
    xff = ["6.6.6.6, 203.0.113.9", "10.0.0.7"]
    assert resolve(PROXY, xff=xff) == "203.0.113.9"


def test_every_hop_trusted_means_the_farthest_proxy_is_the_client() -> None:
    assert resolve(PROXY, xff=["10.0.0.8, 10.0.0.7"]) == "10.0.0.8"


def test_forwarded_is_preferred_to_x_forwarded_for() -> None:
    forwarded = ['for=198.51.100.1;proto=https, for="[2001:db8:cafe::17]:4711";by=10.0.0.5']
    assert resolve(PROXY, forwarded=forwarded, xff=["203.0.113.9"]) == "2001:db8:cafe::17"


def test_forwarded_elements_across_header_lines_keep_their_order() -> None:
    forwarded = ["for=198.51.100.1", 'For="203.0.113.9:80"', "for=10.0.0.9"]
    assert resolve(PROXY, forwarded=forwarded) == "203.0.113.9"


def test_forwarded_without_any_for_falls_back_to_x_forwarded_for() -> None:
    assert resolve(PROXY, forwarded=["proto=https;host=example.com"], xff=["203.0.113.9"]) == (
        "203.0.113.9"
    )


@pytest.mark.parametrize(
    ("forwarded", "xff"),
    [
        (["for=unknown"], []),
        (['for="_hidden"'], []),
        (["for=203.0.113.9, proto=https"], []),  # the nearer hop does not say who it was
        ([], ["203.0.113.9, garbage"]),
        ([], ["203.0.113.9, "]),
    ],
)
def test_an_unknown_hop_reported_by_a_trusted_proxy_makes_the_client_unknown(
    forwarded: list[str], xff: list[str]
) -> None:
    assert resolve(PROXY, forwarded=forwarded, xff=xff) is None


def test_an_ipv4_mapped_peer_is_matched_as_ipv4() -> None:
    assert resolve("::ffff:10.0.0.5", xff=["203.0.113.9"]) == "203.0.113.9"


def test_is_allowed() -> None:
    allow = parse_networks(["203.0.113.0/24", "2001:db8::/32"])
    assert is_allowed(ipaddress.ip_address("203.0.113.9"), allow)
    assert is_allowed(ipaddress.ip_address("2001:db8::1"), allow)
    assert not is_allowed(ipaddress.ip_address("198.51.100.1"), allow)
    assert not is_allowed(None, allow)
    assert is_allowed(None, ())
    assert is_allowed(ipaddress.ip_address("198.51.100.1"), ())


# --- header rules ---------------------------------------------------------------------------


REQUIRED = digest_header_values({"X-Relay-Token": "s3cret", "X-Second": "two"})


@pytest.mark.parametrize(
    ("given", "wrong"),
    [
        ([("x-relay-token", "s3cret"), ("X-Second", "two")], None),
        ([("X-Second", "two")], "x-relay-token"),
        ([("X-Relay-Token", "s3cre"), ("X-Second", "two")], "x-relay-token"),
        ([("X-Relay-Token", "s3cret "), ("X-Second", "two")], "x-relay-token"),
        (
            [("X-Relay-Token", "s3cret"), ("X-Relay-Token", "s3cret"), ("X-Second", "two")],
            "x-relay-token",
        ),
        ([("X-Relay-Token", "s3cret")], "x-second"),
        ([], "x-relay-token"),
    ],
)
def test_wrong_required_header(given: list[tuple[str, str]], wrong: str | None) -> None:
    assert wrong_required_header(headers(*given), REQUIRED) == wrong


def test_no_required_headers_means_nothing_is_wrong() -> None:
    assert wrong_required_header(headers(), {}) is None


@pytest.mark.parametrize(
    ("given", "repeated"),
    [
        ([("webhook-id", "a"), ("Webhook-Id", "b")], "webhook-id"),
        ([("svix-signature", "a"), ("svix-signature", "a")], "svix-signature"),
        ([("webhook-id", "a"), ("svix-id", "a")], None),
        ([("X-Other", "a"), ("X-Other", "b")], None),
        (
            [("X-DocExtract-Signature", "a"), ("x-docextract-signature", "b")],
            "x-docextract-signature",
        ),
    ],
)
def test_repeated_signature_header(given: list[tuple[str, str]], repeated: str | None) -> None:
    assert signature_headers(headers(*given), ["X-DocExtract-Signature"])[1] == repeated


def test_signature_headers_are_collected_by_lower_case_name() -> None:
    given = headers(
        ("Webhook-Id", "msg_1"),
        ("SVIX-Timestamp", "1700000000"),
        ("Content-Type", "application/json"),
        ("X-DocExtract-Signature", "abc"),
        ("X-Other", "b"),
    )
    found, repeated = signature_headers(given, ["X-DocExtract-Signature"])
    assert found == {
        "webhook-id": "msg_1",
        "svix-timestamp": "1700000000",
        "x-docextract-signature": "abc",
    }
    assert repeated is None
    assert signature_headers(given)[0] == {"webhook-id": "msg_1", "svix-timestamp": "1700000000"}


@pytest.mark.parametrize(
    ("encodings", "is_identity"),
    [
        ([], True),
        (["identity"], True),
        (["Identity, identity"], True),
        (["gzip"], False),
        (["identity", "br"], False),
        (["zstd"], False),
        (["deflate, identity"], False),
    ],
)
def test_is_identity_encoding(encodings: list[str], is_identity: bool) -> None:
    given = headers(*[("Content-Encoding", value) for value in encodings])
    assert is_identity_encoding(given) is is_identity


# --- log sampling ---------------------------------------------------------------------------


async def test_accept_errors_are_sampled_and_other_loop_errors_pass_through(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    loop = asyncio.get_running_loop()
    passed_on: list[dict[str, object]] = []
    monkeypatch.setattr(loop, "default_exception_handler", passed_on.append)
    sample_accept_errors(loop, SampledLog(get_logger("test"), sampler=LogSampler(per_window=2)))
    out_of_files = OSError(errno.EMFILE, "Too many open files")
    try:
        with capture_logs() as logs:
            for _ in range(5):
                loop.call_exception_handler(
                    {"message": "socket.accept() out of system resource", "exception": out_of_files}
                )
            loop.call_exception_handler({"message": "something else"})
    finally:
        loop.set_exception_handler(None)

    assert [(line["event"], line["reason"]) for line in logs] == [
        ("cannot accept connections; retrying in 1 s", "Too many open files")
    ] * 2
    assert passed_on == [{"message": "something else"}]


async def test_an_accept_retry_that_fires_after_its_listener_closed_is_not_an_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    loop = asyncio.get_running_loop()
    passed_on: list[dict[str, object]] = []
    monkeypatch.setattr(loop, "default_exception_handler", passed_on.append)
    sample_accept_errors(loop, SampledLog(get_logger("test")))

    def _start_serving() -> None:  # the name asyncio's retry carries
        raise ValueError("Invalid file descriptor: -1")

    def other_callback() -> None:
        raise ValueError("a bug")

    try:
        with capture_logs() as logs:
            for callback in (_start_serving, other_callback):
                handle = loop.call_later(0, callback)
                await asyncio.sleep(0.01)
                assert handle.when() <= loop.time()
    finally:
        loop.set_exception_handler(None)
    assert logs == []
    (context,) = passed_on
    assert str(context["exception"]) == "a bug"
