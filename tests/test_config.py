"""Loading, layering, validation messages and redaction of the configuration."""

from __future__ import annotations

import base64
import json
import os
import re
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, TypeAdapter

from pulse_relay.config import (
    SINK_TYPES,
    CommandSinkSettings,
    ConfigError,
    FileSinkSettings,
    HttpSinkSettings,
    Settings,
    SinkSettings,
    load_settings,
    settings_warnings,
)
from pulse_relay.redaction import REDACTED, mask_url, redacted_settings
from tests.helpers import config_toml, settings_keys

EXAMPLE = Path(__file__).resolve().parent.parent / "config.example.toml"
SECTIONS = [name for name in Settings.model_fields if name != "sinks"]

WriteConfig = Callable[..., Path]


def make_secret(seed: int) -> str:
    """A valid Standard Webhooks secret, different for every seed."""
    return "whsec_" + base64.b64encode(bytes([seed]) * 24).decode()


SECRET_A = make_secret(1)
SECRET_B = make_secret(2)
SECRET_C = make_secret(3)


def file_sink(name: str, **options: Any) -> dict[str, Any]:
    """A file sink writing to ./out."""
    return {"name": name, "type": "file", "directory": "out", **options}


def http_sink(name: str, **options: Any) -> dict[str, Any]:
    """An HTTP sink posting to http://x unless `url` says otherwise."""
    return {"name": name, "type": "http", "url": "http://x", **options}


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No PULSE_* or CREDENTIALS_DIRECTORY from the developer's shell; cwd is a fresh folder."""
    for name in list(os.environ):
        if name.upper().startswith("PULSE_") or name == "CREDENTIALS_DIRECTORY":
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def write_config(tmp_path: Path) -> WriteConfig:
    """Write these sections (or, for a syntax error, this text) to a fresh TOML file."""
    counter = iter(range(1_000))

    def write(text: str | None = None, **sections: Any) -> Path:
        path = tmp_path / f"config-{next(counter)}.toml"
        path.write_text(config_toml(**sections) if text is None else text, encoding="utf-8")
        return path

    return write


def config_error(path: Path | None = None, **kwargs: Any) -> str:
    """The message of the ConfigError that loading raises."""
    with pytest.raises(ConfigError) as caught:
        load_settings(path, **kwargs)
    return str(caught.value)


# --- config.example.toml -------------------------------------------------------------------


ALL_KEYS = settings_keys()


def test_all_keys_walk_reaches_nested_fields() -> None:
    assert "server.port" in ALL_KEYS
    assert "verify.secrets_file" in ALL_KEYS
    assert "sinks.sign_secret" in ALL_KEYS
    assert "sinks.argv" in ALL_KEYS
    assert "sinks.filename" in ALL_KEYS


@pytest.mark.parametrize("key", ALL_KEYS)
def test_every_key_is_documented_in_example(key: str) -> None:
    name = key.rpartition(".")[2]
    text = EXAMPLE.read_text(encoding="utf-8")
    assert re.search(rf"^\s*#?\s*{re.escape(name)}\s*=", text, re.MULTILINE), (
        f"{key} is not documented in config.example.toml"
    )


def uncommented_example() -> dict[str, Any]:
    """The example with every commented `key = value` and `[[sinks]]` line switched on."""
    lines = []
    for line in EXAMPLE.read_text(encoding="utf-8").splitlines():
        switched_on = re.fullmatch(r"#\s?(\[\[sinks\]\]|[a-z_]+\s*=.*)", line)
        lines.append(switched_on.group(1) if switched_on else line)
    return tomllib.loads("\n".join(lines))


def test_example_documents_every_key_in_its_own_section() -> None:
    document = uncommented_example()
    for section in SECTIONS:
        section_model = Settings.model_fields[section].annotation
        assert isinstance(section_model, type)
        assert issubclass(section_model, BaseModel)
        assert set(document[section]) == set(section_model.model_fields), section
    # Keys common to every sink type are documented once, on the first sink.
    common = set.intersection(*(set(sink.model_fields) for sink in SINK_TYPES))
    assert common <= set(document["sinks"][0])
    for sink_model in SINK_TYPES:
        tag = sink_model.model_fields["type"].annotation.__args__[0]  # type: ignore[union-attr]
        tables = [sink for sink in document["sinks"] if sink["type"] == tag]
        assert len(tables) == 1, tag
        assert set(tables[0]) <= set(sink_model.model_fields), tag
        assert set(tables[0]) | common == set(sink_model.model_fields), tag


