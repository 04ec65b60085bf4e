"""The configuration: its schema, the parsed value types, loading, and warnings.

`schema` holds the pydantic-settings models, `types` the values parsed once for
the components (file modes, filename templates, networks), `load` the layers
(TOML file, environment, secret files) and the messages naming each value's
origin, `warnings` what is valid but risky. Every key is in docs/configuration.md.
"""

from pulse_relay.config.load import (
    ENV_CONFIG_PATH,
    ENV_CREDENTIALS_DIRECTORY,
    ConfigError,
    Origins,
    load_settings,
    load_settings_with_origins,
)
from pulse_relay.config.schema import (
    DEFAULT_LEASE_SECONDS,
    ENV_API_KEY,
    ENV_PREFIX,
    ENV_WEBHOOK_PUBLIC_KEYS,
    ENV_WEBHOOK_SECRET,
    SINK_TYPES,
    AdminSettings,
    CommandSinkSettings,
    DeliverySettings,
    FileSinkSettings,
    HttpSinkSettings,
    LogSettings,
    PollSettings,
    ProxySettings,
    PulseSettings,
    ServerSettings,
    Settings,
    SinkSettings,
    StoreSettings,
    VerifySettings,
)
from pulse_relay.config.types import Loc
from pulse_relay.config.warnings import (
    MIN_EXPOSED_TOKEN_CHARS,
    SecretFile,
    admin_exposure_problem,
    is_loopback_host,
    mode_warnings,
    secret_files,
    settings_warnings,
)

__all__ = [
    "DEFAULT_LEASE_SECONDS",
    "ENV_API_KEY",
    "ENV_CONFIG_PATH",
    "ENV_CREDENTIALS_DIRECTORY",
    "ENV_PREFIX",
    "ENV_WEBHOOK_PUBLIC_KEYS",
    "ENV_WEBHOOK_SECRET",
    "MIN_EXPOSED_TOKEN_CHARS",
    "SINK_TYPES",
    "AdminSettings",
    "CommandSinkSettings",
    "ConfigError",
    "DeliverySettings",
    "FileSinkSettings",
    "HttpSinkSettings",
    "Loc",
    "LogSettings",
    "Origins",
    "PollSettings",
    "ProxySettings",
    "PulseSettings",
    "SecretFile",
    "ServerSettings",
    "Settings",
    "SinkSettings",
    "StoreSettings",
    "VerifySettings",
    "admin_exposure_problem",
    "is_loopback_host",
    "load_settings",
    "load_settings_with_origins",
    "mode_warnings",
    "secret_files",
    "settings_warnings",
]
