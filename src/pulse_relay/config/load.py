"""Loading the settings: layers, secret files, and validation messages naming each origin.

Where a value comes from, highest precedence first:

1. `overrides` given to `load_settings` (command-line flags), as dotted keys;
2. `PULSE_RELAY_*` environment variables (`__` separates nesting levels; lists
   and tables are JSON);
3. the well-known `PULSE_WEBHOOK_SECRET` (space-separated, for rotation),
   `PULSE_WEBHOOK_PUBLIC_KEYS` (space-separated) and `PULSE_API_KEY`;
4. the TOML file (`path`, else `$PULSE_RELAY_CONFIG`);
5. the defaults of the schema (schema.py).

Tables are merged key by key across these layers; a list (such as `sinks` or
`verify.secrets`) is taken whole from the highest layer that sets it.

Secret files are read after the layers are merged: the secrets in
`verify.secrets_file` are added to `verify.secrets`, the `Name: value` lines of
`verify.required_headers_file` to `verify.required_headers`; `pulse.api_key_file` and
`admin.token_file` are read only when `pulse.api_key` / `admin.token` is empty (a
value given directly wins, so a `PULSE_API_KEY` set for one run does not need the
file to exist).
"""

from __future__ import annotations

import copy
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from pydantic_settings import EnvSettingsSource, SettingsError

from pulse_relay.config.schema import (
    ENV_API_KEY,
    ENV_PREFIX,
    ENV_WEBHOOK_PUBLIC_KEYS,
    ENV_WEBHOOK_SECRET,
    SINK_TAGS,
    Settings,
)
from pulse_relay.config.types import Loc

ENV_CONFIG_PATH = "PULSE_RELAY_CONFIG"
ENV_CREDENTIALS_DIRECTORY = "CREDENTIALS_DIRECTORY"


class ConfigError(Exception):
    """The configuration cannot be used; str() is the user-facing message, one problem per line."""

    def __init__(self, *problems: str) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class _Layer:
    """Values from one source; `origin` describes, for a key it supplied, where it came from."""

    values: dict[str, Any]
    origin: Callable[[Loc], str]


def load_settings(
    path: Path | None = None, *, overrides: Mapping[str, Any] | None = None
) -> Settings:
    """Merge defaults < TOML file < environment < overrides, read secret files, validate.

    Raises ConfigError with one `<key>: <message>` line per problem.
    """
    settings, _origins = load_settings_with_origins(path, overrides=overrides)
    return settings


Origins = Callable[[Loc], str | None]


def load_settings_with_origins(
    path: Path | None = None, *, overrides: Mapping[str, Any] | None = None
) -> tuple[Settings, Origins]:
    """`load_settings`, and where each value came from: `origins(("admin", "host"))` is
    "in relay.toml", "from environment variable PULSE_RELAY_ADMIN__HOST", ... or None for
    a default. For messages about valid settings that cannot work (`check-config`)."""
    if path is None and os.environ.get(ENV_CONFIG_PATH):
        path = Path(os.environ[ENV_CONFIG_PATH])
    layers: list[_Layer] = []
    if path is not None:
        file_origin = f"in {path}"
        layers.append(_Layer(read_toml(path), lambda _loc: file_origin))
    layers.append(_well_known_env_layer())
    layers.append(_prefixed_env_layer())
    if overrides:
        layers.append(_Layer(_nest(overrides), lambda _loc: "from the command line"))
    merged = _merge([layer.values for layer in layers])
    pinned = _read_secret_files(merged)
    try:
        settings = Settings.model_validate(merged)
    except ValidationError as exc:
        # `from None`: the chained error's repr would show the rejected values, secrets included.
        raise ConfigError(*_format_errors(exc, layers, pinned)) from None

    def origins(loc: Loc) -> str | None:
        return _origin(layers, pinned, loc, nearest=False)

    return settings, origins