def test_example_sinks_are_valid_when_switched_on() -> None:
    adapter: TypeAdapter[Any] = TypeAdapter(SinkSettings)
    sinks = [adapter.validate_python(table) for table in uncommented_example()["sinks"]]
    assert [type(sink) for sink in sinks] == [
        FileSinkSettings,
        HttpSinkSettings,
        CommandSinkSettings,
    ]


def test_example_loads_without_environment() -> None:
    settings = load_settings(EXAMPLE)
    assert len(settings.sinks) == 1
    sink = settings.sinks[0]
    assert isinstance(sink, FileSinkSettings)
    assert sink.name == "results"
    assert sink.directory == Path("results")


def test_example_shows_the_defaults() -> None:
    loaded = load_settings(EXAMPLE)
    defaults = Settings()
    for section in SECTIONS:
        assert getattr(loaded, section) == getattr(defaults, section), section
    sink = loaded.sinks[0]
    default_sink = FileSinkSettings(name=sink.name, type="file", directory=Path("results"))
    assert sink == default_sink


# --- sources and precedence ------------------------------------------------------------------


def test_no_file_gives_defaults() -> None:
    settings = load_settings()
    assert settings == Settings()
    assert settings.server.port == 8787
    assert settings.store.path == Path("pulse-relay.db")
    assert settings.verify.secrets == []
    assert settings.sinks == []


def test_settings_constructor_ignores_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PULSE_RELAY_SERVER__PORT", "9000")
    assert Settings().server.port == 8787
    assert load_settings().server.port == 9000


def test_file_values_are_read(write_config: WriteConfig) -> None:
    path = write_config(server={"port": 9001}, log={"level": "debug"})
    settings = load_settings(path)
    assert settings.server.port == 9001
    assert settings.log.level == "debug"
    assert settings.server.host == "127.0.0.1"


def test_config_path_from_environment(
    monkeypatch: pytest.MonkeyPatch, write_config: WriteConfig
) -> None:
    monkeypatch.setenv("PULSE_RELAY_CONFIG", str(write_config(server={"port": 9004})))
    assert load_settings().server.port == 9004


def test_explicit_path_beats_config_path_variable(
    monkeypatch: pytest.MonkeyPatch, write_config: WriteConfig
) -> None:
    monkeypatch.setenv("PULSE_RELAY_CONFIG", str(write_config(server={"port": 9004})))
    assert load_settings(write_config(server={"port": 9005})).server.port == 9005


def test_missing_file_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.toml"
    assert config_error(missing) == f"config file not found: {missing}"


