"""Standard Webhooks `v1a` (ed25519) through the whole relay: the configuration and
`check-config`, a relay on a real port holding only public keys, the HTTP sink's
signature checked by a receiver with `cryptography`, and `send-test --private-key-file`
against `pulse-relay serve`. The pure verifier is tested in tests/test_signature_v1a.py.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from standardwebhooks.webhooks import Webhook

from pulse_relay.app import Relay
from pulse_relay.config import (
    ConfigError,
    HttpSinkSettings,
    load_settings,
    mode_warnings,
    secret_files,
)
from pulse_relay.emulator import PulseEmulator
from pulse_relay.ingress.signature import StandardVerifier
from pulse_relay.ingress_settings import build_verifier
from pulse_relay.redaction import REDACTED, redacted_settings
from tests.helpers import (
    FAST_RETRY,
    OTHER_KEYS,
    SECRET,
    SENDER_KEYS,
    SINK_SECRET,
    Ed25519Pair,
    MakeSettings,
    PipelineSettings,
    Receiver,
    Served,
    StartRelay,
    call,
    config_toml,
    ed25519_pair,
    free_port,
    make_body,
    run_cli,
    signed,
    v1a_signed,
    wait_for,
    write_config,
)

# Keys nobody configured.
STRANGER_KEYS = ed25519_pair(bytes(range(200, 232)))


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def _raw(key_text: str) -> bytes:
    return base64.b64decode(key_text[5:])


SHORT_PUBLIC_KEY = "whpk_" + _b64(_raw(SENDER_KEYS.whpk)[:31])
# The sender's private half with another key's public half: a pasting mistake.
MISMATCHED_PRIVATE_KEY = "whsk_" + _b64(_raw(SENDER_KEYS.whsk)[:32] + _raw(OTHER_KEYS.whpk))


def http_sink(name: str, url: str = "http://127.0.0.1:9/hook", **options: Any) -> dict[str, Any]:
    return {"type": "http", "name": name, "url": url, **options}


def write_toml(tmp_path: Path, **sections: Any) -> Path:
    """A new TOML file of these sections in `tmp_path`."""
    path = tmp_path / f"relay-{len(list(tmp_path.glob('relay-*.toml')))}.toml"
    path.write_text(config_toml(**sections), encoding="utf-8")
    return path


def verify_v1a(keys: Ed25519Pair, headers: dict[str, str], body: bytes) -> None:
    """Check the request's one `v1a` entry with `cryptography` alone; InvalidSignature if not."""
    lowered = {name.lower(): value for name, value in headers.items()}
    [entry] = [e for e in lowered["webhook-signature"].split() if e.startswith("v1a,")]
    signed_content = f"{lowered['webhook-id']}.{lowered['webhook-timestamp']}.".encode() + body
    public_key = Ed25519PublicKey.from_public_bytes(_raw(keys.whpk))
    public_key.verify(base64.b64decode(entry.removeprefix("v1a,"), validate=True), signed_content)


# --- configuration ---------------------------------------------------------------------------


