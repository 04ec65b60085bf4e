"""Settings that are valid but risky, or that a running relay must refuse, and secret files.

`check-config` prints these warnings and `serve` logs them at start; see
docs/configuration.md for the keys they name.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic import SecretStr

from pulse_relay.config.load import ConfigError, dotted_key, read_toml, secret_path
from pulse_relay.config.schema import (
    ENV_API_KEY,
    ENV_WEBHOOK_PUBLIC_KEYS,
    ENV_WEBHOOK_SECRET,
    Settings,
)
from pulse_relay.config.types import Loc
from pulse_relay.redaction import REDACTED, mask_url, redacted_settings


def is_loopback_host(host: str) -> bool:
    """Whether `host` is a loopback address: 127.0.0.0/8, ::1 or "localhost"."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def settings_warnings(settings: Settings) -> list[str]:
    """Valid but risky settings, one line each naming the key (check-config and serve show them)."""
    warnings: list[str] = []
    base_url = urlsplit(settings.pulse.base_url)
    if base_url.scheme != "https" and not is_loopback_host(base_url.hostname or ""):
        warnings.append(
            f"pulse.base_url: {mask_url(settings.pulse.base_url)} is not https: the API key"
            " and the job results would cross the network unencrypted"
        )
    return warnings


def mode_warnings(settings: Settings) -> list[str]:
    """What the relay will not do with these settings (verify nothing, take no webhook,
    fetch no job), one line each: `serve` logs them at start, `check-config` prints them."""
    warnings: list[str] = []
    verify = settings.verify
    if verify.scheme == "none":
        warnings.append(
            "SIGNATURE VERIFICATION IS OFF (verify.scheme = none): anyone who can reach "
            "this port can inject events. Use this for local experiments only."
        )
    elif not verify.secrets and not verify.public_keys:
        # The only scheme valid without a secret is the standard one (see VerifySettings).
        warnings.append(
            "polling-only mode: no webhook secret is configured (verify.secrets, "
            f"verify.secrets_file or {ENV_WEBHOOK_SECRET}) nor any public key "
            f"(verify.public_keys or {ENV_WEBHOOK_PUBLIC_KEYS}), so the webhook endpoint "
            "answers 503; watched jobs are polled"
        )
    if not settings.pulse.api_key.get_secret_value():
        warnings.append(
            "pulse.api_key is not set (pulse.api_key, pulse.api_key_file or "
            f"{ENV_API_KEY}): job fetches and polls will fail until it is"
        )
    return warnings


MIN_EXPOSED_TOKEN_CHARS = 16


def admin_exposure_problem(settings: Settings) -> str | None:
    """Why `serve` must not start with this admin listener, or None when it may."""
    admin = settings.admin
    if not admin.enabled or is_loopback_host(admin.host):
        return None
    token = admin.token.get_secret_value()
    if not token:
        return (
            f"admin.token: required when admin.host ({admin.host!r}) is not a loopback address;"
            " set admin.token, admin.token_file or PULSE_RELAY_ADMIN__TOKEN, "
            'or bind the admin listener to "127.0.0.1"'
        )
    if len(token) < MIN_EXPOSED_TOKEN_CHARS:
        # Guessable from the network; `head -c 32 /dev/urandom | base64` gives 44.
        return (
            f"admin.token: at least {MIN_EXPOSED_TOKEN_CHARS} characters are required when "
            f"admin.host ({admin.host!r}) is not a loopback address (it has {len(token)})"
        )
    return None


@dataclass(frozen=True)
class SecretFile:
    """A file that holds secrets of the configuration: `what` it is, and `holds` which."""

    what: str
    path: Path
    holds: str = "a secret"


def secret_files(settings: Settings, config_path: Path | None) -> list[SecretFile]:
    """Each file that holds a secret of this configuration.

    The config file counts when it sets a value `check-config` masks; the secret
    files and the TLS key always count. Paths are resolved as the loader reads them.
    """
    files: list[SecretFile] = []
    if config_path is not None:
        keys = _secret_keys_in_file(config_path, settings)
        if keys:
            files.append(SecretFile("config file", config_path, ", ".join(keys)))
    if settings.server.tls_key_file is not None:
        files.append(SecretFile("server.tls_key_file", settings.server.tls_key_file))
    named = {
        "verify.secrets_file": settings.verify.secrets_file,
        "verify.required_headers_file": settings.verify.required_headers_file,
        "pulse.api_key_file": settings.pulse.api_key_file,
        "admin.token_file": settings.admin.token_file,
        "store.url_file": settings.store.url_file,
    }
    files += [SecretFile(key, secret_path(path)) for key, path in named.items() if path]
    return files


def _secret_keys_in_file(path: Path, settings: Settings) -> list[str]:
    """The keys whose values `redacted_settings` masks and the TOML file at `path` sets."""
    try:
        data = read_toml(path)
    except ConfigError:
        return []
    revealed = _revealed(settings.model_dump())
    masked = redacted_settings(settings)
    return [dotted_key(loc) for loc in _masked_locs(revealed, masked, ()) if _file_sets(data, loc)]


def _revealed(value: Any) -> Any:
    """A `model_dump()` with every secret in clear, to compare with its masked twin."""
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, dict):
        return {key: _revealed(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_revealed(item) for item in value]
    return value


def _masked_locs(revealed: Any, masked: Any, loc: Loc) -> list[Loc]:
    if isinstance(masked, dict) and isinstance(revealed, dict):
        return [
            found
            for key, item in masked.items()
            for found in _masked_locs(revealed.get(key), item, (*loc, key))
        ]
    if isinstance(masked, list) and isinstance(revealed, list):
        return [
            found
            for index, (plain, item) in enumerate(zip(revealed, masked, strict=False))
            for found in _masked_locs(plain, item, (*loc, index))
        ]
    is_masked = isinstance(masked, str) and REDACTED in masked and masked != revealed
    return [loc] if is_masked else []


def _file_sets(data: Any, loc: Loc) -> bool:
    """Whether the file's own data holds a non-empty text at exactly `loc`."""
    for part in loc:
        is_in_table = isinstance(data, dict) and part in data
        is_in_list = isinstance(data, list) and isinstance(part, int) and part < len(data)
        if not (is_in_table or is_in_list):
            return False
        data = data[part]
    return isinstance(data, str) and data != ""