def test_missing_file_from_config_path_variable_is_named(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    missing = tmp_path / "gone.toml"
    monkeypatch.setenv("PULSE_RELAY_CONFIG", str(missing))
    assert str(missing) in config_error()


def test_environment_beats_file(monkeypatch: pytest.MonkeyPatch, write_config: WriteConfig) -> None:
    path = write_config(server={"port": 9001, "host": "0.0.0.0"})
    monkeypatch.setenv("PULSE_RELAY_SERVER__PORT", "9002")
    settings = load_settings(path)
    assert settings.server.port == 9002
    # The rest of the table still comes from the file.
    assert settings.server.host == "0.0.0.0"


def test_overrides_beat_environment(
    monkeypatch: pytest.MonkeyPatch, write_config: WriteConfig
) -> None:
    path = write_config(server={"port": 9001})
    monkeypatch.setenv("PULSE_RELAY_SERVER__PORT", "9002")
    monkeypatch.setenv("PULSE_RELAY_LOG__LEVEL", "warning")
    settings = load_settings(path, overrides={"server.port": 9003, "log.level": None})
    assert settings.server.port == 9003
    # None stands for a flag that was not given.
    assert settings.log.level == "warning"


def test_nested_environment_variables(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PULSE_RELAY_STORE__PATH", str(tmp_path / "state.db"))
    monkeypatch.setenv("PULSE_RELAY_PULSE__FETCH_ON", '["job.completed"]')
    monkeypatch.setenv("PULSE_RELAY_VERIFY__SCHEME", "none")
    settings = load_settings()
    assert settings.store.path == tmp_path / "state.db"
    assert settings.pulse.fetch_on == ["job.completed"]
    assert settings.verify.scheme == "none"


def test_environment_list_replaces_file_list(
    monkeypatch: pytest.MonkeyPatch, write_config: WriteConfig
) -> None:
    path = write_config(sinks=[file_sink("from-file")])
    monkeypatch.setenv(
        "PULSE_RELAY_SINKS", '[{"name": "from-env", "type": "command", "argv": ["true"]}]'
    )
    settings = load_settings(path)
    assert [sink.name for sink in settings.sinks] == ["from-env"]
    assert isinstance(settings.sinks[0], CommandSinkSettings)


def test_environment_list_that_is_not_json_names_the_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PULSE_RELAY_PULSE__FETCH_ON", "job.completed")
    message = config_error()
    assert "PULSE_RELAY_PULSE__FETCH_ON" in message
    assert "JSON" in message


def test_webhook_secret_variable_is_space_separated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PULSE_WEBHOOK_SECRET", f"{SECRET_A}  {SECRET_B}")
    secrets = [s.get_secret_value() for s in load_settings().verify.secrets]
    assert secrets == [SECRET_A, SECRET_B]


def test_webhook_secret_variable_beats_file(
    monkeypatch: pytest.MonkeyPatch, write_config: WriteConfig
) -> None:
    path = write_config(verify={"secrets": [SECRET_A]})
    monkeypatch.setenv("PULSE_WEBHOOK_SECRET", SECRET_B)
    assert [s.get_secret_value() for s in load_settings(path).verify.secrets] == [SECRET_B]


def test_prefixed_variable_beats_well_known_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PULSE_API_KEY", "well-known")
    monkeypatch.setenv("PULSE_RELAY_PULSE__API_KEY", "prefixed")
    assert load_settings().pulse.api_key.get_secret_value() == "prefixed"


def test_api_key_variable(monkeypatch: pytest.MonkeyPatch, write_config: WriteConfig) -> None:
    monkeypatch.setenv("PULSE_API_KEY", "key-from-env")
    path = write_config(pulse={"api_key": "key-from-file"})
    assert load_settings(path).pulse.api_key.get_secret_value() == "key-from-env"


def test_secrets_string_in_file_is_split(write_config: WriteConfig) -> None:
    path = write_config(verify={"secrets": f"{SECRET_A} {SECRET_B}"})
    assert [s.get_secret_value() for s in load_settings(path).verify.secrets] == [
        SECRET_A,
        SECRET_B,
    ]


# --- secret files ----------------------------------------------------------------------------


def test_secrets_file_adds_to_configured_secrets(tmp_path: Path, write_config: WriteConfig) -> None:
    secret_file = tmp_path / "webhook-secret"
    secret_file.write_text(f"{SECRET_B}\n{SECRET_C}\n{SECRET_A}\n", encoding="utf-8")
    path = write_config(verify={"secrets": [SECRET_A], "secrets_file": str(secret_file)})
    settings = load_settings(path)
    assert [s.get_secret_value() for s in settings.verify.secrets] == [
        SECRET_A,
        SECRET_B,
        SECRET_C,
    ]
    assert settings.verify.secrets_file == secret_file


def test_relative_secret_files_are_found_in_credentials_directory(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, write_config: WriteConfig
) -> None:
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "webhook-secret").write_text(SECRET_A, encoding="utf-8")
    (credentials / "pulse-api-key").write_text("key-from-credential\n", encoding="utf-8")
    # Same names in cwd, to prove the credentials directory is the one used.
    (tmp_path / "webhook-secret").write_text(SECRET_B, encoding="utf-8")
    (tmp_path / "pulse-api-key").write_text("key-from-cwd", encoding="utf-8")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(credentials))
    path = write_config(
        verify={"secrets_file": "webhook-secret"}, pulse={"api_key_file": "pulse-api-key"}
    )
    settings = load_settings(path)
    assert [s.get_secret_value() for s in settings.verify.secrets] == [SECRET_A]
    assert settings.pulse.api_key.get_secret_value() == "key-from-credential"
    assert settings.pulse.api_key_file == credentials / "pulse-api-key"


def test_relative_secret_files_are_found_in_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "webhook-secret").write_text(f"{SECRET_B} {SECRET_C}", encoding="utf-8")
    monkeypatch.setenv("PULSE_RELAY_VERIFY__SECRETS_FILE", "webhook-secret")
    secrets = [s.get_secret_value() for s in load_settings().verify.secrets]
    assert secrets == [SECRET_B, SECRET_C]


