"""Checks of the host: `check-config` and `serve` warn about secrets other users can open."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from bench.certs import CertificateAuthority
from pulse_relay.cli import cli
from tests.helpers import SECRET, Served, config_toml, free_port, relay_config, write_config


def check_config(config: Path) -> Result:
    return CliRunner().invoke(cli, ["--config", str(config), "check-config"])


def write(path: Path, text: str, mode: int) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


def warnings_of(result: Result) -> list[str]:
    """check-config's warnings about files open to others (it also warns of other things)."""
    return [
        line
        for line in result.stderr.splitlines()
        if line.startswith("warning: ") and "open to other users" in line
    ]


@pytest.mark.parametrize("mode", [0o644, 0o604, 0o660 | 0o001])
def test_a_config_file_holding_a_secret_open_to_others_draws_a_warning(
    tmp_path: Path, mode: int
) -> None:
    document = relay_config(tmp_path, pulse={"api_key": "pulse-api-key-value"})
    config = write(tmp_path / "relay.toml", config_toml(**document), mode)

    result = check_config(config)

    assert result.exit_code == 0, result.output
    assert warnings_of(result) == [
        f"warning: config file {config} holds verify.secrets[0], pulse.api_key and is open to"
        f" other users (mode {mode:04o}): chmod o-rwx {config}"
    ]


def test_a_config_file_open_only_to_its_owner_and_group_draws_none(tmp_path: Path) -> None:
    config = write(tmp_path / "relay.toml", config_toml(**relay_config(tmp_path)), 0o640)

    result = check_config(config)

    assert result.exit_code == 0, result.output
    assert warnings_of(result) == []


def test_a_config_file_without_secrets_may_be_world_readable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    document = relay_config(tmp_path)
    del document["verify"]
    config = write(tmp_path / "relay.toml", config_toml(**document), 0o644)
    # The secret comes from the environment, as a systemd unit or a container gives it.
    monkeypatch.setenv("PULSE_WEBHOOK_SECRET", SECRET)

    result = check_config(config)

    assert result.exit_code == 0, result.output
    assert warnings_of(result) == []


@pytest.mark.parametrize(
    ("section", "key", "text"),
    [
        ("verify", "secrets_file", SECRET),
        ("verify", "required_headers_file", "X-Relay-Key: relay-key-value\n"),
        ("pulse", "api_key_file", "pulse-api-key-value"),
        ("admin", "token_file", "an-admin-token-of-some-length"),
        ("store", "url_file", "sqlite:relay.db"),
    ],
)
def test_a_secret_file_open_to_others_draws_a_warning_naming_its_key(
    tmp_path: Path, section: str, key: str, text: str
) -> None:
    secret_file = write(tmp_path / f"{key}.txt", text, 0o644)
    document = relay_config(tmp_path, **{section: {key: str(secret_file)}})
    config = write(tmp_path / "relay.toml", config_toml(**document), 0o600)

    result = check_config(config)

    assert result.exit_code == 0, result.output
    assert warnings_of(result) == [
        f"warning: {section}.{key} {secret_file} holds a secret and is open to"
        f" other users (mode 0644): chmod o-rwx {secret_file}"
    ]
    secret_file.chmod(0o600)
    assert warnings_of(check_config(config)) == []


def test_a_tls_key_open_to_others_draws_a_warning(tmp_path: Path) -> None:
    (tmp_path / "pki").mkdir()
    issued = CertificateAuthority(tmp_path / "pki").issue("relay")
    issued.key_file.chmod(0o644)
    server = {"tls_cert_file": str(issued.cert_file), "tls_key_file": str(issued.key_file)}
    document = relay_config(tmp_path, server=server)
    config = write(tmp_path / "relay.toml", config_toml(**document), 0o600)

    result = check_config(config)

    assert result.exit_code == 0, result.output
    assert warnings_of(result) == [
        f"warning: server.tls_key_file {issued.key_file} holds a secret and is open to"
        f" other users (mode 0644): chmod o-rwx {issued.key_file}"
    ]


def test_serve_logs_the_same_warning_at_start(tmp_path: Path) -> None:
    port = free_port()
    config = write_config(tmp_path, port)
    config.chmod(0o644)

    served = Served.start(config, port, tmp_path / "serve.log")
    try:
        assert served.terminate() == 0
    finally:
        served.kill()

    (line,) = [line for line in served.log_lines() if line["event"] == "secret open to others"]
    assert line["level"] == "warning"
    assert line["detail"] == (
        f"config file {config} holds verify.secrets[0] and is open to"
        f" other users (mode 0644): chmod o-rwx {config}"
    )
