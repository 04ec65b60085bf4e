"""The floor under `pulse-relay events`: the least that command can do on this stack.

`settings`: import pydantic and pydantic-settings and validate a Settings with the same
sections and fields (plain types, no validators, no secret files) from the TOML file
and the environment. `sqlite`: open the store read-only with the standard library's
sqlite3 and print the newest 50 events as a table. `both`: one, then the other.
`relay`: the lower bound with what `events` cannot shed: click imported and the relay's
own settings (`load_settings`: its validators and parsed types), then `sqlite`.
Run as `python -m bench.cli_floor settings|sqlite|both|relay CONFIG`.
"""

from __future__ import annotations

import sqlite3
import sys
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

EVENTS_SQL = (
    "SELECT id, received_at, source, type, job_id, state FROM events "
    "ORDER BY received_at DESC, id LIMIT 50"
)


def settings(config: Path) -> Path:
    """Validate the floor's Settings (defined here: their import is part of the cost)."""
    from pydantic import BaseModel, ConfigDict, Field, SecretStr
    from pydantic_settings import BaseSettings, SettingsConfigDict

    class Section(BaseModel):
        model_config = ConfigDict(extra="forbid")

    class Server(Section):
        host: str = "127.0.0.1"
        port: int = 8787
        path: str = "/webhooks/pulse"
        max_body_bytes: int = 1_048_576
        read_timeout_seconds: float = 10.0
        shutdown_grace_seconds: float = 10.0
        tls_cert_file: Path | None = None
        tls_key_file: Path | None = None
        allow_from: list[str] = Field(default_factory=list)
        trusted_proxies: list[str] = Field(default_factory=list)

    class Verify(Section):
        scheme: Literal["standard", "hmac-sha256-hex", "none"] = "standard"
        secrets: list[SecretStr] = Field(default_factory=list)
        secrets_file: Path | None = None
        tolerance_seconds: int = 300
        signature_header: str = "X-DocExtract-Signature"
        id_header: str = "X-Webhook-Id"
        required_headers: dict[str, SecretStr] = Field(default_factory=dict)
        required_headers_file: Path | None = None

    class Store(Section):
        url: SecretStr = SecretStr("")
        url_file: Path | None = None
        path: Path = Path("pulse-relay.db")
        synchronous: Literal["FULL", "NORMAL"] = "FULL"
        retention_days: float = 14
        dedupe_days: float = 30
        busy_timeout_seconds: float = 5.0
        pool_size: int = 10

    class Pulse(Section):
        base_url: str = "https://api.runpulse.com"
        api_key: SecretStr = SecretStr("")
        api_key_file: Path | None = None
        timeout_seconds: float = 30.0
        fetch_on: list[str] = Field(default_factory=lambda: ["job.completed", "job.failed"])
        max_result_bytes: int = 268_435_456

    class Poll(Section):
        interval_seconds: float = 5.0
        max_interval_seconds: float = 60.0
        recover_after_seconds: float = 900.0
        concurrency: int = 4

    class Proxy(Section):
        enabled: bool = True
        max_body_bytes: int = 104_857_600
        timeout_seconds: float = 300.0

    class Delivery(Section):
        concurrency: int = 32
        lease_seconds: float | None = None

    class Admin(Section):
        enabled: bool = True
        host: str = "127.0.0.1"
        port: int = 8788
        token: SecretStr = SecretStr("")
        token_file: Path | None = None

    class Log(Section):
        format: Literal["auto", "json", "console"] = "auto"
        level: Literal["debug", "info", "warning", "error"] = "info"

    class SinkBase(Section):
        name: str
        events: list[str] = Field(default_factory=lambda: ["job.*"])
        enabled: bool = True
        max_attempts: int = 10
        retry_initial_seconds: float = 1.0
        retry_max_seconds: float = 600.0
        concurrency: int = 8

    class FileSink(SinkBase):
        type: Literal["file"]
        directory: Path
        filename: str | None = None
        format: Literal["json", "jsonl"] = "json"
        mode: str = "0600"
        timeout_seconds: float = 30.0

    class HttpSink(SinkBase):
        type: Literal["http"]
        url: str
        headers: dict[str, str] = Field(default_factory=dict)
        timeout_seconds: float = 10.0
        sign_secret: SecretStr | None = None

    class CommandSink(SinkBase):
        type: Literal["command"]
        argv: list[str]
        timeout_seconds: float = 60.0
        cwd: Path | None = None
        env: dict[str, str] = Field(default_factory=dict)

    class Settings(BaseSettings):
        model_config = SettingsConfigDict(
            env_prefix="PULSE_RELAY_", env_nested_delimiter="__", extra="forbid"
        )
        server: Server = Server()
        verify: Verify = Verify()
        store: Store = Store()
        pulse: Pulse = Pulse()
        poll: Poll = Poll()
        proxy: Proxy = Proxy()
        delivery: Delivery = Delivery()
        admin: Admin = Admin()
        log: Log = Log()
        sinks: list[Annotated[FileSink | HttpSink | CommandSink, Field(discriminator="type")]] = (
            Field(default_factory=list)
        )

    file: dict[str, Any] = tomllib.loads(config.read_text())
    return Settings(**file).store.path


def relay_settings(config: Path) -> Path:
    """The relay's own settings, loaded as `events` loads them, with click imported."""
    import click  # noqa: F401 (its import is the cost measured)

    from pulse_relay.config import load_settings

    path = load_settings(config).store.sqlite_file
    assert path is not None, "the floor reads a SQLite store"
    return path


def print_events(path: Path) -> None:
    """The newest events, read-only, as aligned columns (the `events` table, less its sinks)."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        rows = [["ID", "RECEIVED", "SOURCE", "TYPE", "JOB", "STATE"]]
        rows += [[str(value or "-") for value in row] for row in db.execute(EVENTS_SQL)]
    finally:
        db.close()
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(value.ljust(width) for value, width in zip(row, widths, strict=True)))


def main(argv: list[str]) -> None:
    mode, config = argv[0], Path(argv[1])
    if mode in ("settings", "both"):
        path = settings(config)
    elif mode == "relay":
        path = relay_settings(config)
    else:
        path = Path(tomllib.loads(config.read_text())["store"]["path"])
    if mode in ("sqlite", "both", "relay"):
        print_events(path)


if __name__ == "__main__":
    main(sys.argv[1:])