def test_api_key_file_is_read_only_when_api_key_is_empty(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, write_config: WriteConfig
) -> None:
    (tmp_path / "pulse-api-key").write_text("key-from-file", encoding="utf-8")
    path = write_config(pulse={"api_key_file": "pulse-api-key"})
    assert load_settings(path).pulse.api_key.get_secret_value() == "key-from-file"
    monkeypatch.setenv("PULSE_API_KEY", "key-from-env")
    assert load_settings(path).pulse.api_key.get_secret_value() == "key-from-env"


def test_api_key_file_not_needed_when_api_key_given(
    monkeypatch: pytest.MonkeyPatch, write_config: WriteConfig
) -> None:
    path = write_config(pulse={"api_key_file": "/nonexistent/pulse-api-key"})
    monkeypatch.setenv("PULSE_API_KEY", "key-from-env")
    assert load_settings(path).pulse.api_key.get_secret_value() == "key-from-env"


def test_missing_secrets_file_names_key_and_path(tmp_path: Path, write_config: WriteConfig) -> None:
    path = write_config(verify={"secrets_file": "absent-secret"})
    message = config_error(path)
    assert message.startswith("verify.secrets_file: cannot read ")
    assert str(tmp_path / "absent-secret") in message


def test_missing_api_key_file_names_key_and_path(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(credentials))
    message = config_error(overrides={"pulse.api_key_file": "pulse-api-key"})
    assert message.startswith("pulse.api_key_file: cannot read ")
    assert str(credentials / "pulse-api-key") in message


def test_empty_secrets_file_is_an_error(tmp_path: Path, write_config: WriteConfig) -> None:
    (tmp_path / "webhook-secret").write_text("\n", encoding="utf-8")
    path = write_config(verify={"secrets_file": "webhook-secret"})
    assert config_error(path) == f"verify.secrets_file: {tmp_path / 'webhook-secret'} is empty"


def test_bad_secret_in_secrets_file_points_at_the_file(
    tmp_path: Path, write_config: WriteConfig
) -> None:
    secret_file = tmp_path / "webhook-secret"
    secret_file.write_text("not*base64", encoding="utf-8")
    path = write_config(verify={"secrets": [SECRET_A], "secrets_file": "webhook-secret"})
    assert config_error(path) == (
        "verify.secrets[1]: secret is not valid base64 (expected whsec_ followed by base64)"
        f" (in {secret_file})"
    )


