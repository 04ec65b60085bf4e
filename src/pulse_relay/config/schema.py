"""The schema of the configuration: one pydantic model per section of the TOML file.

`load.py` builds a `Settings` from the file, the environment and secret files;
the value types that are parsed on the way (file modes, templates, networks) are
in `types.py`. Every key is documented in docs/configuration.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, get_args

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
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from pulse_relay.config.types import (
    DEFAULT_FILE_MODE,
    FilenameTemplateText,
    HttpHeaders,
    HttpUrl,
    Loc,
    Networks,
    OctalMode,
    PublicKeys,
    SigningPrivateKey,
    SigningSecret,
    check_header,
)
from pulse_relay.redaction import REDACTED, URL_SHOWN_MASKED, mask_url
from pulse_relay.store.urls import is_postgres, sqlite_path

ENV_PREFIX = "PULSE_RELAY_"
ENV_WEBHOOK_SECRET = "PULSE_WEBHOOK_SECRET"  # noqa: S105 (a variable name)
ENV_WEBHOOK_PUBLIC_KEYS = "PULSE_WEBHOOK_PUBLIC_KEYS"
ENV_API_KEY = "PULSE_API_KEY"


def invalid(title: str, problems: list[tuple[Loc, str]]) -> ValidationError:
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
    allow_from: Networks = ()
    trusted_proxies: Networks = ()

    @field_validator("path")
    @classmethod
    def _path_is_absolute(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError('must start with "/"')
        return value

    @model_validator(mode="after")
    def _tls_files_come_in_pairs(self) -> ServerSettings:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            given, missing = (
                ("tls_cert_file", "tls_key_file")
                if self.tls_key_file is None
                else ("tls_key_file", "tls_cert_file")
            )
            raise invalid(
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
    # ed25519 keys that verify Standard Webhooks `v1a` signatures, beside the secrets' `v1`.
    public_keys: PublicKeys = Field(default_factory=list)
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
                from pulse_relay.ingress.secret import decode_secret

                try:
                    decode_secret(secret.get_secret_value())
                except ValueError as exc:
                    problems.append((("secrets", index), str(exc)))
        elif self.scheme == "hmac-sha256-hex":
            if self.public_keys:
                problems.append(
                    (("public_keys",), "only the standard scheme verifies v1a signatures")
                )
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
            raise invalid(type(self).__name__, problems)
        return self


class StoreSettings(_Section):
    # sqlite:///abs.db, sqlite:rel.db or postgresql://…; empty means sqlite at `path`.
    # Shown with only its credentials masked: which store is meant stays visible.
    url: Annotated[SecretStr, URL_SHOWN_MASKED] = SecretStr("")
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
    base_url: HttpUrl = "https://api.runpulse.com"
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
    def _base_url_without_slash(cls, value: str) -> str:
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
    # Attempts started per second at most (a token bucket, burst of one second's worth).
    rate_per_second: float | None = Field(default=None, gt=0, allow_inf_nan=False)


class FileSinkSettings(_SinkBase):
    type: Literal["file"]
    directory: Path
    filename: FilenameTemplateText | None = None  # default depends on format
    format: Literal["json", "jsonl"] = "json"
    # Permissions of the files written, set exactly whatever the umask (octal text).
    mode: OctalMode = DEFAULT_FILE_MODE
    timeout_seconds: float = Field(default=30.0, gt=0)


class HttpSinkSettings(_SinkBase):
    type: Literal["http"]
    url: HttpUrl
    headers: HttpHeaders = Field(default_factory=dict)
    timeout_seconds: float = Field(default=10.0, gt=0)
    sign_secret: SigningSecret = None
    # Adds a Standard Webhooks `v1a` (ed25519) entry to webhook-signature.
    sign_private_key: SigningPrivateKey = None


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
SINK_TAGS = frozenset(get_args(sink.model_fields["type"].annotation)[0] for sink in SINK_TYPES)


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
            raise invalid(type(self).__name__, problems)
        return self
