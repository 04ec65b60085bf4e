"""What counts as a secret by its name, the marker shown in its place, and the masked settings.

`check-config` masks configured headers and variables with these names, and the
log pipeline masks any field so named: one list, so the two cannot drift apart.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from pydantic import BaseModel, SecretStr

REDACTED = "**********"

# Any name containing one of these, in any case: DB_PASS, PRIVATE_KEY, STRIPE_KEY,
# X-Hub-Sig. Over-matching only hides a harmless value; under-matching leaks a credential.
_SECRET_NAME = re.compile(
    r"auth|key|token|secret|cookie|pass|credential|session|sig|priv", re.IGNORECASE
)


def is_secret_name(name: str) -> bool:
    """True for a key, header or variable name that may hold a credential."""
    return _SECRET_NAME.search(name) is not None


def mask_url(url: str) -> str:
    """`url` with its user-info, query and fragment (where tokens travel) replaced by the marker.

    Text that is not a URL with a scheme and a host is returned as it is, unless it looks
    like one that cannot be parsed (`postgresql://u:pw@[db`): that is masked whole, as
    the credentials in it cannot be told apart.
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        return REDACTED
    if not parts.scheme or not parts.netloc:
        return url
    _user_info, at, host = parts.netloc.rpartition("@")
    masked = parts._replace(
        netloc=f"{REDACTED}@{host}" if at else host,
        query=REDACTED if parts.query else "",
        fragment=REDACTED if parts.fragment else "",
    )
    return urlunsplit(masked)


class _UrlShownMasked:
    """Field metadata: a secret URL is shown with only its credentials masked, not hidden whole."""


URL_SHOWN_MASKED = _UrlShownMasked()


def redacted_settings(settings: BaseModel) -> dict[str, Any]:
    """The effective configuration as JSON-ready data with every secret masked.

    Every secret field (a `SecretStr`) is masked, a URL-valued one marked
    `URL_SHOWN_MASKED` only in its credentials; in a table of names (a sink's
    headers, a command's environment) the values whose name reads as a secret are
    masked; and every URL, wherever it is (a base URL, a sink's url, a variable or
    an argument), loses its user-info, query and fragment, where tokens travel.
    """
    redacted = _redact_model(settings, settings.model_dump(mode="json"))
    masked: dict[str, Any] = _mask_urls(redacted)
    return masked


def _mask(value: str) -> str:
    """An empty value stays empty so the reader sees it is unset."""
    return REDACTED if value else ""


def _redact_model(model: BaseModel, dumped: Mapping[str, Any]) -> dict[str, Any]:
    fields = type(model).model_fields
    return {
        name: _redact(getattr(model, name), value, URL_SHOWN_MASKED in fields[name].metadata)
        for name, value in dumped.items()
    }


def _redact(value: Any, dumped: Any, is_url_shown: bool = False) -> Any:
    """`dumped` (the JSON dump of `value`) with the secrets in `value` masked."""
    if isinstance(value, SecretStr):
        secret = value.get_secret_value()
        return mask_url(secret) if is_url_shown else _mask(secret)
    if isinstance(value, BaseModel):
        return _redact_model(value, dumped)
    if isinstance(value, Mapping):
        return {
            key: _mask(item)
            if isinstance(item, str) and is_secret_name(key)
            else _redact(item, dumped[key])
            for key, item in value.items()
        }
    if isinstance(value, list | tuple):
        return [_redact(item, part) for item, part in zip(value, dumped, strict=True)]
    return dumped


def _mask_urls(value: Any) -> Any:
    """`value` with every URL inside it (at any depth) masked: user-info, query, fragment."""
    if isinstance(value, str):
        return mask_url(value) if "://" in value else value
    if isinstance(value, dict):
        return {key: _mask_urls(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_mask_urls(item) for item in value]
    return value