# --- validation messages ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sections", "expected"),
    [
        pytest.param(
            {"verify": {"secrets": ["whsec_not*base64"]}},
            "verify.secrets[0]: secret is not valid base64 (expected whsec_ followed by base64)",
            id="bad-secret",
        ),
        pytest.param(
            {"verify": {"secrets": [SECRET_A, "whsec_YWJj"]}},
            "verify.secrets[1]: secret decodes to 3 bytes; at least 16 needed",
            id="short-secret",
        ),
        pytest.param(
            {"verify": {"scheme": "hmac-sha256-hex"}},
            "verify.secrets: the hmac-sha256-hex scheme needs at least one secret",
            id="hmac-without-secret",
        ),
        pytest.param(
            {"sinks": [file_sink("x"), file_sink("y"), file_sink("x")]},
            'sinks[2].name: duplicate sink name "x"',
            id="duplicate-sink",
        ),
        pytest.param(
            {"sinks": [file_sink("a"), http_sink("b", url="ftp://example.com/x")]},
            "sinks[1].url: not a valid URL",
            id="sink-url-scheme",
        ),
        pytest.param(
            {"sinks": [http_sink("b", url="http:///path")]},
            "sinks[0].url: not a valid URL",
            id="sink-url-no-host",
        ),
        pytest.param(
            {"sinks": [http_sink("b", sign_secret="whsec_@@")]},
            "sinks[0].sign_secret: secret is not valid base64 (expected whsec_ followed by base64)",
            id="sign-secret",
        ),
        pytest.param(
            {"pulse": {"base_url": "api.runpulse.com"}},
            "pulse.base_url: not a valid URL",
            id="base-url",
        ),
        pytest.param(
            {"server": {"path": "webhooks"}},
            'server.path: must start with "/"',
            id="server-path",
        ),
        pytest.param(
            {"server": {"port": 70000}},
            "server.port: Input should be less than or equal to 65535",
            id="port-range",
        ),
        pytest.param(
            {"sinks": [file_sink("f", filename="{user}.json")]},
            "sinks[0].filename: unknown template field {user}",
            id="filename-field",
        ),
        pytest.param(
            {"sinks": [file_sink("f", filename="{id.__class__}.json")]},
            "sinks[0].filename: unknown template field {id.__class__}",
            id="filename-attribute",
        ),
        pytest.param(
            {"sinks": [file_sink("f", filename="/tmp/{id}")]},
            "sinks[0].filename: must be relative to the sink directory",
            id="filename-absolute",
        ),
        pytest.param(
            {"sinks": [file_sink("f", filename="a/../../{id}")]},
            'sinks[0].filename: must not contain ".." components',
            id="filename-dotdot",
        ),
        pytest.param(
            {"poll": {"interval_seconds": 30, "max_interval_seconds": 10}},
            "poll.max_interval_seconds: must be at least poll.interval_seconds (30)",
            id="poll-backoff",
        ),
        pytest.param(
            {"sinks": [{"name": "f", "type": "ftp"}]},
            "sinks[0].type: unknown sink type 'ftp'",
            id="sink-type",
        ),
        pytest.param(
            {"sinks": [{"name": "f", "type": "file"}]},
            "sinks[0].directory: required key is missing",
            id="sink-missing-key",
        ),
        pytest.param(
            {"proxy": {"concurrency": 0}},
            "proxy.concurrency: Input should be greater than or equal to 1",
            id="proxy-concurrency",
        ),
        pytest.param(
            {"store": {"dedupe_days": 0.5}},
            "store.dedupe_days: Input should be greater than or equal to 1",
            id="dedupe-days",
        ),
        pytest.param(
            {"sinks": [file_sink("a"), {**file_sink("f"), "rate_per_second": 0}]},
            "sinks[1].rate_per_second: Input should be greater than 0",
            id="rate-zero",
        ),
        pytest.param(
            {"sinks": [{**file_sink("f"), "rate_per_second": -2.5}]},
            "sinks[0].rate_per_second: Input should be greater than 0",
            id="rate-negative",
        ),
        pytest.param(
            {"sinks": [{**file_sink("f"), "rate_per_second": float("inf")}]},
            "sinks[0].rate_per_second: Input should be a finite number",
            id="rate-infinite",
        ),
        pytest.param(
            {"sinks": [{**file_sink("f"), "mode": "0644x"}]},
            "sinks[0].mode: '0644x' is not an octal permission mode",
            id="file-mode",
        ),
        pytest.param(
            {"sinks": [{**file_sink("f"), "mode": 0o600}]},
            'sinks[0].mode: must be a quoted octal string such as "0600"',
            id="file-mode-number",
        ),
    ],
)
def test_validation_error_names_the_key(
    write_config: WriteConfig, sections: dict[str, Any], expected: str
) -> None:
    path = write_config(**sections)
    lines = config_error(path).splitlines()
    matching = [line for line in lines if line.startswith(expected)]
    assert matching, lines
    assert matching[0].endswith(f" (in {path})")


def test_standard_scheme_without_secret_is_polling_mode() -> None:
    settings = load_settings()
    assert settings.verify.scheme == "standard"
    assert settings.verify.secrets == []


def test_hmac_scheme_accepts_plain_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PULSE_WEBHOOK_SECRET", "plain-shared-secret")
    settings = load_settings(overrides={"verify.scheme": "hmac-sha256-hex"})
    assert [s.get_secret_value() for s in settings.verify.secrets] == ["plain-shared-secret"]


def test_every_problem_is_reported_at_once(write_config: WriteConfig) -> None:
    path = write_config(server={"port": "high", "path": "x"}, log={"level": "loud"})
    keys = [line.partition(":")[0] for line in config_error(path).splitlines()]
    assert keys == ["server.port", "server.path", "log.level"]


def test_unknown_keys_are_named(write_config: WriteConfig) -> None:
    path = write_config(server={"prot": 1}, servr={"port": 1}, sinks=[file_sink("f", filname="x")])
    lines = config_error(path).splitlines()
    assert f"server.prot: unknown key (in {path})" in lines
    assert f"servr: unknown key (in {path})" in lines
    assert f"sinks[0].filname: unknown key (in {path})" in lines


def test_error_from_environment_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PULSE_RELAY_SERVER__PORT", "not-a-port")
    message = config_error()
    assert message.startswith("server.port: Input should be a valid integer")
    assert message.endswith("(from environment variable PULSE_RELAY_SERVER__PORT)")


