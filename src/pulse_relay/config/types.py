"""Parsed values of the configuration: checked once here, handed to the components parsed.

Each `Annotated` alias below is the type of a field of the schema (schema.py). The
text from the TOML file or the environment is validated and parsed when the settings
are loaded, and the component receives the result: the file sink gets a file mode's
bits and a filename template's pieces, the ingress gets its networks. No component
parses a setting again, and the configuration imports no component to check one.
A dump (`check-config`) shows each value as the operator wrote it.

The rules of the ingress edge and of the signature scheme are imported in the
validators that apply them: each only runs when its field is given, and a command
that only reads the configuration (`pulse-relay events`) would otherwise load those
modules for nothing.
"""

from __future__ import annotations

import ipaddress
import re
import string
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import PurePosixPath, PureWindowsPath
from typing import TYPE_CHECKING, Annotated, Any
from urllib.parse import urlsplit

from pydantic import AfterValidator, BeforeValidator, GetCoreSchemaHandler, SecretStr
from pydantic_core import CoreSchema, core_schema

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (
        Ed25519PrivateKey,
        Ed25519PublicKey,
    )

# Where a value sits in the settings: ("sinks", 1, "url") is sinks[1].url.
Loc = tuple[str | int, ...]

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

TEMPLATE_FIELDS = frozenset({"id", "type", "job_id", "date"})

_FILE_MODE = re.compile(r"0?[0-7]{3}")
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


@dataclass(frozen=True)
class _ParsedFrom:
    """Field metadata: validate the input as `source` (pydantic's own messages for a wrong
    type), then `parse` it; a dump shows the value as `show` gives it back."""

    source: Any
    parse: Callable[[Any], Any]
    show: Callable[[Any], Any]

    def __get_pydantic_core_schema__(
        self, _annotation: Any, handler: GetCoreSchemaHandler
    ) -> CoreSchema:
        return core_schema.chain_schema(
            [
                handler.generate_schema(self.source),
                core_schema.no_info_plain_validator_function(self.parse),
            ],
            serialization=core_schema.plain_serializer_function_ser_schema(self.show),
        )


# --- file modes ------------------------------------------------------------------------------


@dataclass(frozen=True)
class FileMode:
    """Permission bits given as octal text ("0600"); `text` is kept to be shown as written."""

    text: str
    bits: int


def parse_file_mode(text: str) -> FileMode:
    """The permission bits of an octal `mode` string ("0600", "640"); ValueError says why not."""
    if _FILE_MODE.fullmatch(text) is None:
        raise ValueError(f'{text!r} is not an octal permission mode such as "0600" or "0640"')
    bits = int(text, 8)
    # The relay reads back what it wrote (the newer-event check, a torn jsonl line).
    if bits & 0o600 != 0o600:
        raise ValueError(f'"{text}" must let the owner read and write (e.g. "0600")')
    return FileMode(text, bits)


def _refuse_number(value: object) -> object:
    if isinstance(value, int) and not isinstance(value, bool):
        # TOML's 0o600 and a bare 600 both arrive as numbers; only text reads one way.
        raise ValueError('must be a quoted octal string such as "0600"')
    return value


OctalMode = Annotated[
    FileMode,
    _ParsedFrom(str, parse_file_mode, lambda mode: mode.text),
    BeforeValidator(_refuse_number),
]
DEFAULT_FILE_MODE = parse_file_mode("0600")


# --- filename templates ----------------------------------------------------------------------


@dataclass(frozen=True)
class TemplatePiece:
    """Literal text, then the field whose (encoded) value follows it, if any."""

    literal: str
    field: str | None


@dataclass(frozen=True)
class FilenameTemplate:
    """A file sink's file name: `text` as written, `pieces` to render it."""

    text: str
    pieces: tuple[TemplatePiece, ...]

    @property
    def fields(self) -> frozenset[str]:
        """The fields the template uses."""
        return frozenset(piece.field for piece in self.pieces if piece.field is not None)


def relative_path_problem(relative: str) -> str | None:
    """Why `relative` (a template or a rendered name) could leave the sink directory, or None."""
    if PurePosixPath(relative).is_absolute() or PureWindowsPath(relative).is_absolute():
        return "must be relative to the sink directory"
    if ".." in re.split(r"[/\\]", relative):
        return 'must not contain ".." components'
    return None


def parse_filename_template(template: str) -> FilenameTemplate:
    """The template split into literal text and fields; ValueError says what is wrong."""
    if not template.strip():
        raise ValueError("must not be empty")
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ValueError(f"not a valid template: {exc}") from None
    pieces: list[TemplatePiece] = []
    for literal, field_name, format_spec, conversion in parsed:
        if field_name is None:
            pieces.append(TemplatePiece(literal, None))
            continue
        # Only bare names: `{id.__class__}` or `{id!r:>9}` would let a template
        # reach into objects or pad names in surprising ways.
        if field_name not in TEMPLATE_FIELDS or format_spec or conversion:
            allowed = ", ".join("{" + name + "}" for name in sorted(TEMPLATE_FIELDS))
            raise ValueError(f"unknown template field {{{field_name}}} (allowed: {allowed})")
        pieces.append(TemplatePiece(literal, field_name))
    problem = relative_path_problem(template)
    if problem is not None:
        raise ValueError(problem)
    return FilenameTemplate(template, tuple(pieces))


