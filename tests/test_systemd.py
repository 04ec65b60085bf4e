"""systemd/pulse-relay.service: parses, and has the directives the relay relies on."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
UNIT = REPO / "systemd" / "pulse-relay.service"


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """Sections → key → every value, in order (systemd allows a key several times)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    logical = ""
    for number, raw in enumerate(text.splitlines(), start=1):
        line = logical + raw.strip()
        if line.endswith("\\"):
            logical = line[:-1] + " "
            continue
        logical = ""
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            assert line.endswith("]"), f"line {number}: malformed section header"
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"line {number}: key outside any section"
        key, equals, value = line.partition("=")
        assert equals and key.strip() and key.strip() == key.strip().replace(" ", ""), (
            f"line {number}: not KEY=VALUE: {raw!r}"
        )
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


@pytest.fixture(scope="module")
def service() -> dict[str, list[str]]:
    return parse_unit(UNIT.read_text())["Service"]


def test_unit_has_unit_service_and_install_sections() -> None:
    sections = parse_unit(UNIT.read_text())
    assert set(sections) == {"Unit", "Service", "Install"}
    assert sections["Install"]["WantedBy"] == ["multi-user.target"]


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("Type", "notify"),
        ("Restart", "on-failure"),
        ("DynamicUser", "yes"),
        ("StateDirectory", "pulse-relay"),
        ("ConfigurationDirectory", "pulse-relay"),
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("PrivateDevices", "yes"),
        ("SystemCallFilter", "@system-service"),
        ("KillMode", "mixed"),
        ("UMask", "0077"),
        ("StateDirectoryMode", "0700"),
        ("ExecReload", "/bin/kill -HUP $MAINPID"),
        ("LimitNOFILE", "65536"),
    ],
)
def test_required_directive(service: dict[str, list[str]], key: str, value: str) -> None:
    assert service.get(key) == [value]


def test_service_runs_serve_with_a_watchdog(service: dict[str, list[str]]) -> None:
    (exec_start,) = service["ExecStart"]
    assert exec_start.split()[0].endswith("/pulse-relay")
    assert exec_start.split()[-1] == "serve"
    (watchdog,) = service["WatchdogSec"]
    assert watchdog.removesuffix("s").isdigit() and int(watchdog.removesuffix("s")) > 0


def test_secrets_come_from_credentials(service: dict[str, list[str]]) -> None:
    credentials = dict(value.split(":", 1) for value in service["LoadCredential"])
    assert set(credentials) == {"webhook-secret", "pulse-api-key"}
    environment = dict(value.split("=", 1) for value in service["Environment"])
    # Relative names: the relay looks them up in $CREDENTIALS_DIRECTORY.
    assert environment["PULSE_RELAY_VERIFY__SECRETS_FILE"] == "webhook-secret"
    assert environment["PULSE_RELAY_PULSE__API_KEY_FILE"] == "pulse-api-key"
    assert not any(key in environment for key in ("PULSE_WEBHOOK_SECRET", "PULSE_API_KEY"))


def test_network_families_and_writable_paths(service: dict[str, list[str]]) -> None:
    (families,) = service["RestrictAddressFamilies"]
    assert set(families.split()) == {"AF_UNIX", "AF_INET", "AF_INET6"}
    assert service["ReadWritePaths"], "sink directories need ReadWritePaths"
    assert service["WorkingDirectory"] == ["/var/lib/pulse-relay"]


def test_stop_timeout_leaves_room_for_the_shutdown_grace(service: dict[str, list[str]]) -> None:
    from pulse_relay.config import ServerSettings

    (timeout,) = service["TimeoutStopSec"]
    assert float(timeout.removesuffix("s")) > ServerSettings().shutdown_grace_seconds


def test_parser_rejects_a_broken_unit() -> None:
    with pytest.raises(AssertionError):
        parse_unit("[Service]\nType notify\n")
    with pytest.raises(AssertionError):
        parse_unit("Type=notify\n")


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_systemd_analyze_verify_finds_nothing(tmp_path: Path) -> None:
    # verify insists that ExecStart's program exists: point it at this environment's.
    program = Path(sys.executable).parent / "pulse-relay"
    if not program.exists():
        pytest.skip("pulse-relay console script not installed next to the interpreter")
    unit = tmp_path / "pulse-relay.service"
    unit.write_text(UNIT.read_text().replace("/opt/pulse-relay/bin/pulse-relay", str(program)))
    result = subprocess.run(
        ["systemd-analyze", "verify", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    # Unknown keys and bad values are only warnings: any line about the unit fails.
    about_unit = [line for line in result.stderr.splitlines() if "pulse-relay.service" in line]
    assert about_unit == []

    broken = tmp_path / "broken.service"
    broken.write_text(unit.read_text().replace("Type=notify", "Type=notyfy"))
    result = subprocess.run(
        ["systemd-analyze", "verify", str(broken)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert "broken.service" in result.stderr


def test_every_environment_variable_is_a_setting_the_relay_reads(
    service: dict[str, list[str]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pulse_relay.config import admin_exposure_problem, load_settings

    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "webhook-secret").write_text("whsec_" + "A" * 44)
    (credentials / "pulse-api-key").write_text("key")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(credentials))
    (tmp_path / "relay.toml").write_text("")
    for value in service["Environment"]:
        name, _, setting = value.partition("=")
        monkeypatch.setenv(name, setting.replace("/etc/pulse-relay", str(tmp_path)))
    settings = load_settings()
    # The admin listener stays on loopback: it needs no token here.
    assert settings.admin.host == "127.0.0.1"
    assert admin_exposure_problem(settings) is None
