"""One list of secret names and one mask, shared by check-config and the logs."""

from __future__ import annotations

import pytest

from pulse_relay.config import Settings, redacted_settings
from pulse_relay.logs import redact_sensitive
from pulse_relay.redaction import REDACTED, is_secret_name


@pytest.mark.parametrize(
    "name",
    ["Authorization", "X-Api-Key", "api_key", "SESSION_ID", "client_secret", "webhook_signature"],
)
def test_secret_names_are_masked_in_check_config_and_in_logs(name: str) -> None:
    assert is_secret_name(name)
    settings = Settings.model_validate(
        {"sinks": [{"name": "app", "type": "http", "url": "http://x", "headers": {name: "v"}}]}
    )
    assert redacted_settings(settings)["sinks"][0]["headers"][name] == REDACTED
    assert redact_sensitive(None, "info", {name: "v"}) == {name: REDACTED}


@pytest.mark.parametrize("name", ["webhook_id", "job_id", "Content-Type", "status_code"])
def test_ordinary_names_are_shown(name: str) -> None:
    assert not is_secret_name(name)
    assert redact_sensitive(None, "info", {name: "v"}) == {name: "v"}


def test_logs_also_mask_bodies_whatever_their_case() -> None:
    assert redact_sensitive(None, "info", {"Body": b"{}", "payload": "{}"}) == {
        "Body": REDACTED,
        "payload": REDACTED,
    }