def test_public_keys_come_from_the_file_a_string_or_the_variables(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    both = [SENDER_KEYS.whpk, OTHER_KEYS.whpk]
    as_list = write_toml(tmp_path, verify={"public_keys": both})
    assert [key.text for key in load_settings(as_list).verify.public_keys] == both
    as_text = write_toml(tmp_path, verify={"public_keys": " ".join(both)})
    assert [key.text for key in load_settings(as_text).verify.public_keys] == both
    # Settings read twice compare equal (a reload compares them to see what changed).
    assert load_settings(as_text).verify == load_settings(as_list).verify
    # The well-known variable beats the file; the prefixed one, more specific, beats both.
    monkeypatch.setenv("PULSE_WEBHOOK_PUBLIC_KEYS", f"  {OTHER_KEYS.whpk}\n")
    assert [key.text for key in load_settings(as_list).verify.public_keys] == [OTHER_KEYS.whpk]
    monkeypatch.setenv("PULSE_RELAY_VERIFY__PUBLIC_KEYS", json.dumps([SENDER_KEYS.whpk]))
    assert [key.text for key in load_settings(as_list).verify.public_keys] == [SENDER_KEYS.whpk]


def test_the_secret_and_public_key_variables_set_both_lists(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PULSE_WEBHOOK_SECRET", SECRET)
    monkeypatch.setenv("PULSE_WEBHOOK_PUBLIC_KEYS", SENDER_KEYS.whpk)
    verify = load_settings().verify
    assert [secret.get_secret_value() for secret in verify.secrets] == [SECRET]
    assert [key.text for key in verify.public_keys] == [SENDER_KEYS.whpk]


@pytest.mark.parametrize(
    ("sections", "expected"),
    [
        pytest.param(
            {"verify": {"public_keys": [SENDER_KEYS.whpk, SHORT_PUBLIC_KEY]}},
            "verify.public_keys[1]: public key decodes to 31 bytes; 32 expected",
            id="public-key-length",
        ),
        pytest.param(
            {"verify": {"public_keys": ["whsec_" + SENDER_KEYS.whpk[5:]]}},
            "verify.public_keys[0]: public key must start with whpk_",
            id="public-key-prefix",
        ),
        pytest.param(
            {"verify": {"public_keys": ["whpk_not*base64"]}},
            "verify.public_keys[0]: public key is not valid base64",
            id="public-key-base64",
        ),
        pytest.param(
            {"verify": {"scheme": "hmac-sha256-hex", "public_keys": [SENDER_KEYS.whpk]}},
            "verify.public_keys: only the standard scheme verifies v1a signatures",
            id="public-keys-with-hex-scheme",
        ),
        pytest.param(
            {"sinks": [http_sink("a"), http_sink("b", sign_private_key=MISMATCHED_PRIVATE_KEY)]},
            "sinks[1].sign_private_key: private key: its public half does not match",
            id="private-key-halves",
        ),
        pytest.param(
            {"sinks": [http_sink("a", sign_private_key=SENDER_KEYS.whpk)]},
            "sinks[0].sign_private_key: private key must start with whsk_",
            id="private-key-prefix",
        ),
        pytest.param(
            {"sinks": [http_sink("a", sign_private_key="whsk_" + _b64(b"\1" * 32))]},
            "sinks[0].sign_private_key: private key decodes to 32 bytes; 64 expected",
            id="private-key-length",
        ),
    ],
)
def test_a_malformed_key_is_a_configuration_error_naming_it(
    tmp_path: Path, sections: dict[str, Any], expected: str
) -> None:
    path = write_toml(tmp_path, **sections)
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    message = str(caught.value)
    assert any(line.startswith(expected) for line in message.splitlines()), message
    assert message.endswith(f"(in {path})")
    assert MISMATCHED_PRIVATE_KEY[5:20] not in message


def test_a_malformed_key_in_the_variable_names_the_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PULSE_WEBHOOK_PUBLIC_KEYS", f"{SENDER_KEYS.whpk} {SHORT_PUBLIC_KEY}")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert str(caught.value) == (
        "verify.public_keys[1]: public key decodes to 31 bytes; 32 expected"
        " (from environment variable PULSE_WEBHOOK_PUBLIC_KEYS)"
    )


def test_an_empty_private_key_means_none() -> None:
    sink = HttpSinkSettings.model_validate(http_sink("a", sign_private_key=""))
    assert sink.sign_private_key is None


def test_the_private_key_is_masked_and_the_public_keys_are_shown(tmp_path: Path) -> None:
    path = write_toml(
        tmp_path,
        verify={"public_keys": [SENDER_KEYS.whpk]},
        sinks=[http_sink("app", sign_private_key=OTHER_KEYS.whsk)],
    )
    settings = load_settings(path)
    shown = redacted_settings(settings)
    assert shown["verify"]["public_keys"] == [SENDER_KEYS.whpk]
    assert shown["sinks"][0]["sign_private_key"] == REDACTED
    assert OTHER_KEYS.whsk[5:] not in json.dumps(shown)
    assert OTHER_KEYS.whsk[5:] not in repr(settings)
    # A config file holding it is a file other users must not read.
    [config_file] = [found for found in secret_files(settings, path) if found.path == path]
    assert "sinks[0].sign_private_key" in config_file.holds


def test_check_config_masks_the_private_key_and_names_bad_keys(tmp_path: Path) -> None:
    good = write_toml(
        tmp_path,
        store={"path": str(tmp_path / "relay.db")},
        verify={"public_keys": [SENDER_KEYS.whpk]},
        sinks=[http_sink("app", sign_private_key=OTHER_KEYS.whsk)],
    )
    result = run_cli("check-config", config=good)
    assert result.returncode == 0, result.stderr
    assert OTHER_KEYS.whsk[5:] not in result.stdout + result.stderr
    assert SENDER_KEYS.whpk in result.stdout
    # Public keys alone take webhooks: no polling-only warning.
    assert "polling-only" not in result.stderr

    bad = tmp_path / "bad.toml"
    bad.write_text(
        config_toml(
            verify={"public_keys": [SHORT_PUBLIC_KEY]},
            sinks=[http_sink("a"), http_sink("b", sign_private_key=MISMATCHED_PRIVATE_KEY)],
        )
    )
    result = run_cli("check-config", config=bad)
    assert result.returncode == 1
    assert "verify.public_keys[0]: public key decodes to 31 bytes" in result.stderr
    assert "sinks[1].sign_private_key: private key: its public half" in result.stderr
    assert MISMATCHED_PRIVATE_KEY[5:20] not in result.stderr


def test_public_keys_alone_leave_polling_only_mode(make_settings: MakeSettings) -> None:
    keyed = make_settings(verify={"secrets": [], "public_keys": [SENDER_KEYS.whpk]})
    assert isinstance(build_verifier(keyed), StandardVerifier)
    assert not [warning for warning in mode_warnings(keyed) if "polling-only" in warning]
    neither = make_settings(verify={"secrets": []})
    assert build_verifier(neither) is None
    [warning] = [warning for warning in mode_warnings(neither) if "polling-only" in warning]
    assert "verify.public_keys" in warning
    assert "PULSE_WEBHOOK_PUBLIC_KEYS" in warning


# --- a relay holding only public keys --------------------------------------------------------


@pytest.fixture
async def keyed_relay(start_relay: StartRelay, tmp_path: Path) -> Relay:
    return await start_relay(
        verify={"secrets": [], "public_keys": [OTHER_KEYS.whpk, SENDER_KEYS.whpk]},
        sinks=[{"type": "file", "name": "files", "directory": str(tmp_path / "out")}],
    )


async def stored_ids(relay: Relay) -> list[str]:
    return [view.id for view in await relay.store.list_events(limit=100)]


async def test_a_relay_with_only_public_keys_accepts_v1a(keyed_relay: Relay) -> None:
    body = make_body(job_id="job-v1a")
    headers = v1a_signed(body, webhook_id="msg_v1a")
    status, answer = await call("POST", keyed_relay.webhook_url, headers=headers, data=body)
    assert (status, answer) == (202, {"status": "accepted", "id": "msg_v1a"})
    status, answer = await call("POST", keyed_relay.webhook_url, headers=headers, data=body)
    assert (status, answer["status"]) == (200, "duplicate")
    # The other configured key will do as well.
    other = v1a_signed(body, OTHER_KEYS, webhook_id="msg_other_key")
    assert (await call("POST", keyed_relay.webhook_url, headers=other, data=body))[0] == 202
    assert sorted(await stored_ids(keyed_relay)) == ["msg_other_key", "msg_v1a"]


def _tampered(body: bytes) -> tuple[bytes, dict[str, str]]:
    return body.replace(b"job-x", b"job-y"), v1a_signed(body)


def _malformed(length: int) -> Any:
    def case(body: bytes) -> tuple[bytes, dict[str, str]]:
        headers = v1a_signed(body)
        headers["webhook-signature"] = "v1a," + _b64(b"\7" * length)
        return body, headers

    return case


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        pytest.param(
            lambda b: (b, v1a_signed(b, STRANGER_KEYS)), "no matching signature", id="wrong-key"
        ),
        pytest.param(lambda b: (b, signed(b)), "no matching signature", id="v1-only"),
        pytest.param(_tampered, "no matching signature", id="tampered-body"),
        pytest.param(_malformed(63), "malformed webhook-signature entry", id="63-bytes"),
        pytest.param(_malformed(65), "malformed webhook-signature entry", id="65-bytes"),
    ],
)
async def test_a_relay_with_only_public_keys_refuses_what_they_do_not_verify(
    keyed_relay: Relay, case: Any, reason: str
) -> None:
    body, headers = case(make_body(job_id="job-x"))
    status, answer = await call("POST", keyed_relay.webhook_url, headers=headers, data=body)
    assert (status, answer["status"], answer["reason"]) == (401, "unauthorized", reason)
    assert await stored_ids(keyed_relay) == []