def read_toml(path: Path) -> dict[str, Any]:
    """The parsed file; ConfigError naming the file (and the line, for syntax errors)."""
    try:
        with path.open("rb") as stream:
            return tomllib.load(stream)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: TOML syntax error: {exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None


# The well-known variables of the verify table, each the list at its key (space-separated).
_WELL_KNOWN_VERIFY_LISTS: dict[tuple[str, str], str] = {
    ("verify", "secrets"): ENV_WEBHOOK_SECRET,
    ("verify", "public_keys"): ENV_WEBHOOK_PUBLIC_KEYS,
}


def _well_known_env_layer() -> _Layer:
    """PULSE_WEBHOOK_SECRET, PULSE_WEBHOOK_PUBLIC_KEYS and PULSE_API_KEY, the names other
    Pulse tools already use."""
    values: dict[str, Any] = {}
    given: list[tuple[Loc, str]] = []
    for (section, key), name in _WELL_KNOWN_VERIFY_LISTS.items():
        words = os.environ.get(name, "").split()
        if words:
            values.setdefault(section, {})[key] = words
            given.append(((section, key), name))
    api_key = os.environ.get(ENV_API_KEY, "").strip()
    if api_key:
        values["pulse"] = {"api_key": api_key}

    def origin(loc: Loc) -> str:
        if loc[:1] != ("verify",):
            return f"from environment variable {ENV_API_KEY}"
        # A problem with the verify table as a whole is blamed on each variable that set part of it.
        names = [name for key, name in given if loc[: len(key)] == key[: len(loc)]]
        plural = "s" if len(names) > 1 else ""
        return f"from environment variable{plural} {' and '.join(names)}"

    return _Layer(values, origin)


def _prefixed_env_layer() -> _Layer:
    """PULSE_RELAY_SECTION__KEY variables, parsed by pydantic-settings (JSON for lists)."""
    try:
        values = EnvSettingsSource(Settings)()
    except SettingsError as exc:
        field = re.search(r'field "(\w+)"', str(exc))
        prefix = ENV_PREFIX + (field.group(1).upper() if field else "")
        culprits = sorted(name for name in os.environ if name.upper().startswith(prefix))
        raise ConfigError(
            f"environment: cannot parse {', '.join(culprits) or prefix + '*'}:"
            " lists and tables must be JSON, e.g."
            f" {ENV_PREFIX}PULSE__FETCH_ON='[\"job.completed\"]'"
        ) from None
    names = {name.upper(): name for name in os.environ}

    def origin(loc: Loc) -> str:
        # The longest key prefix that is a variable: PULSE_RELAY_SINKS holds all of sinks[1].url.
        for length in range(len(loc), 0, -1):
            candidate = ENV_PREFIX + "__".join(str(part) for part in loc[:length]).upper()
            if candidate in names:
                return f"from environment variable {names[candidate]}"
        return "from the environment"

    return _Layer(dict(values), origin)


def _nest(overrides: Mapping[str, Any]) -> dict[str, Any]:
    """{"server.port": 9000} → {"server": {"port": 9000}}; a None value means "not given"."""
    nested: dict[str, Any] = {}
    for dotted, value in overrides.items():
        if value is None:
            continue
        *parents, leaf = dotted.split(".")
        table = nested
        for part in parents:
            table = table.setdefault(part, {})
        table[leaf] = value
    return nested


def _merge(layers: list[dict[str, Any]]) -> dict[str, Any]:
    """Later layers win; tables merge key by key, anything else (lists too) is replaced whole."""
    merged: dict[str, Any] = {}
    for values in layers:
        _merge_into(merged, copy.deepcopy(values))
    return merged


def _merge_into(target: dict[str, Any], values: dict[str, Any]) -> None:
    for key, value in values.items():
        current = target.get(key)
        if isinstance(current, dict) and isinstance(value, dict):
            _merge_into(current, value)
        else:
            target[key] = value


def secret_path(raw: str | os.PathLike[str]) -> Path:
    """A secret file's path: relative ones live in $CREDENTIALS_DIRECTORY (systemd), else cwd."""
    path = Path(raw).expanduser()
    if path.is_absolute():
        return path
    base = os.environ.get(ENV_CREDENTIALS_DIRECTORY)
    return (Path(base) if base else Path.cwd()) / path


def _read_secret_text(key: str, path: Path) -> str:
    """A secret file's text; ConfigError naming the key and path."""
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{key}: cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{key}: {path} is not UTF-8 text") from None


def _read_secret_file(key: str, raw: str | os.PathLike[str]) -> tuple[Path, list[str]]:
    """The whitespace-separated secrets in a file; ConfigError naming the key and path."""
    path = secret_path(raw)
    secrets = _read_secret_text(key, path).split()
    if not secrets:
        raise ConfigError(f"{key}: {path} is empty")
    return path, secrets


def _read_secret_files(merged: dict[str, Any]) -> dict[Loc, str]:
    """Fold secret files into `merged`; return the origin of each value taken from a file.

    Runs before validation so the file's secrets are checked like any other. A value of the
    wrong type is left alone for validation to report.
    """
    pinned: dict[Loc, str] = {}
    verify = merged.get("verify")
    if isinstance(verify, dict):
        _fold_webhook_secrets_file(verify, pinned)
        _fold_required_headers_file(verify, pinned)
    _read_single_secret_file(merged, pinned, "pulse", "api_key")
    _read_single_secret_file(merged, pinned, "admin", "token")
    _read_single_secret_file(merged, pinned, "store", "url")
    return pinned


def _fold_webhook_secrets_file(verify: dict[str, Any], pinned: dict[Loc, str]) -> None:
    """verify.secrets_file's secrets are added to verify.secrets."""
    raw = verify.get("secrets_file")
    if raw == "":
        verify["secrets_file"] = None
    elif isinstance(raw, str | os.PathLike):
        path, from_file = _read_secret_file("verify.secrets_file", raw)
        configured = verify.get("secrets", [])
        if isinstance(configured, str):
            configured = configured.split()
        if isinstance(configured, list):
            added = [secret for secret in from_file if secret not in configured]
            for offset in range(len(added)):
                pinned["verify", "secrets", len(configured) + offset] = f"in {path}"
            verify["secrets"] = [*configured, *added]
            verify["secrets_file"] = str(path)


def _fold_required_headers_file(verify: dict[str, Any], pinned: dict[Loc, str]) -> None:
    """verify.required_headers_file's `Name: value` lines are added to verify.required_headers."""
    key = "verify.required_headers_file"
    raw = verify.get("required_headers_file")
    if raw == "":
        verify["required_headers_file"] = None
        return
    configured = verify.get("required_headers", {})
    if not isinstance(raw, str | os.PathLike) or not isinstance(configured, dict):
        return
    path = secret_path(raw)
    lines = _read_secret_text(key, path).splitlines()
    from_file: dict[str, str] = {}
    for number, line in enumerate(lines, start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, colon, value = line.partition(":")
        if not colon or not name.strip() or not value.strip():
            raise ConfigError(f"{key}: {path} line {number}: expected `Header-Name: value`")
        from_file[name.strip()] = value.strip()
    if not from_file:
        raise ConfigError(f"{key}: {path} is empty")
    given = {name.lower() for name in configured}
    for name in from_file:
        if name.lower() in given:
            raise ConfigError(f"{key}: {path} sets {name}, which verify.required_headers sets too")
        pinned["verify", "required_headers", name] = f"in {path}"
    verify["required_headers"] = {**configured, **from_file}
    verify["required_headers_file"] = str(path)


def _read_single_secret_file(
    merged: dict[str, Any], pinned: dict[Loc, str], section: str, key: str
) -> None:
    """Fill `section.key` from `section.key_file` when the key itself is empty (it wins)."""
    table = merged.get(section)
    if not isinstance(table, dict):
        return
    file_key = f"{key}_file"
    raw = table.get(file_key)
    if raw == "":
        table[file_key] = None
    elif isinstance(raw, str | os.PathLike) and not table.get(key):
        path, from_file = _read_secret_file(f"{section}.{file_key}", raw)
        if len(from_file) > 1:
            raise ConfigError(f"{section}.{file_key}: {path} holds more than one word")
        table[key] = from_file[0]
        table[file_key] = str(path)
        pinned[section, key] = f"in {path}"


# --- error messages --------------------------------------------------------------------------


def _clean_loc(loc: Loc) -> Loc:
    """Drop the tag pydantic inserts after a sink's index: ('sinks', 1, 'http', 'url')."""
    if len(loc) >= 3 and loc[0] == "sinks" and isinstance(loc[1], int) and loc[2] in SINK_TAGS:
        return loc[:2] + loc[3:]
    return loc


def dotted_key(loc: Loc) -> str:
    """('sinks', 1, 'url') → 'sinks[1].url'."""
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text or "configuration"


def _supplies(values: Any, loc: Loc) -> bool:
    """Whether a layer set the value at `loc` (or a list or scalar that contains it)."""
    for part in loc:
        if not isinstance(values, dict):
            # A list is replaced whole, so the layer that set it owns every item.
            return True
        if part not in values:
            return False
        values = values[part]
    return True


def _origin(
    layers: list[_Layer], pinned: dict[Loc, str], loc: Loc, *, nearest: bool = True
) -> str | None:
    """The layer that set the value at `loc`. With `nearest`, a key no layer set (a missing
    secret, say) is blamed on the nearest table that was set; else it is a default (None)."""
    if loc in pinned:
        return pinned[loc]
    shortest = 1 if nearest else len(loc)
    for length in range(len(loc), shortest - 1, -1):
        for layer in reversed(layers):
            if _supplies(layer.values, loc[:length]):
                return layer.origin(loc[:length])
    return None


def _message(error: Mapping[str, Any]) -> str:
    kind = error["type"]
    context = error.get("ctx") or {}
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "missing":
        return "required key is missing"
    if kind == "value_error" and "error" in context:
        return str(context["error"])
    if kind == "union_tag_invalid":
        return f"unknown sink type {context.get('tag')!r} (expected {context.get('expected_tags')})"
    if kind == "union_tag_not_found":
        return "required key is missing (file, http or command)"
    return str(error["msg"])


def _format_errors(exc: ValidationError, layers: list[_Layer], pinned: dict[Loc, str]) -> list[str]:
    lines = []
    for error in exc.errors():
        loc = _clean_loc(tuple(error["loc"]))
        if error["type"] in ("union_tag_invalid", "union_tag_not_found"):
            loc = (*loc, "type")
        line = f"{dotted_key(loc)}: {_message(error)}"
        origin = _origin(layers, pinned, loc)
        lines.append(f"{line} ({origin})" if origin else line)
    return lines
