"""Settings: the schema of the TOML file and the environment, loading, and validation.

Where a value comes from, highest precedence first:

1. `overrides` given to `load_settings` (command-line flags), as dotted keys;
2. `PULSE_RELAY_*` environment variables (`__` separates nesting levels; lists
   and tables are JSON);
3. the well-known `PULSE_WEBHOOK_SECRET` (space-separated, for rotation) and
   `PULSE_API_KEY`;
4. the TOML file (`path`, else `$PULSE_RELAY_CONFIG`);
5. the defaults below.

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
import ipaddress
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, get_args
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

from pulse_relay.redaction import REDACTED, is_secret_name, mask_url
from pulse_relay.store.urls import is_postgres, sqlite_path

# The rules of the ingress edge, the signature scheme and the sinks are imported
# in the validators that apply them: each only runs when its field is given, and
# a command that only reads the configuration (`pulse-relay events`) would
# otherwise load those modules, and the sink package behind them, for nothing.

ENV_PREFIX = "PULSE_RELAY_"
ENV_CONFIG_PATH = "PULSE_RELAY_CONFIG"
ENV_WEBHOOK_SECRET = "PULSE_WEBHOOK_SECRET"  # noqa: S105 (a variable name)
ENV_API_KEY = "PULSE_API_KEY"
ENV_CREDENTIALS_DIRECTORY = "CREDENTIALS_DIRECTORY"
DEFAULT_FILE_MODE = "0600"

Loc = tuple[str | int, ...]

_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


class ConfigError(Exception):
    """The configuration cannot be used; str() is the user-facing message, one problem per line."""

    def __init__(self, *problems: str) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def _invalid(title: str, problems: list[tuple[Loc, str]]) -> ValidationError:
    """A ValidationError with one entry per problem, each at its own location."""
    details = [
        InitErrorDetails(
            type=PydanticCustomError("invalid_setting", "{reason}", {"reason": reason}),
            loc=loc,
            # The input may be a secret; pydantic would echo it in repr().
            input=REDACTED,
        )
        for loc, reason in problems
    ]
    return ValidationError.from_exception_data(title, details)


def _check_http_url(url: str) -> None:
    """ValueError unless `url` is http(s) with a host."""
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


def check_header(name: str, value: str) -> None:
    """ValueError unless `name: value` can be one HTTP header line."""
    if _HEADER_NAME.fullmatch(name) is None:
        raise ValueError(f"{name!r} is not a valid header name")
    # A line break would let a config value smuggle extra headers into the request.
    if any(c in value for c in "\r\n\0"):
        raise ValueError(f"header {name!r} contains a line break")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ServerSettings(_Section):
    host: str = "127.0.0.1"
    port: int = Field(default=8787, ge=0, le=65535)
    path: str = "/webhooks/pulse"
    max_body_bytes: int = Field(default=1_048_576, ge=1)
    # A client that has not sent its whole request by then is cut off.
    read_timeout_seconds: float = Field(default=10.0, gt=0)
    shutdown_grace_seconds: float = Field(default=10.0, ge=0)
    # HTTPS on the ingress itself: PEM files, the certificate file may hold the chain.
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    # Who may call (empty: anyone), and which peers' X-Forwarded-For/Forwarded are believed.
    allow_from: list[str] = Field(default_factory=list)
    trusted_proxies: list[str] = Field(default_factory=list)

    @field_validator("path")
    @classmethod
    def _path_is_absolute(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError('must start with "/"')
        return value

    @field_validator("allow_from", "trusted_proxies", mode="before")
    @classmethod
    def _split_network_text(cls, value: object) -> object:
        # `allow_from = "10.0.0.0/8 192.0.2.1"` reads like an environment variable; accept it.
        return value.replace(",", " ").split() if isinstance(value, str) else value

    @field_validator("allow_from", "trusted_proxies")
    @classmethod
    def _networks_parse(cls, value: list[str]) -> list[str]:
        from pulse_relay.ingress.edge import parse_networks

        return [str(network) for network in parse_networks(value)]

    @model_validator(mode="after")
    def _tls_files_come_in_pairs(self) -> ServerSettings:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            given, missing = (
                ("tls_cert_file", "tls_key_file")
                if self.tls_key_file is None
                else ("tls_key_file", "tls_cert_file")
            )
            raise _invalid(
                type(self).__name__, [((missing,), f"required when server.{given} is set")]
            )
        return self

    @property
    def is_tls(self) -> bool:
        """Whether the ingress serves HTTPS."""
        return self.tls_cert_file is not None


class VerifySettings(_Section):
    scheme: Literal["standard", "hmac-sha256-hex", "none"] = "standard"
    secrets: list[SecretStr] = Field(default_factory=list)
    secrets_file: Path | None = None
    tolerance_seconds: int = Field(default=300, ge=1)
    # hmac-sha256-hex only: where the signature and the dedupe id are found.
    signature_header: str = "X-DocExtract-Signature"
    id_header: str = "X-Webhook-Id"
    # Headers every webhook must carry with exactly this value (checked before the body).
    required_headers: dict[str, SecretStr] = Field(default_factory=dict)
    required_headers_file: Path | None = None

    @field_validator("required_headers")
    @classmethod
    def _required_headers_are_sendable(cls, value: dict[str, SecretStr]) -> dict[str, SecretStr]:
        seen: set[str] = set()
        for name, secret in value.items():
            check_header(name, secret.get_secret_value())
            if not secret.get_secret_value().strip():
                raise ValueError(f"header {name!r} has an empty value")
            if name.lower() in seen:
                raise ValueError(f"header {name!r} is given twice")
            seen.add(name.lower())
        # HTTP drops the spaces around a header value: a value is compared without them.
        return {
            name: SecretStr(secret.get_secret_value().strip()) for name, secret in value.items()
        }

    @field_validator("secrets", mode="before")
    @classmethod
    def _split_secret_text(cls, value: object) -> object:
        # `secrets = "whsec_a whsec_b"` reads like PULSE_WEBHOOK_SECRET; accept it the same way.
        return value.split() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _secrets_fit_scheme(self) -> VerifySettings:
        problems: list[tuple[Loc, str]] = []
        if self.scheme == "standard":
            for index, secret in enumerate(self.secrets):
                from pulse_relay.ingress.signature import decode_secret

                try:
                    decode_secret(secret.get_secret_value())
                except ValueError as exc:
                    problems.append((("secrets", index), str(exc)))
        elif self.scheme == "hmac-sha256-hex":
            # The standard scheme without a secret is polling-only mode; this one has no such mode.
            if not self.secrets:
                problems.append(
                    (
                        ("secrets",),
                        "the hmac-sha256-hex scheme needs at least one secret"
                        f" (verify.secrets, verify.secrets_file or {ENV_WEBHOOK_SECRET})",
                    )
                )
            for index, secret in enumerate(self.secrets):
                if not secret.get_secret_value():
                    problems.append((("secrets", index), "secret is empty"))
        if problems:
            raise _invalid(type(self).__name__, problems)
        return self


class StoreSettings(_Section):
    # sqlite:///abs.db, sqlite:rel.db or postgresql://…; empty means sqlite at `path`.
    url: SecretStr = SecretStr("")
    url_file: Path | None = None
    path: Path = Path("pulse-relay.db")
    synchronous: Literal["FULL", "NORMAL"] = "FULL"
    retention_days: float = Field(default=14, gt=0)
    # How long the ids of pruned events stay known after pruning: a replay is still a duplicate.
    dedupe_days: float = Field(default=30, ge=1)
    busy_timeout_seconds: float = Field(default=5.0, gt=0)
    pool_size: int = Field(default=10, ge=2)

    @field_validator("url")
    @classmethod
    def _url_names_a_backend(cls, value: SecretStr) -> SecretStr:
        url = value.get_secret_value()
        if url and not is_postgres(url):
            try:
                if sqlite_path(url) is None:
                    raise ValueError("must start with sqlite: or postgresql://")
            except ValueError as error:
                raise ValueError(f"{error} (got {mask_url(url)!r})") from None
        return value

    @property
    def sqlite_file(self) -> Path | None:
        """The SQLite database file, or None when the store is PostgreSQL."""
        url = self.url.get_secret_value()
        if not url:
            return self.path
        return None if is_postgres(url) else sqlite_path(url)

    @property
    def backend(self) -> str:
        """ "sqlite" or "postgresql"."""
        return "sqlite" if self.sqlite_file is not None else "postgresql"

    @property
    def postgres_url(self) -> str | None:
        """The PostgreSQL URL (password included: never print it), or None for SQLite."""
        url = self.url.get_secret_value()
        return url if url and is_postgres(url) else None


class PulseSettings(_Section):
    base_url: str = "https://api.runpulse.com"
    api_key: SecretStr = SecretStr("")
    api_key_file: Path | None = None
    timeout_seconds: float = Field(default=30.0, gt=0)
    fetch_on: list[str] = Field(
        default_factory=lambda: [
            "job.completed",
            "job.failed",
            "job.cancelled",
            "job.canceled",
            "job.expired",
        ]
    )
    max_result_bytes: int = Field(default=268_435_456, ge=1)

    @field_validator("base_url")
    @classmethod
    def _base_url_is_http(cls, value: str) -> str:
        _check_http_url(value)
        # Request URLs are built as f"{base_url}/job/{id}".
        return value.rstrip("/")


class PollSettings(_Section):
    interval_seconds: float = Field(default=5.0, gt=0)
    max_interval_seconds: float = Field(default=60.0, gt=0)
    recover_after_seconds: float = Field(default=900.0, gt=0)
    concurrency: int = Field(default=4, ge=1)

    @field_validator("max_interval_seconds")
    @classmethod
    def _backoff_does_not_shrink(cls, value: float, info: ValidationInfo) -> float:
        interval_seconds = info.data.get("interval_seconds")
        if interval_seconds is not None and value < interval_seconds:
            raise ValueError(f"must be at least poll.interval_seconds ({interval_seconds:g})")
        return value


class ProxySettings(_Section):
    enabled: bool = True
    max_body_bytes: int = Field(default=104_857_600, ge=1)
    # Silence allowed from either side; a synchronous extract answers only when it is done.
    timeout_seconds: float = Field(default=300.0, gt=0)
    # Requests forwarded at the same time; one more is answered 503 busy at once.
    concurrency: int = Field(default=16, ge=1)


# A claim's lease when delivery.lease_seconds is not set: a SQLite relay takes its
# leases back at start, so its long lease never delays recovery; relays sharing
# PostgreSQL renew theirs while work runs, so a short one bounds a takeover.
DEFAULT_LEASE_SECONDS = {"sqlite": 120.0, "postgresql": 30.0}


class DeliverySettings(_Section):
    concurrency: int = Field(default=32, ge=1)
    lease_seconds: float | None = Field(default=None, gt=0)

    def lease_seconds_for(self, backend: str) -> float:
        """The lease a claim takes on `backend`: the configured one, else its default."""
        return self.lease_seconds or DEFAULT_LEASE_SECONDS[backend]


class AdminSettings(_Section):
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(default=8788, ge=0, le=65535)
    token: SecretStr = SecretStr("")
    token_file: Path | None = None
    # Host names (besides loopback ones) the admin listener answers to; see auth.is_allowed_host.
    allowed_hosts: list[str] = Field(default_factory=list)

    @field_validator("allowed_hosts")
    @classmethod
    def _host_names(cls, value: list[str]) -> list[str]:
        for name in value:
            if not name or any(char in name for char in ":/ []"):
                raise ValueError(f"{name!r} is not a host name (no scheme, port or path)")
        return [name.lower() for name in value]


class LogSettings(_Section):
    format: Literal["auto", "json", "console"] = "auto"
    level: Literal["debug", "info", "warning", "error"] = "info"


class _SinkBase(_Section):
    name: str = Field(min_length=1)
    events: list[str] = Field(default_factory=lambda: ["job.*"])
    enabled: bool = True
    max_attempts: int = Field(default=10, ge=1)
    retry_initial_seconds: float = Field(default=1.0, gt=0)
    retry_max_seconds: float = Field(default=600.0, gt=0)
    concurrency: int = Field(default=8, ge=1)


class FileSinkSettings(_SinkBase):
    type: Literal["file"]
    directory: Path
    filename: str | None = None  # default depends on format
    format: Literal["json", "jsonl"] = "json"
    # Permissions of the files written, set exactly whatever the umask (octal text).
    mode: str = DEFAULT_FILE_MODE
    timeout_seconds: float = Field(default=30.0, gt=0)

    @field_validator("mode", mode="before")
    @classmethod
    def _mode_is_octal_text(cls, value: object) -> object:
        if isinstance(value, int) and not isinstance(value, bool):
            # TOML's 0o600 and a bare 600 both arrive as numbers; only text reads one way.
            raise ValueError('must be a quoted octal string such as "0600"')
        if isinstance(value, str):
            from pulse_relay.sinks.file import parse_file_mode

            parse_file_mode(value)
        return value

    @field_validator("filename")
    @classmethod
    def _filename_stays_inside(cls, value: str | None) -> str | None:
        if value is None:
            return None
        from pulse_relay.sinks.file import parse_filename_template, relative_path_problem

        parse_filename_template(value)
        problem = relative_path_problem(value)
        if problem is not None:
            raise ValueError(problem)
        return value


class HttpSinkSettings(_SinkBase):
    type: Literal["http"]
    url: str
    headers: dict[str, str] = Field(default_factory=dict)
    timeout_seconds: float = Field(default=10.0, gt=0)
    sign_secret: SecretStr | None = None

    @field_validator("url")
    @classmethod
    def _url_is_http(cls, value: str) -> str:
        _check_http_url(value)
        return value

    @field_validator("headers")
    @classmethod
    def _headers_are_sendable(cls, value: dict[str, str]) -> dict[str, str]:
        for name, header_value in value.items():
            check_header(name, header_value)
        return value

    @field_validator("sign_secret")
    @classmethod
    def _sign_secret_decodes(cls, value: SecretStr | None) -> SecretStr | None:
        from pulse_relay.sinks.base import signing_secret

        return None if signing_secret(value) is None else value


class CommandSinkSettings(_SinkBase):
    type: Literal["command"]
    argv: list[str] = Field(min_length=1)
    timeout_seconds: float = Field(default=60.0, gt=0)
    cwd: Path | None = None
    env: dict[str, str] = Field(default_factory=dict)


SinkSettings = Annotated[
    FileSinkSettings | HttpSinkSettings | CommandSinkSettings, Field(discriminator="type")
]
SINK_TYPES: tuple[type[_SinkBase], ...] = (FileSinkSettings, HttpSinkSettings, CommandSinkSettings)
_SINK_TAGS = frozenset(get_args(sink.model_fields["type"].annotation)[0] for sink in SINK_TYPES)


class Settings(BaseSettings):
    """The whole configuration; build it with `load_settings` to read the file and environment."""

    model_config = SettingsConfigDict(
        extra="forbid",
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        case_sensitive=False,
    )

    server: ServerSettings = Field(default_factory=ServerSettings)
    verify: VerifySettings = Field(default_factory=VerifySettings)
    store: StoreSettings = Field(default_factory=StoreSettings)
    pulse: PulseSettings = Field(default_factory=PulseSettings)
    poll: PollSettings = Field(default_factory=PollSettings)
    proxy: ProxySettings = Field(default_factory=ProxySettings)
    delivery: DeliverySettings = Field(default_factory=DeliverySettings)
    admin: AdminSettings = Field(default_factory=AdminSettings)
    log: LogSettings = Field(default_factory=LogSettings)
    sinks: list[SinkSettings] = Field(default_factory=list)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Only the given values: `Settings(...)` never reads the environment behind a test's back.

        `load_settings` layers the file, the environment and the overrides itself, because
        the file path is known only at call time and error messages name each value's origin.
        """
        return (init_settings,)

    @model_validator(mode="after")
    def _sink_names_are_unique(self) -> Settings:
        seen: set[str] = set()
        problems: list[tuple[Loc, str]] = []
        for index, sink in enumerate(self.sinks):
            if sink.name in seen:
                problems.append((("sinks", index, "name"), f'duplicate sink name "{sink.name}"'))
            seen.add(sink.name)
        if problems:
            raise _invalid(type(self).__name__, problems)
        return self


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
    elif not verify.secrets:
        # The only scheme valid without a secret is the standard one (see VerifySettings).
        warnings.append(
            "polling-only mode: no webhook secret is configured (verify.secrets, "
            f"verify.secrets_file or {ENV_WEBHOOK_SECRET}), so the webhook endpoint "
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
    files += [SecretFile(key, _secret_path(path)) for key, path in named.items() if path]
    return files


def _secret_keys_in_file(path: Path, settings: Settings) -> list[str]:
    """The keys whose values `redacted_settings` masks and the TOML file at `path` sets."""
    try:
        data = _read_toml(path)
    except ConfigError:
        return []
    revealed = _revealed(settings.model_dump())
    masked = redacted_settings(settings)
    return [_key(loc) for loc in _masked_locs(revealed, masked, ()) if _file_sets(data, loc)]


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


# --- loading ---------------------------------------------------------------------------------


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
        layers.append(_Layer(_read_toml(path), lambda _loc: file_origin))
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


def _read_toml(path: Path) -> dict[str, Any]:
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


def _well_known_env_layer() -> _Layer:
    """PULSE_WEBHOOK_SECRET and PULSE_API_KEY, the names other Pulse tools already use."""
    values: dict[str, Any] = {}
    secrets = os.environ.get(ENV_WEBHOOK_SECRET, "").split()
    if secrets:
        values["verify"] = {"secrets": secrets}
    api_key = os.environ.get(ENV_API_KEY, "").strip()
    if api_key:
        values["pulse"] = {"api_key": api_key}

    def origin(loc: Loc) -> str:
        name = ENV_WEBHOOK_SECRET if loc[:1] == ("verify",) else ENV_API_KEY
        return f"from environment variable {name}"

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


def _secret_path(raw: str | os.PathLike[str]) -> Path:
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
    path = _secret_path(raw)
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
    path = _secret_path(raw)
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
    if len(loc) >= 3 and loc[0] == "sinks" and isinstance(loc[1], int) and loc[2] in _SINK_TAGS:
        return loc[:2] + loc[3:]
    return loc


def _key(loc: Loc) -> str:
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
        line = f"{_key(loc)}: {_message(error)}"
        origin = _origin(layers, pinned, loc)
        lines.append(f"{line} ({origin})" if origin else line)
    return lines


# --- redaction -------------------------------------------------------------------------------


def _mask(value: str) -> str:
    """An empty value stays empty so the reader sees it is unset."""
    return REDACTED if value else ""


def _mask_urls(value: Any) -> Any:
    """`value` with every URL inside it (at any depth) masked: user-info, query, fragment."""
    if isinstance(value, str):
        return mask_url(value) if "://" in value else value
    if isinstance(value, dict):
        return {key: _mask_urls(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_mask_urls(item) for item in value]
    return value


def _redact_named(values: Mapping[str, str]) -> dict[str, str]:
    return {name: _mask(value) if is_secret_name(name) else value for name, value in values.items()}


def redacted_settings(settings: Settings) -> dict[str, Any]:
    """The effective configuration as JSON-ready data with every secret masked."""
    data: dict[str, Any] = settings.model_dump(mode="json")
    data["verify"]["secrets"] = [_mask(s.get_secret_value()) for s in settings.verify.secrets]
    data["verify"]["required_headers"] = {
        name: _mask(value.get_secret_value())
        for name, value in settings.verify.required_headers.items()
    }
    data["pulse"]["api_key"] = _mask(settings.pulse.api_key.get_secret_value())
    data["admin"]["token"] = _mask(settings.admin.token.get_secret_value())
    # Which store is meant stays visible; only the credentials in the URL are masked.
    data["store"]["url"] = mask_url(settings.store.url.get_secret_value())
    for sink, sink_data in zip(settings.sinks, data["sinks"], strict=True):
        if isinstance(sink, HttpSinkSettings):
            sink_data["headers"] = _redact_named(sink.headers)
            secret = sink.sign_secret
            sink_data["sign_secret"] = None if secret is None else _mask(secret.get_secret_value())
        elif isinstance(sink, CommandSinkSettings):
            sink_data["env"] = _redact_named(sink.env)
    # Every URL, wherever it is (base_url, sink urls, a variable or an argument):
    # tokens travel in user-info and query strings.
    masked: dict[str, Any] = _mask_urls(data)
    return masked
