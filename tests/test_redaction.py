"""One list of secret names and one mask, shared by check-config and the logs."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import pytest
from click.testing import CliRunner
from pydantic import BaseModel, SecretStr

from pulse_relay.cli import cli
from pulse_relay.config import Settings
from pulse_relay.logs import redact_sensitive
from pulse_relay.redaction import REDACTED, URL_SHOWN_MASKED, is_secret_name, redacted_settings
from tests.helpers import config_toml, relay_config


@pytest.mark.parametrize(
    "name",
    [
        "Authorization",
        "X-Api-Key",
        "api_key",
        "SESSION_ID",
        "client_secret",
        "webhook_signature",
        "DB_PASS",
        "PRIVATE_KEY",
        "STRIPE_KEY",
        "X-Relay-Key",
        "X-Hub-Sig",
    ],
)
def test_secret_names_are_masked_in_check_config_and_in_logs(name: str) -> None:
    assert is_secret_name(name)
    settings = Settings.model_validate(
        {"sinks": [{"name": "app", "type": "http", "url": "http://x", "headers": {name: "v"}}]}
    )
    assert redacted_settings(settings)["sinks"][0]["headers"][name] == REDACTED
    assert redact_sensitive(None, "info", {name: "v"}) == {name: REDACTED}


class _Section(BaseModel):
    harmless_name: SecretStr
    database: Annotated[SecretStr, URL_SHOWN_MASKED]
    listed: list[SecretStr]
    variables: dict[str, str]


class _Whole(BaseModel):
    section: _Section


def test_redacted_settings_masks_a_secret_by_its_type_whatever_its_name() -> None:
    section = _Section(
        harmless_name=SecretStr("hunter2"),
        database=SecretStr("postgresql://user:pw@db/relay?sslpassword=x"),
        listed=[SecretStr("a"), SecretStr("")],
        variables={"PLAIN": "http://user:pw@host/", "TOKEN": "t"},
    )
    assert redacted_settings(_Whole(section=section)) == {
        "section": {
            "harmless_name": REDACTED,
            # The store that is meant stays visible; its credentials do not.
            "database": f"postgresql://{REDACTED}@db/relay?{REDACTED}",
            # An empty secret stays empty: the reader sees it is unset.
            "listed": [REDACTED, ""],
            "variables": {"PLAIN": f"http://{REDACTED}@host/", "TOKEN": REDACTED},
        }
    }


@pytest.mark.parametrize("name", ["webhook_id", "job_id", "Content-Type", "status_code"])
def test_ordinary_names_are_shown(name: str) -> None:
    assert not is_secret_name(name)
    assert redact_sensitive(None, "info", {name: "v"}) == {name: "v"}


def test_logs_also_mask_bodies_whatever_their_case() -> None:
    assert redact_sensitive(None, "info", {"Body": b"{}", "payload": "{}"}) == {
        "Body": REDACTED,
        "payload": REDACTED,
    }


def test_check_config_prints_no_value_of_a_secret_named_variable_or_header(tmp_path: Path) -> None:
    values = {
        "DB_PASS": "db-pass-value",
        "PRIVATE_KEY": "private-key-value",
        "STRIPE_KEY": "stripe-key-value",
    }
    headers = {"X-Relay-Key": "relay-key-value", "X-Hub-Sig": "hub-sig-value"}
    config = tmp_path / "relay.toml"
    config.write_text(
        config_toml(
            **relay_config(
                tmp_path,
                sinks=[
                    {
                        "name": "cmd",
                        "type": "command",
                        "argv": [sys.executable, "-c", "pass"],
                        "env": {**values, "REGION": "eu-west-1"},
                    },
                    {"name": "app", "type": "http", "url": "http://x", "headers": headers},
                ],
            )
        )
    )

    result = CliRunner().invoke(cli, ["--config", str(config), "check-config"])

    assert result.exit_code == 0, result.output
    for value in [*values.values(), *headers.values()]:
        assert value not in result.output
    command, http = json.loads(result.stdout)["sinks"]
    assert command["env"] == {**dict.fromkeys(values, REDACTED), "REGION": "eu-west-1"}
    assert http["headers"] == dict.fromkeys(headers, REDACTED)