def test_error_from_json_variable_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PULSE_RELAY_SINKS", '[{"name": "h", "type": "http", "url": "nope"}]')
    assert config_error() == (
        "sinks[0].url: not a valid URL (expected http:// or https:// and a host)"
        " (from environment variable PULSE_RELAY_SINKS)"
    )


def test_error_from_well_known_variable_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PULSE_WEBHOOK_SECRET", "whsec_tooshort")
    assert config_error().endswith("(from environment variable PULSE_WEBHOOK_SECRET)")


def test_error_from_override_says_so() -> None:
    assert config_error(overrides={"server.port": -1}) == (
        "server.port: Input should be greater than or equal to 0 (from the command line)"
    )


def test_unknown_override_is_named() -> None:
    assert config_error(overrides={"server.prot": 1}) == (
        "server.prot: unknown key (from the command line)"
    )


def test_toml_syntax_error_names_file_and_line(write_config: WriteConfig) -> None:
    path = write_config("[server]\nport = 8787\nhost = \n")  # not TOML: no factory writes it
    message = config_error(path)
    assert message.startswith(f"{path}: TOML syntax error")
    assert "line 3" in message


def test_error_message_never_shows_a_rejected_secret(write_config: WriteConfig) -> None:
    rejected = "whsec_" + base64.b64encode(b"0123456789").decode()
    path = write_config(
        verify={"secrets": [rejected]}, sinks=[http_sink("h", sign_secret=rejected)]
    )
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    assert rejected not in str(caught.value)
    assert caught.value.__cause__ is None
    assert caught.value.__suppress_context__


def test_base_url_loses_trailing_slash() -> None:
    settings = load_settings(overrides={"pulse.base_url": "https://pulse.example/"})
    assert settings.pulse.base_url == "https://pulse.example"


def test_empty_sign_secret_means_unsigned(write_config: WriteConfig) -> None:
    path = write_config(sinks=[http_sink("h", sign_secret="")])
    sink = load_settings(path).sinks[0]
    assert isinstance(sink, HttpSinkSettings)
    assert sink.sign_secret is None


@pytest.mark.parametrize("filename", ["{job_id}.json", "{date}/{type}-{id}.json", "events.jsonl"])
def test_allowed_filename_templates(write_config: WriteConfig, filename: str) -> None:
    path = write_config(sinks=[file_sink("f", filename=filename)])
    sink = load_settings(path).sinks[0]
    assert isinstance(sink, FileSinkSettings)
    assert sink.filename is not None
    assert sink.filename.text == filename


# --- redaction -------------------------------------------------------------------------------


def test_redacted_settings_hides_every_secret(write_config: WriteConfig) -> None:
    headers = {
        "Authorization": "Bearer bearer-do-not-print",
        "X-API-Key": "header-key-do-not-print",
        "X-Session-Token": "token-do-not-print",
        "Cookie": "cookie-do-not-print",
        "Accept": "application/json",
    }
    app = http_sink(
        "app",
        url="https://relay-user:url-password-do-not-print@app.example/hook",
        sign_secret=SECRET_C,
        headers=headers,
    )
    script = {
        "name": "script",
        "type": "command",
        "argv": ["import"],
        "env": {"DB_PASSWORD": "env-password-do-not-print", "APP_ENV": "production"},
    }
    path = write_config(
        verify={"secrets": [SECRET_A, SECRET_B]},
        pulse={"api_key": "pulse-key-do-not-print"},
        sinks=[app, script],
    )
    text = json.dumps(redacted_settings(load_settings(path)))
    for secret in [
        SECRET_A,
        SECRET_B,
        SECRET_C,
        "pulse-key-do-not-print",
        "url-password-do-not-print",
        "bearer-do-not-print",
        "header-key-do-not-print",
        "token-do-not-print",
        "cookie-do-not-print",
        "env-password-do-not-print",
    ]:
        assert secret not in text
    data = json.loads(text)
    assert data["verify"]["secrets"] == ["**********", "**********"]
    assert data["pulse"]["api_key"] == "**********"
    shown_app = data["sinks"][0]
    assert shown_app["sign_secret"] == "**********"
    assert shown_app["headers"]["Accept"] == "application/json"
    assert shown_app["headers"]["Authorization"] == "**********"
    assert shown_app["url"] == "https://**********@app.example/hook"
    assert data["sinks"][1]["env"] == {"DB_PASSWORD": "**********", "APP_ENV": "production"}


