"""The Dockerfile and the compose example (no container engine is needed to check them)."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DOCKERFILE = REPO / "Dockerfile"
COMPOSE = REPO / "examples" / "docker-compose.yml"


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n(\s*#[^\n]*\n)*", " ", text)
    result = []
    for line in joined.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            word, _, rest = stripped.partition(" ")
            result.append((word.upper(), rest.strip()))
    return result


@pytest.fixture(scope="module")
def final_stage() -> list[tuple[str, str]]:
    """The instructions of the last stage: the image that runs."""
    steps = instructions(DOCKERFILE.read_text())
    last_from = max(i for i, (word, _) in enumerate(steps) if word == "FROM")
    return steps[last_from:]


def values(stage: list[tuple[str, str]], word: str) -> list[str]:
    return [rest for w, rest in stage if w == word]


def test_every_stage_uses_a_slim_python_base() -> None:
    bases = values(instructions(DOCKERFILE.read_text()), "FROM")
    assert bases
    assert all(re.match(r"python:3\.1[1-9][\w.]*-slim\b", base) for base in bases), bases


def test_runs_as_a_non_root_user(final_stage: list[tuple[str, str]]) -> None:
    (user,) = values(final_stage, "USER")
    assert user.split(":")[0] not in ("root", "0")
    (run,) = values(final_stage, "RUN")
    assert "useradd" in run and "10001" in run


def test_state_lives_in_a_volume(final_stage: list[tuple[str, str]]) -> None:
    (volume,) = values(final_stage, "VOLUME")
    assert "/var/lib/pulse-relay" in volume
    env = " ".join(values(final_stage, "ENV"))
    assert "PULSE_RELAY_STORE__PATH=/var/lib/pulse-relay/" in env
    assert "PULSE_RELAY_SERVER__HOST=0.0.0.0" in env


def test_healthcheck_uses_the_relay_itself(final_stage: list[tuple[str, str]]) -> None:
    (healthcheck,) = values(final_stage, "HEALTHCHECK")
    assert healthcheck.split()[-3:] == ["CMD", '["pulse-relay",', '"healthcheck"]']
    # The slim image has no curl or wget, and none is installed for this.
    assert not any("curl" in rest or "wget" in rest for _, rest in final_stage)


def entrypoint(stage: list[tuple[str, str]]) -> list[str]:
    (text,) = values(stage, "ENTRYPOINT")
    argv: list[str] = json.loads(text)
    return argv


def test_starts_serve(final_stage: list[tuple[str, str]]) -> None:
    assert entrypoint(final_stage)[0] == "/bin/sh"
    assert values(final_stage, "CMD") == ['["serve"]']
    assert values(final_stage, "EXPOSE") == ["8787"]


def test_the_entrypoint_execs_the_relay_under_umask_077(
    final_stage: list[tuple[str, str]], tmp_path: Path
) -> None:
    # A stand-in pulse-relay on PATH reports the umask and arguments it got and
    # whether it replaced the shell (same pid: it receives docker's stop signal).
    (tmp_path / "pulse-relay").write_text('#!/bin/sh\nprintf "%s\\n" "$(umask)" "$$" "$@"\n')
    (tmp_path / "pulse-relay").chmod(0o755)
    command = [*entrypoint(final_stage), "watch", "job 1", "--meta", "k=v w"]
    shell = subprocess.Popen(
        ["/bin/sh", "-c", 'umask 022; echo "$$"; exec "$@"', "outer", *command],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}"},
    )
    output, _ = shell.communicate(timeout=30)
    assert shell.returncode == 0
    pid, umask, relay_pid, *arguments = output.splitlines()
    assert umask == "0077"
    assert relay_pid == pid
    assert arguments == ["watch", "job 1", "--meta", "k=v w"]


def test_the_state_directory_is_private(final_stage: list[tuple[str, str]]) -> None:
    (run,) = values(final_stage, "RUN")
    assert "-m 0700 /var/lib/pulse-relay" in run


def test_build_context_is_limited() -> None:
    ignored = (REPO / ".dockerignore").read_text().splitlines()
    assert ignored[ignored.index("*") :][:1] == ["*"]
    copied = [v.split()[0] for v in values(instructions(DOCKERFILE.read_text()), "COPY")]
    for source in copied:
        if not source.startswith("--"):
            assert f"!{source}" in ignored or f"!{source}/" in ignored, source


def test_compose_shows_the_sidecar_use() -> None:
    text = COMPOSE.read_text()
    assert re.search(r"^  relay:$", text, re.MULTILINE)
    assert re.search(r"^  app:$", text, re.MULTILINE)
    # Both on one network, sharing the results volume (read-only for the app).
    assert text.count("networks: [internal]") == 2
    assert re.search(r"- results:/results\s", text) and "- results:/results:ro" in text
    assert "relay-state:/var/lib/pulse-relay" in text
    # Secrets as files, never inline.
    assert "PULSE_WEBHOOK_SECRET" not in text and "whsec_" not in text.replace("whsec_...", "")
    assert "stop_grace_period" in text
    config = (REPO / "examples" / "relay.toml").read_text()
    assert 'url = "http://app:8000/pulse-events"' in config


def test_compose_configuration_is_valid() -> None:
    from pulse_relay.config import load_settings

    settings = load_settings(REPO / "examples" / "relay.toml")
    assert {sink.name for sink in settings.sinks} == {"results", "app"}


def test_compose_app_submits_through_the_pass_through() -> None:
    text = COMPOSE.read_text()
    assert "PULSE_BASE_URL: http://relay:8788/pulse" in text
    # The admin listener faces the private network: with a token, from a secret file.
    assert "PULSE_RELAY_ADMIN__HOST: 0.0.0.0" in text
    assert "PULSE_RELAY_ADMIN__TOKEN_FILE: /run/secrets/admin-token" in text
    assert '"8788:8788"' not in text
    app = (REPO / "examples" / "app.py").read_text()
    assert '"/extract"' in app and "x-api-key" in app


def test_the_image_keeps_the_admin_listener_inside_the_container(
    final_stage: list[tuple[str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    from pulse_relay.cli import _probe_url
    from pulse_relay.config import admin_exposure_problem, load_settings

    env = " ".join(values(final_stage, "ENV"))
    assert "PULSE_RELAY_ADMIN__HOST" not in env
    assert values(final_stage, "EXPOSE") == ["8787"]
    # The image's own variables, as the relay reads them: the HEALTHCHECK probes the
    # admin listener on loopback, and nothing exposes it without a token.
    for name, value in re.findall(r"(PULSE_RELAY_\w+)=(\S+)", env):
        monkeypatch.setenv(name, value)
    settings = load_settings()
    assert admin_exposure_problem(settings) is None
    assert _probe_url(settings, check_ready=False) == "http://127.0.0.1:8788/healthz"
    assert _probe_url(settings, check_ready=True) == "http://127.0.0.1:8788/readyz"


def test_an_admin_listener_opened_in_a_container_needs_its_token_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pulse_relay.cli import _probe_url
    from pulse_relay.config import admin_exposure_problem, load_settings

    monkeypatch.setenv("PULSE_RELAY_ADMIN__HOST", "0.0.0.0")
    problem = admin_exposure_problem(load_settings())
    assert problem is not None and problem.startswith("admin.token:")
    token = tmp_path / "admin-token"
    token.write_text("from-a-docker-secret\n")
    monkeypatch.setenv("PULSE_RELAY_ADMIN__TOKEN_FILE", str(token))
    settings = load_settings()
    assert admin_exposure_problem(settings) is None
    assert settings.admin.token.get_secret_value() == "from-a-docker-secret"
    # The HEALTHCHECK still probes it on loopback, and /healthz needs no token.
    assert _probe_url(settings, check_ready=False) == "http://127.0.0.1:8788/healthz"