async def test_a_malformed_v1a_beside_a_good_v1_is_accepted(start_relay: StartRelay) -> None:
    relay = await start_relay(verify={"public_keys": [SENDER_KEYS.whpk]})
    body = make_body()
    headers = signed(body, webhook_id="msg_mixed")
    headers["webhook-signature"] = "v1a," + _b64(b"\7" * 63) + " " + headers["webhook-signature"]
    status, answer = await call("POST", relay.webhook_url, headers=headers, data=body)
    assert (status, answer["status"]) == (202, "accepted")


async def test_send_test_through_the_api_says_public_keys_cannot_sign(
    keyed_relay: Relay,
) -> None:
    status, answer = await call(
        "POST", keyed_relay.admin_url + "/api/send-test", headers={"X-Pulse-Relay": "1"}
    )
    assert status == 409
    assert "verify.public_keys" in answer["detail"]
    assert "polling-only" not in answer["detail"]


# --- the HTTP sink ---------------------------------------------------------------------------


async def test_the_http_sinks_v1a_signature_verifies_with_the_public_key_alone(
    start_relay: StartRelay,
    pipeline_settings: PipelineSettings,
    emulator: PulseEmulator,
    receiver: Receiver,
) -> None:
    emulator.add_job("job-signed")
    sink = http_sink("app", receiver.url, sign_private_key=SENDER_KEYS.whsk, **FAST_RETRY)
    relay = await start_relay(pipeline_settings(sinks=[sink]))
    status, _ = await emulator.send_webhook(
        relay.webhook_url, SECRET, "job.completed", "job-signed", webhook_id="msg_signed"
    )
    assert status == 202
    await wait_for(lambda: bool(receiver.received), timeout_seconds=20)
    [received] = receiver.received
    lowered = {name.lower(): value for name, value in received.headers.items()}
    assert lowered["webhook-id"] == "msg_signed"
    assert lowered["webhook-signature"].startswith("v1a,")
    assert " " not in lowered["webhook-signature"]
    verify_v1a(SENDER_KEYS, received.headers, received.body)
    with pytest.raises(InvalidSignature):
        verify_v1a(OTHER_KEYS, received.headers, received.body)
    with pytest.raises(InvalidSignature):
        verify_v1a(SENDER_KEYS, received.headers, received.body + b" ")
    # Another relay holding only the public key takes it as it is.
    downstream = StandardVerifier([], public_keys=[SENDER_KEYS.whpk])
    assert downstream.verify(lowered, received.body).webhook_id == "msg_signed"