def test_redacted_settings_masks_user_info_and_query_of_every_url(
    write_config: WriteConfig,
) -> None:
    path = write_config(
        pulse={
            "base_url": "https://pulse-user:base-password@api.example/v1?tenant=base-query-token"
        },
        sinks=[
            http_sink("app", url="https://app.example/hook?token=sink-query-token#frag-token"),
            {
                "name": "script",
                "type": "command",
                "argv": [
                    "import",
                    "--from",
                    "https://argv-user@files.example/x?sig=argv-query-token",
                ],
                "env": {"DATABASE_URL": "postgresql://db:env-url-password@db.example/app"},
            },
        ],
    )
    data = redacted_settings(load_settings(path))
    text = json.dumps(data)
    for secret in [
        "pulse-user",
        "base-password",
        "base-query-token",
        "sink-query-token",
        "frag-token",
        "argv-user",
        "argv-query-token",
        "env-url-password",
    ]:
        assert secret not in text
    assert data["pulse"]["base_url"] == "https://**********@api.example/v1?**********"
    assert data["sinks"][0]["url"] == "https://app.example/hook?**********#**********"
    assert data["sinks"][1]["argv"][:2] == ["import", "--from"]
    assert data["sinks"][1]["env"]["DATABASE_URL"] == "postgresql://**********@db.example/app"


@pytest.mark.parametrize(
    ("base_url", "warned"),
    [
        ("https://api.runpulse.com", False),
        ("http://127.0.0.1:8788", False),
        ("http://127.9.9.9", False),
        ("http://localhost:9000/pulse", False),
        ("http://[::1]:8788", False),
        ("http://api.runpulse.com", True),
        ("http://10.0.0.5:8080", True),
        ("http://user:pw@pulse.internal?key=k", True),
    ],
)
def test_a_non_https_base_url_off_loopback_draws_a_warning(base_url: str, warned: bool) -> None:
    warnings = settings_warnings(load_settings(overrides={"pulse.base_url": base_url}))
    if not warned:
        assert warnings == []
        return
    (warning,) = warnings
    assert warning.startswith("pulse.base_url: http://")
    assert "is not https" in warning
    assert "pw" not in warning and "key=k" not in warning


def test_redacted_settings_shows_unset_secrets_as_empty(tmp_path: Path) -> None:
    data = redacted_settings(load_settings(overrides={"store.path": str(tmp_path / "relay.db")}))
    assert data["pulse"]["api_key"] == ""
    assert data["verify"]["secrets"] == []
    assert data["verify"]["secrets_file"] is None
    assert data["store"]["path"] == str(tmp_path / "relay.db")
    # The whole of it survives a JSON round trip unchanged.
    assert json.loads(json.dumps(data)) == data


def test_redacted_settings_hides_secrets_read_from_files(
    tmp_path: Path, write_config: WriteConfig
) -> None:
    (tmp_path / "webhook-secret").write_text(SECRET_A, encoding="utf-8")
    (tmp_path / "pulse-api-key").write_text("file-key-do-not-print", encoding="utf-8")
    path = write_config(
        verify={"secrets_file": "webhook-secret"}, pulse={"api_key_file": "pulse-api-key"}
    )
    text = json.dumps(redacted_settings(load_settings(path)))
    assert SECRET_A not in text
    assert "file-key-do-not-print" not in text
    assert str(tmp_path / "webhook-secret") in text


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("sqlite:rel.db", "sqlite:rel.db"),
        ("sqlite:///var/lib/pulse-relay/relay.db", "sqlite:///var/lib/pulse-relay/relay.db"),
        (
            "postgresql://relay:pg-password@db.internal:5432/relay",
            "postgresql://**********@db.internal:5432/relay",
        ),
        (
            "postgresql://db.internal/relay?password=pg-password",
            "postgresql://db.internal/relay?**********",
        ),
        ("", ""),
    ],
)
def test_check_config_shows_which_store_and_masks_only_its_credentials(
    url: str, shown: str
) -> None:
    settings = Settings.model_validate({"store": {"url": url}})
    assert redacted_settings(settings)["store"]["url"] == shown


def test_a_url_that_cannot_be_parsed_is_masked_whole() -> None:
    # urlsplit refuses it, so its credentials cannot be found: nothing of it is shown.
    assert mask_url("postgresql://relay:pg-password@[db.internal/relay") == REDACTED
