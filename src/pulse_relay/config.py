"""Settings: the schema of the TOML file and the environment, with validation."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr


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


class VerifySettings(_Section):
    scheme: Literal["standard", "hmac-sha256-hex", "none"] = "standard"
    secrets: list[SecretStr] = Field(default_factory=list)
    secrets_file: Path | None = None
    tolerance_seconds: int = Field(default=300, ge=1)
    # hmac-sha256-hex only: where the signature and the dedupe id are found.
    signature_header: str = "X-DocExtract-Signature"
    id_header: str = "X-Webhook-Id"


class StoreSettings(_Section):
    path: Path = Path("pulse-relay.db")
    synchronous: Literal["FULL", "NORMAL"] = "FULL"
    retention_days: float = Field(default=14, gt=0)
    busy_timeout_seconds: float = Field(default=5.0, gt=0)


class PulseSettings(_Section):
    base_url: str = "https://api.runpulse.com"
    api_key: SecretStr = SecretStr("")
    api_key_file: Path | None = None
    timeout_seconds: float = Field(default=30.0, gt=0)
    fetch_on: list[str] = Field(
        default_factory=lambda: ["job.completed", "job.failed", "job.cancelled", "job.canceled"]
    )
    max_result_bytes: int = Field(default=268_435_456, ge=1)


class PollSettings(_Section):
    interval_seconds: float = Field(default=5.0, gt=0)
    max_interval_seconds: float = Field(default=60.0, gt=0)
    recover_after_seconds: float = Field(default=900.0, gt=0)
    concurrency: int = Field(default=4, ge=1)


class DeliverySettings(_Section):
    concurrency: int = Field(default=16, ge=1)
    lease_seconds: float = Field(default=120.0, gt=0)


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
    concurrency: int = Field(default=4, ge=1)


class FileSinkSettings(_SinkBase):
    type: Literal["file"]
    directory: Path
    filename: str | None = None  # default depends on format
    format: Literal["json", "jsonl"] = "json"
    timeout_seconds: float = Field(default=30.0, gt=0)


class HttpSinkSettings(_SinkBase):
    type: Literal["http"]
    url: str
    headers: dict[str, str] = Field(default_factory=dict)
    timeout_seconds: float = Field(default=10.0, gt=0)
    sign_secret: SecretStr | None = None


class CommandSinkSettings(_SinkBase):
    type: Literal["command"]
    argv: list[str] = Field(min_length=1)
    timeout_seconds: float = Field(default=60.0, gt=0)
    cwd: Path | None = None
    env: dict[str, str] = Field(default_factory=dict)


SinkSettings = Annotated[
    FileSinkSettings | HttpSinkSettings | CommandSinkSettings, Field(discriminator="type")
]


class Settings(_Section):
    server: ServerSettings = Field(default_factory=ServerSettings)
    verify: VerifySettings = Field(default_factory=VerifySettings)
    store: StoreSettings = Field(default_factory=StoreSettings)
    pulse: PulseSettings = Field(default_factory=PulseSettings)
    poll: PollSettings = Field(default_factory=PollSettings)
    delivery: DeliverySettings = Field(default_factory=DeliverySettings)
    log: LogSettings = Field(default_factory=LogSettings)
    sinks: list[SinkSettings] = Field(default_factory=list)