async def test_the_http_sink_signs_v1_and_v1a_when_given_both(
    start_relay: StartRelay,
    pipeline_settings: PipelineSettings,
    emulator: PulseEmulator,
    receiver: Receiver,
) -> None:
    emulator.add_job("job-both")
    sink = http_sink(
        "app",
        receiver.url,
        sign_secret=SINK_SECRET,
        sign_private_key=SENDER_KEYS.whsk,
        **FAST_RETRY,
    )
    relay = await start_relay(pipeline_settings(sinks=[sink]))
    await emulator.send_webhook(relay.webhook_url, SECRET, "job.completed", "job-both")
    await wait_for(lambda: bool(receiver.received), timeout_seconds=20)
    [received] = receiver.received
    lowered = {name.lower(): value for name, value in received.headers.items()}
    versions = [entry.partition(",")[0] for entry in lowered["webhook-signature"].split()]
    assert versions == ["v1", "v1a"]
    Webhook(SINK_SECRET).verify(received.body, received.headers)
    verify_v1a(SENDER_KEYS, received.headers, received.body)


# --- send-test against `pulse-relay serve` ---------------------------------------------------


def test_send_test_signs_with_a_private_key_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = free_port()
    config = write_config(tmp_path, port, verify={"secrets": []})
    # `serve` and the CLI below read it, as an operator's environment would hold it.
    monkeypatch.setenv("PULSE_WEBHOOK_PUBLIC_KEYS", SENDER_KEYS.whpk)
    key_files = {}
    for name, text in [
        ("sender", SENDER_KEYS.whsk + "\n"),
        ("stranger", STRANGER_KEYS.whsk),
        ("garbled", "whsk_" + _b64(b"\1" * 63)),
    ]:
        key_files[name] = tmp_path / f"{name}.key"
        key_files[name].write_text(text)
    served = Served.start(config, port, tmp_path / "serve.log")
    try:
        accepted = run_cli(
            "send-test",
            "--job-id",
            "job-v1a",
            "--private-key-file",
            str(key_files["sender"]),
            config=config,
        )
        refused = run_cli(
            "send-test", "--private-key-file", str(key_files["stranger"]), config=config
        )
        unsigned = run_cli("send-test", config=config)
        garbled = run_cli(
            "send-test", "--private-key-file", str(key_files["garbled"]), config=config
        )
        missing = run_cli(
            "send-test", "--private-key-file", str(tmp_path / "absent.key"), config=config
        )
    finally:
        served.kill()
    assert accepted.returncode == 0, accepted.stderr
    assert accepted.stdout.startswith("202 ") and '"accepted"' in accepted.stdout
    assert (refused.returncode, refused.stdout.split()[0]) == (1, "401")
    assert unsigned.returncode == 1
    assert "verify.public_keys" in unsigned.stderr and "--private-key-file" in unsigned.stderr
    assert garbled.returncode == 1
    assert f"--private-key-file: {key_files['garbled']}: private key decodes to 63" in (
        garbled.stderr
    )
    assert _b64(b"\1" * 63)[:12] not in garbled.stderr
    assert missing.returncode == 1 and "--private-key-file: cannot read" in missing.stderr
    assert "polling-only" not in served.log()


def test_send_test_refuses_a_private_key_for_the_hex_scheme(tmp_path: Path) -> None:
    config = write_config(
        tmp_path, free_port(), verify={"scheme": "hmac-sha256-hex", "secrets": ["plain"]}
    )
    key_file = tmp_path / "sender.key"
    key_file.write_text(SENDER_KEYS.whsk)
    result = run_cli("send-test", "--private-key-file", str(key_file), config=config)
    assert result.returncode == 1
    assert "the hmac-sha256-hex scheme has no v1a signatures" in result.stderr
    assert "give --secret" not in result.stderr
