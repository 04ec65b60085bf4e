"""At rest and on the way out: file modes, links swapped in, what a command sees, long
types, replays after pruning or under a new id, and what reaches a terminal — each
probed for real."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import os
import shutil
import sqlite3
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.certs import CertificateAuthority
from bench.common import PYTHON, SECRET, WEBHOOK_PATH, Process, free_port, write_toml
from pulse_relay.config import FileSinkSettings
from pulse_relay.ingress.signature import sign_headers
from pulse_relay.sinks import Delivery, FileSink, PermanentSinkError, RetryableSinkError

# What the relay runs with: secrets a command must never see, and a variable of its own.
WITHHELD = ("PULSE_API_KEY", "PULSE_WEBHOOK_SECRET", "CREDENTIALS_DIRECTORY", "RELAY_CANARY")
HUGE_TYPE_CHARS = 200_000
CONTROL_TYPE = "job.\x1b[2J\x1b[31mcompleted\r\nmsg_forged  accepted\u202e"
DUMP_ENV = """\
import json, os, pathlib, sys
out = pathlib.Path(sys.argv[1], os.environ["PULSE_EVENT_ID"] + ".json")
out.write_text(json.dumps(dict(os.environ)))
"""
URL_SECRETS = ("pulse-user", "url-password", "query-token", "sink-token")
# Signed webhooks sent at once, one with a `\ud800` escape in its type: they share commits.
LONE_SURROGATE_BURST = 40


# Secret-named command variables and HTTP headers whose values check-config must mask.
NAMED_SECRETS = {
    "DB_PASS": "db-pass-value",
    "PRIVATE_KEY": "private-key-value",
    "STRIPE_KEY": "stripe-key-value",
    "X-Relay-Key": "relay-key-value",
    "X-Hub-Sig": "hub-sig-value",
}
# How old the `timestamp` of a hex-signed body sent to be refused is.
STALE_BODY_SECONDS = 600


@dataclass
class AtRestFigures:
    """What `run_at_rest` measured."""

    modes: dict[str, list[str]] = field(default_factory=dict)
    race_writes: int = 0
    race_outcomes: Counter[str] = field(default_factory=Counter)
    race_outside: int = 0
    hard_link: dict[str, str] = field(default_factory=dict)
    env_seen: list[str] = field(default_factory=list)
    env_leaked: list[str] = field(default_factory=list)
    huge_type_answer: str = ""
    huge_type_command_runs: int = 0
    longest_log_line_bytes: int = 0
    replay_after_prune: dict[str, str] = field(default_factory=dict)
    # hmac-sha256-hex: the captured bodies under new ids, before / after pruning.
    hex_new_id: list[str] = field(default_factory=list)
    hex_stale_timestamp: str = ""
    raw_controls_printed: int = 0
    lone_surrogate_type_answers: Counter[str] = field(default_factory=Counter)
    lone_surrogate_field_sent: str = ""
    url_secrets_printed: int = 0
    base_url_warned: bool = False
    named_secrets_printed: int = 0
    # The files check-config warned about as open to other users, by what they are.
    mode_warned: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


@contextlib.contextmanager
def environment(values: dict[str, str], *, umask: int) -> Iterator[None]:
    """Run a block with extra variables in os.environ and a umask (children inherit both)."""
    saved = {name: os.environ.get(name) for name in values}
    previous_umask = os.umask(umask)
    os.environ.update(values)
    try:
        yield
    finally:
        os.umask(previous_umask)
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def post(port: int, body: bytes, headers: dict[str, str]) -> str:
    """POST to the webhook path; "status json-status"."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{WEBHOOK_PATH}", data=body, headers=headers, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return f"{response.status} {json.loads(response.read())['status']}"
    except urllib.error.HTTPError as error:
        text = error.read()
        try:
            return f"{error.code} {json.loads(text).get('status')}"
        except ValueError:
            return f"{error.code} (not JSON)"


def standard_headers(body: bytes, webhook_id: str) -> dict[str, str]:
    return {**sign_headers(SECRET, webhook_id, body), "content-type": "application/json"}


def hex_headers(body: bytes, webhook_id: str | None) -> dict[str, str]:
    """hmac-sha256-hex headers: the body's HMAC in hex, the id header when given."""
    digest = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    headers = {"X-DocExtract-Signature": digest, "content-type": "application/json"}
    return headers | ({"X-Webhook-Id": webhook_id} if webhook_id else {})


def event_body(event_type: str, job_id: str) -> bytes:
    return json.dumps({"type": event_type, "data": {"job_id": job_id}}).encode()


