"""Configuration of the public edge: TLS files, allow_from, trusted_proxies, required headers."""

from __future__ import annotations

from ipaddress import ip_network
from pathlib import Path

import pytest

from pulse_relay.config import ConfigError, load_settings
from pulse_relay.redaction import REDACTED, redacted_settings


def write(tmp_path: Path, text: str) -> Path:
    config = tmp_path / "relay.toml"
    config.write_text(text)
    return config


def problems(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as excinfo:
        load_settings(write(tmp_path, text))
    return str(excinfo.value)


def test_networks_are_normalised(tmp_path: Path) -> None:
    settings = load_settings(
        write(
            tmp_path,
            '[server]\nallow_from = ["192.0.2.7", "2001:db8::/32"]\n'
            'trusted_proxies = "10.0.0.0/8, 127.0.0.1"\n',
        )
    )
    # The ingress receives parsed networks; a dump shows them normalised.
    assert settings.server.allow_from == (ip_network("192.0.2.7/32"), ip_network("2001:db8::/32"))
    assert settings.server.trusted_proxies == (ip_network("10.0.0.0/8"), ip_network("127.0.0.1"))
    dumped = settings.model_dump(mode="json")["server"]
    assert dumped["allow_from"] == ["192.0.2.7/32", "2001:db8::/32"]
    assert dumped["trusted_proxies"] == ["10.0.0.0/8", "127.0.0.1/32"]


def test_networks_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PULSE_RELAY_SERVER__ALLOW_FROM", '["203.0.113.0/24"]')
    assert load_settings().server.allow_from == (ip_network("203.0.113.0/24"),)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (
            '["10.0.0.1/8"]',
            "server.allow_from: '10.0.0.1/8' has host bits set (did you mean 10.0.0.0/8?)",
        ),
        ('["10.0.0.0/8", "nope"]', "server.allow_from: 'nope' is not an IP address or CIDR block"),
    ],
)
def test_a_bad_network_names_the_key(tmp_path: Path, value: str, message: str) -> None:
    assert message in problems(tmp_path, f"[server]\nallow_from = {value}\n")


def test_required_headers_are_secrets(tmp_path: Path) -> None:
    settings = load_settings(
        write(tmp_path, '[verify]\nrequired_headers = { X-Relay-Token = " t0ken " }\n')
    )
    assert settings.verify.required_headers["X-Relay-Token"].get_secret_value() == "t0ken"
    assert "t0ken" not in repr(settings)
    shown = redacted_settings(settings)["verify"]["required_headers"]
    assert shown == {"X-Relay-Token": REDACTED}


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ('{ "X Token" = "a" }', "'X Token' is not a valid header name"),
        ('{ X-Token = "a\\r\\nX-Evil: 1" }', "header 'X-Token' contains a line break"),
        ('{ X-Token = " " }', "header 'X-Token' has an empty value"),
        ('{ X-Token = "a", x-token = "b" }', "header 'x-token' is given twice"),
    ],
)
def test_bad_required_headers_are_refused(tmp_path: Path, table: str, message: str) -> None:
    assert message in problems(tmp_path, f"[verify]\nrequired_headers = {table}\n")


def test_required_headers_file_adds_its_lines(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "headers").write_text("# from the Svix endpoint\n\nX-Relay-Token: a:b c\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(credentials))
    settings = load_settings(
        write(
            tmp_path,
            '[verify]\nrequired_headers = { X-Other = "o" }\nrequired_headers_file = "headers"\n',
        )
    )
    values = {k: v.get_secret_value() for k, v in settings.verify.required_headers.items()}
    assert values == {"X-Other": "o", "X-Relay-Token": "a:b c"}
    assert settings.verify.required_headers_file == credentials / "headers"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("no colon here\n", "line 1: expected `Header-Name: value`"),
        ("X-Token:\n", "line 1: expected `Header-Name: value`"),
        ("# only a comment\n", "is empty"),
        ("X-Other: again\n", "sets X-Other, which verify.required_headers sets too"),
        ("Bad Name: v\n", "'Bad Name' is not a valid header name"),
    ],
)
def test_a_bad_required_headers_file_is_refused(tmp_path: Path, content: str, message: str) -> None:
    (tmp_path / "headers").write_text(content)
    text = (
        f'[verify]\nrequired_headers = {{ X-Other = "o" }}\n'
        f'required_headers_file = "{tmp_path / "headers"}"\n'
    )
    assert message in problems(tmp_path, text)


def test_a_missing_required_headers_file_is_refused(tmp_path: Path) -> None:
    text = f'[verify]\nrequired_headers_file = "{tmp_path / "absent"}"\n'
    assert "verify.required_headers_file: cannot read" in problems(tmp_path, text)