FilenameTemplateText = Annotated[
    FilenameTemplate, _ParsedFrom(str, parse_filename_template, lambda template: template.text)
]


# --- networks --------------------------------------------------------------------------------


def _split_network_text(value: object) -> object:
    # `allow_from = "10.0.0.0/8 192.0.2.1"` reads like an environment variable; accept it.
    return value.replace(",", " ").split() if isinstance(value, str) else value


def _parse_networks(texts: list[str]) -> tuple[IPNetwork, ...]:
    from pulse_relay.ingress.edge import parse_networks

    return parse_networks(texts)


# Addresses and CIDR blocks, as a list or as one space- or comma-separated text.
Networks = Annotated[
    tuple[IPNetwork, ...],
    _ParsedFrom(list[str], _parse_networks, lambda networks: [str(n) for n in networks]),
    BeforeValidator(_split_network_text),
]


# --- URLs, headers and signing secrets -------------------------------------------------------


def check_http_url(url: str) -> str:
    """`url`, or ValueError unless it is http(s) with a host."""
    problem = "not a valid URL (expected http:// or https:// and a host)"
    try:
        parts = urlsplit(url)
        _ = parts.port  # a port that is not a number raises here
    except ValueError:
        raise ValueError(problem) from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(problem)
    if any(c.isspace() for c in url):
        raise ValueError(problem)
    return url


HttpUrl = Annotated[str, AfterValidator(check_http_url)]


def check_header(name: str, value: str) -> None:
    """ValueError unless `name: value` can be one HTTP header line."""
    if _HEADER_NAME.fullmatch(name) is None:
        raise ValueError(f"{name!r} is not a valid header name")
    # A line break would let a config value smuggle extra headers into the request.
    if any(c in value for c in "\r\n\0"):
        raise ValueError(f"header {name!r} contains a line break")


def _sendable_headers(headers: dict[str, str]) -> dict[str, str]:
    for name, value in headers.items():
        check_header(name, value)
    return headers


# Headers a request carries as they are: each checked to be one header line.
HttpHeaders = Annotated[dict[str, str], AfterValidator(_sendable_headers)]


def _usable_signing_secret(secret: SecretStr | None) -> SecretStr | None:
    """None for an unset or empty secret; ValueError for one the signature scheme cannot use."""
    if secret is None or not secret.get_secret_value():
        return None
    from pulse_relay.ingress.secret import decode_secret

    decode_secret(secret.get_secret_value())
    return secret


# A Standard Webhooks secret to sign with (whsec_ and base64); empty means none.
SigningSecret = Annotated[SecretStr | None, AfterValidator(_usable_signing_secret)]


# --- ed25519 keys (Standard Webhooks v1a) ------------------------------------------------------


@dataclass(frozen=True)
class PublicKey:
    """A `whpk_` key verifying `v1a` signatures; `text` is kept to be shown as written."""

    text: str
    # Two keys are the same when their text is: the parsed object adds nothing to compare.
    key: Ed25519PublicKey = field(repr=False, compare=False)


def _parse_public_key(text: str) -> PublicKey:
    from pulse_relay.ingress.ed25519 import decode_public_key

    return PublicKey(text.strip(), decode_public_key(text))


def _split_key_text(value: object) -> object:
    # `public_keys = "whpk_a whpk_b"` reads like PULSE_WEBHOOK_PUBLIC_KEYS; accept it the same way.
    return value.split() if isinstance(value, str) else value


# `whpk_` public keys, as a list or as one space-separated text.
PublicKeys = Annotated[
    list[Annotated[PublicKey, _ParsedFrom(str, _parse_public_key, lambda key: key.text)]],
    BeforeValidator(_split_key_text),
]


class PrivateKey(SecretStr):
    """A `whsk_` private key to sign `v1a` entries with: a secret, so masked wherever one is
    (check-config, logs), and handed to the HTTP sink parsed as `key`."""

    def __init__(self, text: str, key: Ed25519PrivateKey) -> None:
        super().__init__(text)
        self.key = key


def _parse_private_key(secret: SecretStr | None) -> PrivateKey | None:
    text = "" if secret is None else secret.get_secret_value().strip()
    if not text:
        return None
    from pulse_relay.ingress.ed25519 import decode_private_key

    return PrivateKey(text, decode_private_key(text))


# A `whsk_` private key (Svix's format: base64 of the private then the public half); empty
# means none. Shown as a SecretStr is: masked.
SigningPrivateKey = Annotated[
    PrivateKey | None, _ParsedFrom(SecretStr | None, _parse_private_key, lambda key: key)
]