def cli(config: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    command = [PYTHON, "-m", "pulse_relay", "--config", str(config), *args]
    return subprocess.run(command, capture_output=True, timeout=60, check=False)


def wait_for(condition: Callable[[], bool], *, timeout_seconds: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout_seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def mode_text(path: Path) -> str:
    return f"{path.stat().st_mode & 0o7777:04o}"


# -- one real run: modes, the command's environment, long and hostile types, pruning -----


def relay_document(workdir: Path, port: int) -> dict[str, Any]:
    """A relay with a json and a jsonl file sink and a command that dumps its environment."""
    script = workdir / "dump_env.py"
    script.write_text(DUMP_ENV)
    processing = ["job.processing"]
    return {
        "server": {"host": "127.0.0.1", "port": port},
        "verify": {"secrets": [SECRET]},
        "store": {"path": workdir / "state" / "nested" / "relay.db"},
        "admin": {"enabled": False},
        "log": {"format": "json", "level": "debug"},
        "sinks": [
            {
                "name": "files",
                "type": "file",
                "events": processing,
                "directory": workdir / "files",
                "filename": "{date}/{job_id}.json",
            },
            {
                "name": "lines",
                "type": "file",
                "events": processing,
                "format": "jsonl",
                "directory": workdir / "lines",
                "filename": "by-type/{type}.jsonl",
            },
            {
                "name": "env",
                "type": "command",
                "events": ["*"],
                "argv": [PYTHON, str(script), str(workdir / "env")],
            },
        ],
    }


def run_standard_relay(workdir: Path, figures: AtRestFigures) -> None:
    """One relay under umask 022 with secrets in its environment; every probe that needs it."""
    port = free_port()
    (workdir / "env").mkdir(parents=True)
    config = write_toml(workdir / "relay.toml", relay_document(workdir, port))
    credentials = workdir / "credentials"
    credentials.mkdir()
    withheld = dict(
        zip(WITHHELD, ("bench-api-key", SECRET, str(credentials), "canary"), strict=True)
    )
    relay = Process(
        [PYTHON, "-m", "pulse_relay", "--config", str(config), "serve"],
        log_path=workdir / "relay.log",
        health_url=f"http://127.0.0.1:{port}/healthz",
    )
    with environment(withheld, umask=0o022):
        relay.start()
    try:
        _probe_running_relay(workdir, port, config, figures)
    finally:
        if relay.stop() != 0:
            figures.problems.append("the relay did not exit 0")
    lines = (workdir / "relay.log").read_bytes().splitlines()
    figures.longest_log_line_bytes = max(len(line) for line in lines)


def _probe_running_relay(workdir: Path, port: int, config: Path, figures: AtRestFigures) -> None:
    body = event_body("job.processing", "job-at-rest")
    if post(port, body, standard_headers(body, "msg_at_rest")) != "202 accepted":
        figures.problems.append("the ordinary event was not accepted")
    env_dump = workdir / "env" / "msg_at_rest.json"
    wait_for(lambda: env_dump.exists() and env_dump.read_text().endswith("}"))
    wait_for(lambda: any((workdir / "lines").rglob("*.jsonl")))
    _record_modes(workdir, figures)
    seen = json.loads(env_dump.read_text())
    figures.env_seen = sorted(seen)
    figures.env_leaked = [name for name in WITHHELD if name in seen]
    huge = event_body("job." + "x" * HUGE_TYPE_CHARS, "job-huge")
    figures.huge_type_answer = post(port, huge, standard_headers(huge, "msg_huge"))
    hostile = event_body(CONTROL_TYPE, "job-controls")
    post(port, hostile, standard_headers(hostile, "msg_controls"))
    wait_for(lambda: (workdir / "env" / "msg_controls.json").exists())
    figures.huge_type_command_runs = int((workdir / "env" / "msg_huge.json").exists())
    printed = (
        cli(config, "events").stdout.decode() + cli(config, "show", "msg_controls").stdout.decode()
    )
    figures.raw_controls_printed = sum(
        1 for c in printed if c != "\n" and (ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0)
    )
    figures.replay_after_prune["standard"] = _replay_after_prune(
        config, port, [(body, standard_headers(body, "msg_at_rest"))]
    )
    _lone_surrogates(workdir, port, figures)


def _lone_surrogates(workdir: Path, port: int, figures: AtRestFigures) -> None:
    """A `\\ud800` escape in the type of one of 40 webhooks sent at once, then in a
    payload field of an event the json file sink writes."""
    bodies = [event_body("job.processing", f"job-burst-{n}") for n in range(LONE_SURROGATE_BURST)]
    bodies[LONE_SURROGATE_BURST // 2] = b'{"type": "job.\\ud800", "data": {"job_id": "job-x"}}'
    with ThreadPoolExecutor(max_workers=LONE_SURROGATE_BURST) as pool:
        answers = pool.map(
            lambda n: post(port, bodies[n], standard_headers(bodies[n], f"msg_burst_{n}")),
            range(LONE_SURROGATE_BURST),
        )
        figures.lone_surrogate_type_answers = Counter(answers)
    field_body = b'{"type": "job.processing", "data": {"job_id": "job-field", "note": "\\ud800"}}'
    post(port, field_body, standard_headers(field_body, "msg_field"))
    if not wait_for(lambda: any((workdir / "files").rglob("job-field.json"))):
        figures.lone_surrogate_field_sent = "never written"
        return
    (written,) = (workdir / "files").rglob("job-field.json")
    note = json.loads(written.read_bytes())["event"]["data"]["note"]
    figures.lone_surrogate_field_sent = " ".join(f"U+{ord(c):04X}" for c in note)


def _record_modes(workdir: Path, figures: AtRestFigures) -> None:
    database = workdir / "state" / "nested" / "relay.db"
    store = [database, Path(f"{database}-wal"), Path(f"{database}-shm")]
    written = [*(workdir / "files").rglob("*.json"), *(workdir / "lines").rglob("*.jsonl")]
    created = [workdir / "state", database.parent, workdir / "files", workdir / "lines"]
    created += sorted({path.parent for path in written})
    for kind, paths in (
        ("store, WAL, SHM", store),
        ("sink files", written),
        ("directories the relay created", created),
    ):
        figures.modes[kind] = sorted({mode_text(path) for path in paths})
        expected = "0700" if kind.startswith("directories") else "0600"
        if figures.modes[kind] != [expected]:
            figures.problems.append(f"{kind}: modes {figures.modes[kind]}, expected {expected}")


def _replay_after_prune(
    config: Path, port: int, captured: list[tuple[bytes, dict[str, str]]]
) -> str:
    """Once every delivery is done, prune every finished event and send the captured
    requests again: "pruned N; <answer> xM"."""
    store = next(config.parent.rglob("relay.db"))
    wait_for(lambda: _pending(store) == 0)
    pruned = cli(config, "prune", "--older-than", "0")
    if pruned.returncode != 0:
        return f"prune failed: {pruned.stderr.decode().strip()}"
    return f"{pruned.stdout.decode().split()[0]} pruned; {_answers(port, captured)}"


def _pending(store: Path) -> int:
    with contextlib.closing(sqlite3.connect(f"file:{store}?mode=ro", uri=True)) as db:
        row = db.execute("SELECT COUNT(*) FROM deliveries WHERE state = 'pending'").fetchone()
    return int(row[0])


def _answers(port: int, requests: list[tuple[bytes, dict[str, str]]]) -> str:
    answers = Counter(post(port, body, headers) for body, headers in requests)
    return ", ".join(f"{answer} x{count}" for answer, count in sorted(answers.items()))


def run_hex_relay(workdir: Path, figures: AtRestFigures) -> None:
    """hmac-sha256-hex (the body alone is signed): replays after pruning, with and without
    an id header, and under new ids; a body whose own timestamp is stale."""
    port = free_port()
    document = {
        "server": {"host": "127.0.0.1", "port": port},
        "verify": {"scheme": "hmac-sha256-hex", "secrets": [SECRET]},
        "store": {"path": workdir / "relay.db"},
        "admin": {"enabled": False},
        "log": {"format": "json", "level": "warning"},
    }
    workdir.mkdir(parents=True)
    config = write_toml(workdir / "relay.toml", document)
    captured = [
        (event_body("job.completed", "job-hex-1"), "msg_hex"),
        (event_body("job.completed", "job-hex-2"), None),
    ]
    requests = [(body, hex_headers(body, webhook_id)) for body, webhook_id in captured]
    with Process(
        [PYTHON, "-m", "pulse_relay", "--config", str(config), "serve"],
        log_path=workdir / "relay.log",
        health_url=f"http://127.0.0.1:{port}/healthz",
    ):
        for body, headers in requests:
            post(port, body, headers)
        renamed = [
            (body, hex_headers(body, f"msg_new_{n}")) for n, (body, _) in enumerate(captured)
        ]
        figures.hex_new_id.append(_answers(port, renamed))
        stale = json.dumps({"type": "job.completed", "timestamp": time.time() - STALE_BODY_SECONDS})
        figures.hex_stale_timestamp = post(port, stale.encode(), hex_headers(stale.encode(), None))
        figures.replay_after_prune["hmac-sha256-hex"] = _replay_after_prune(config, port, requests)
        renamed = [
            (body, hex_headers(body, f"msg_later_{n}")) for n, (body, _) in enumerate(captured)
        ]
        figures.hex_new_id.append(_answers(port, renamed))


# -- the file sink against links swapped in while it writes -------------------------------


def _delivery(number: int) -> Delivery:
    received_at = f"2026-11-23T10:{number // 6000:02d}:{number % 6000 / 100:09.6f}Z"
    envelope = {"id": f"msg_{number}", "received_at": received_at, "type": "job.completed"}
    body = json.dumps(envelope).encode()
    return Delivery(
        f"msg_{number}", "job.completed", "job-1", "completed", envelope, body, received_at
    )


def _swapper(directory: Path, victim: Path, name: str) -> Callable[[int], None]:
    """Put a symlink to `victim`, then a hard link of it, at `name` or its directory; remove."""

    def swap(step: int) -> None:
        target = directory / name.split("/")[0]
        if step % 3 == 2:
            target.unlink()
            return
        spare = directory / f".spare-{step}"
        if "/" in name:
            with contextlib.suppress(OSError):
                target.rename(directory / f"parked-{step}")
            spare.symlink_to(victim.parent, target_is_directory=True)
        elif step % 3 == 0:
            spare.symlink_to(victim)
        else:
            os.link(victim, spare)
        os.replace(spare, target)

    return swap


def link_race(workdir: Path, writes: int, figures: AtRestFigures) -> None:
    """Writes to four targets while a thread swaps links in; nothing may land outside."""
    for file_format, filename in (
        ("json", "{job_id}.json"),
        ("jsonl", "{job_id}.jsonl"),
        ("json", "sub/{job_id}.json"),
        ("jsonl", "sub/{job_id}.jsonl"),
    ):
        case = workdir / f"{file_format}-{filename.count('/')}"
        directory, outside = case / "sink", case / "outside"
        directory.mkdir(parents=True)
        outside.mkdir()
        victim = outside / "victim"
        victim.write_text("untouched\n")
        swap = _swapper(directory, victim, filename.replace("{job_id}", "job-1"))
        settings = FileSinkSettings(
            type="file", name="race", directory=directory, format=file_format, filename=filename
        )
        asyncio.run(_race(FileSink(settings), swap, writes, figures.race_outcomes))
        figures.race_writes += writes
        intact = victim.read_text() == "untouched\n"
        figures.race_outside += len(list(outside.iterdir())) - 1 + (0 if intact else 1)
    if figures.race_outside:
        figures.problems.append(f"link race: {figures.race_outside} envelopes outside")


@contextlib.contextmanager
def racing(swap: Callable[[int], None]) -> Iterator[None]:
    """Call `swap(step)` over and over in a thread (OSError ignored) while the block runs."""
    stop = threading.Event()

    def keep_swapping() -> None:
        step = 0
        while not stop.is_set():
            with contextlib.suppress(OSError):
                swap(step)
            step += 1

    racer = threading.Thread(target=keep_swapping, daemon=True)
    racer.start()
    try:
        yield
    finally:
        stop.set()
        racer.join()


async def _race(
    sink: FileSink, swap: Callable[[int], None], writes: int, outcomes: Counter[str]
) -> None:
    with racing(swap):
        for number in range(writes):
            try:
                await sink.deliver(_delivery(number))
                outcomes["written"] += 1
            except PermanentSinkError:
                outcomes["refused (dead)"] += 1
            except RetryableSinkError:
                outcomes["retried"] += 1


def hard_links(workdir: Path, figures: AtRestFigures) -> None:
    """A hard link of an outside file placed at the target: refused, the file untouched."""
    for file_format in ("json", "jsonl"):
        directory, victim = workdir / file_format, workdir / f"victim-{file_format}"
        directory.mkdir(parents=True)
        victim.write_text("untouched\n")
        os.link(victim, directory / "job-1.json")
        settings = FileSinkSettings(
            type="file",
            name="links",
            directory=directory,
            format=file_format,
            filename="{job_id}.json",
        )
        try:
            asyncio.run(FileSink(settings).deliver(_delivery(1)))
            answer = "written"
        except (PermanentSinkError, RetryableSinkError) as error:
            answer = f"{type(error).__name__}: {error.reason}"
        changed = victim.read_text() != "untouched\n"
        figures.hard_link[file_format] = answer + ("; outside file CHANGED" if changed else "")
        if changed or not answer.startswith("PermanentSinkError"):
            figures.problems.append(f"hard link ({file_format}): {figures.hard_link[file_format]}")


def check_config_output(workdir: Path, figures: AtRestFigures) -> None:
    """check-config with secrets in URLs, secret-named variables and headers, a plain-http
    Pulse API, and a config file (holding the API key) and a TLS key both mode 0644."""
    workdir.mkdir(parents=True)
    (workdir / "pki").mkdir()
    issued = CertificateAuthority(workdir / "pki").issue("relay")
    headers = {name: value for name, value in NAMED_SECRETS.items() if name.startswith("X-")}
    env = {name: value for name, value in NAMED_SECRETS.items() if name not in headers}
    document = {
        "server": {"tls_cert_file": issued.cert_file, "tls_key_file": issued.key_file},
        "pulse": {
            "base_url": "http://pulse-user:url-password@pulse.internal?key=query-token",
            "api_key": "pulse-api-key-value",
        },
        "store": {"path": workdir / "relay.db"},
        "sinks": [
            {
                "name": "app",
                "type": "http",
                "url": "https://app.example/h?t=sink-token",
                "headers": headers,
            },
            {"name": "cmd", "type": "command", "argv": [PYTHON, "-c", "pass"], "env": env},
        ],
    }
    config = write_toml(workdir / "relay.toml", document)
    for path in (config, issued.key_file):
        path.chmod(0o644)
    result = cli(config, "check-config")
    printed = (result.stdout + result.stderr).decode()
    figures.url_secrets_printed = sum(printed.count(secret) for secret in URL_SECRETS)
    figures.named_secrets_printed = sum(printed.count(value) for value in NAMED_SECRETS.values())
    figures.base_url_warned = "warning: pulse.base_url: " in printed
    figures.mode_warned = [
        what
        for what, path in (("config file", config), ("TLS key", issued.key_file))
        if f" {path} holds " in printed and "(mode 0644)" in printed
    ]
    if (
        figures.url_secrets_printed
        or figures.named_secrets_printed
        or not figures.base_url_warned
        or len(figures.mode_warned) != 2
    ):
        figures.problems.append(f"check-config printed: {printed}")


def run_at_rest(workdir: Path, *, race_writes: int) -> AtRestFigures:
    """Every probe, each in its own folder under `workdir`; figures and problems."""
    if workdir.exists():
        shutil.rmtree(workdir)
    figures = AtRestFigures()
    run_standard_relay(workdir / "standard", figures)
    run_hex_relay(workdir / "hex", figures)
    link_race(workdir / "race", race_writes, figures)
    hard_links(workdir / "links", figures)
    check_config_output(workdir / "check-config", figures)
    _judge(figures)
    return figures


def _judge(figures: AtRestFigures) -> None:
    if figures.env_leaked:
        figures.problems.append(f"the command saw {figures.env_leaked}")
    if figures.huge_type_answer != "200 invalid" or figures.huge_type_command_runs:
        figures.problems.append(f"200 KB type: {figures.huge_type_answer}")
    if figures.longest_log_line_bytes > 4096:
        figures.problems.append(f"a log line of {figures.longest_log_line_bytes} bytes")
    if any(answers != "200 duplicate x2" for answers in figures.hex_new_id):
        figures.problems.append(f"hex bodies under new ids: {figures.hex_new_id}")
    if figures.hex_stale_timestamp != "401 unauthorized":
        figures.problems.append(f"hex body with a stale timestamp: {figures.hex_stale_timestamp}")
    for scheme, answers in figures.replay_after_prune.items():
        if "; 200 duplicate x" not in answers or "202" in answers or answers.startswith("0 "):
            figures.problems.append(f"replay after prune ({scheme}): {answers}")
    if figures.raw_controls_printed:
        figures.problems.append(f"{figures.raw_controls_printed} raw control characters printed")
    expected = Counter({"200 invalid": 1, "202 accepted": LONE_SURROGATE_BURST - 1})
    if figures.lone_surrogate_type_answers != expected:
        answers = dict(figures.lone_surrogate_type_answers)
        figures.problems.append(f"a lone surrogate in one type of a burst: {answers}")
    if figures.lone_surrogate_field_sent != "U+FFFD":
        sent = figures.lone_surrogate_field_sent
        figures.problems.append(f"a lone surrogate in a payload field was sent as {sent}")
