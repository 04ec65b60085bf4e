"""The command sink with real scripts and real processes."""

from __future__ import annotations

import asyncio
import base64
import errno
import json
import os
import stat
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from pulse_relay.config import CommandSinkSettings
from pulse_relay.sinks import (
    CommandSink,
    PermanentSinkError,
    RetryableSinkError,
    SinkResult,
    build_sink,
)
from pulse_relay.sinks.command import MAX_OUTPUT_TAIL_BYTES
from tests.helpers import make_delivery, wait_for


def write_script(directory: Path, name: str, text: str, *, python: bool = True) -> Path:
    """An executable script: Python run by this interpreter, or /bin/sh."""
    interpreter = sys.executable if python else "/bin/sh"
    path = directory / name
    path.write_text(f"#!{interpreter}\n{text}")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def make_sink(argv: list[str | Path], **options: Any) -> CommandSink:
    settings = CommandSinkSettings(
        type="command", name="hook", argv=[str(arg) for arg in argv], **options
    )
    return CommandSink(settings)


def is_gone(pid: int) -> bool:
    """True when `pid` no longer runs; a zombie nobody has reaped yet counts as gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return text.rpartition(")")[2].split()[0] in {"Z", "X"}


def _live_processes(field: int, value: int) -> list[int]:
    """Processes still running (zombies aside) whose /proc stat `field` (after the name:
    1 the parent, 2 the process group) is `value`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rpartition(")")[2].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if int(fields[field]) == value and fields[0] not in {"Z", "X"}:
            found.append(int(entry.name))
    return found


def live_members_of_group(pgid: int) -> list[int]:
    return _live_processes(2, pgid)


RECORDER = """
import base64, json, os, sys
data = sys.stdin.buffer.read()
report = {
    "stdin": base64.b64encode(data).decode(),
    "argv": sys.argv,
    "cwd": os.getcwd(),
    "env": {k: v for k, v in os.environ.items() if k.startswith(("PULSE_", "APP_"))},
}
with open(sys.argv[1], "w") as out:
    json.dump(report, out)
print("recorded", len(data), "bytes")
"""


async def test_stdin_gets_the_exact_body_and_env_the_event(tmp_path: Path) -> None:
    script = write_script(tmp_path, "record.py", RECORDER)
    report_path = tmp_path / "report.json"
    sink = make_sink([script, report_path])
    delivery = make_delivery(text="ünïcode\n\tand more")
    result = await sink.deliver(delivery)
    assert isinstance(result, SinkResult)
    assert result.detail == "exit status 0"
    assert result.output_tail == f"[stdout]\nrecorded {len(delivery.body)} bytes\n"
    report = json.loads(report_path.read_text())
    assert base64.b64decode(report["stdin"]) == delivery.body
    assert report["argv"] == [str(script), str(report_path)]
    assert report["env"] == {
        "PULSE_EVENT_ID": "msg_1",
        "PULSE_EVENT_TYPE": "job.completed",
        "PULSE_JOB_ID": "job-1",
        "PULSE_JOB_STATUS": "completed",
    }


async def test_unknown_job_fields_are_empty_strings(tmp_path: Path) -> None:
    script = write_script(tmp_path, "record.py", RECORDER)
    report_path = tmp_path / "report.json"
    sink = make_sink([script, report_path])
    await sink.deliver(
        make_delivery(event_type="credits.low_balance", job_id=None, job_status=None)
    )
    env = json.loads(report_path.read_text())["env"]
    assert env["PULSE_JOB_ID"] == ""
    assert env["PULSE_JOB_STATUS"] == ""
    assert env["PULSE_EVENT_TYPE"] == "credits.low_balance"


async def test_extra_env_and_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APP_INHERITED", "from-the-relay")
    script = write_script(tmp_path, "record.py", RECORDER)
    workdir = tmp_path / "work"
    workdir.mkdir()
    report_path = tmp_path / "report.json"
    sink = make_sink(
        [script, report_path],
        cwd=workdir,
        # The configuration cannot pose as a different event.
        env={"APP_MODE": "relay", "PULSE_EVENT_ID": "spoofed"},
    )
    await sink.deliver(make_delivery())
    report = json.loads(report_path.read_text())
    assert report["cwd"] == str(workdir)
    assert report["env"]["APP_MODE"] == "relay"
    # The relay's own environment stays with the relay.
    assert "APP_INHERITED" not in report["env"]
    assert report["env"]["PULSE_EVENT_ID"] == "msg_1"


async def test_non_zero_exit_is_retryable_with_the_output(tmp_path: Path) -> None:
    script = write_script(
        tmp_path,
        "fail.py",
        "import sys\nsys.stdin.read()\nprint('working')\n"
        "print('database is locked', file=sys.stderr)\nsys.exit(3)\n",
    )
    sink = make_sink([script])
    with pytest.raises(RetryableSinkError) as caught:
        await sink.deliver(make_delivery())
    assert caught.value.reason == "exit status 3"
    assert caught.value.output_tail == "[stdout]\nworking\n\n[stderr]\ndatabase is locked\n"


async def test_exit_one_is_retryable(tmp_path: Path) -> None:
    script = write_script(tmp_path, "one.sh", "echo nope >&2\nexit 1\n", python=False)
    with pytest.raises(RetryableSinkError, match=r"^exit status 1$") as caught:
        await make_sink([script]).deliver(make_delivery())
    assert caught.value.output_tail == "[stderr]\nnope\n"


async def test_death_by_signal_is_retryable(tmp_path: Path) -> None:
    script = write_script(tmp_path, "die.sh", "kill -TERM $$\n", python=False)
    with pytest.raises(RetryableSinkError, match=r"^killed by SIGTERM$"):
        await make_sink([script]).deliver(make_delivery())


async def test_timeout_kills_the_whole_process_group(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    script = write_script(
        tmp_path,
        "hang.sh",
        # The grandchild shares the pipes and the process group.
        'sleep 100 &\necho "$$ $!" > "$1"\nsleep 100\n',
        python=False,
    )
    sink = make_sink([script, pids], timeout_seconds=2)
    with pytest.raises(RetryableSinkError) as caught:
        await sink.deliver(make_delivery())
    assert caught.value.reason == "timed out after 2s, process group killed"
    leader, grandchild = (int(pid) for pid in pids.read_text().split())
    # SIGKILL reaches every member at once, but each takes a moment to go: a member
    # left alive would still be running its `sleep 100` at the deadline.
    await wait_for(
        lambda: is_gone(leader) and is_gone(grandchild) and live_members_of_group(leader) == []
    )


async def test_cancelled_delivery_leaves_no_process(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    script = write_script(
        tmp_path, "hang.sh", 'sleep 100 &\necho "$$ $!" > "$1"\nsleep 100\n', python=False
    )
    sink = make_sink([script, pids], timeout_seconds=60)
    task = asyncio.create_task(sink.deliver(make_delivery()))
    await wait_for(lambda: pids.exists() and len(pids.read_text().split()) == 2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    leader, grandchild = (int(pid) for pid in pids.read_text().split())
    await wait_for(lambda: is_gone(leader) and is_gone(grandchild))


async def test_background_process_holding_the_pipes_does_not_hold_the_delivery(
    tmp_path: Path,
) -> None:
    pid_file = tmp_path / "pid"
    script = write_script(
        tmp_path, "spawn.sh", 'cat > /dev/null\nsleep 100 &\necho $! > "$1"\nexit 0\n', python=False
    )
    # A timeout long enough that reaching it would fail the test's own time limit.
    sink = make_sink([script, pid_file], timeout_seconds=600)
    result = await sink.deliver(make_delivery())
    assert result.detail == "exit status 0"
    background = int(pid_file.read_text())
    # Left alone after a clean exit; the test tidies it up.
    assert not is_gone(background)
    os.kill(background, 9)
    await wait_for(lambda: is_gone(background))


async def test_payload_text_never_reaches_a_shell_or_argv(tmp_path: Path) -> None:
    marker = tmp_path / "X"
    nasty = f"-rf $(touch {marker}); touch {marker}; `touch {marker}`\n--help\n-e"
    received, type_seen = tmp_path / "received", tmp_path / "type_seen"
    script = write_script(
        tmp_path,
        "consume.sh",
        'cat > "$1"\nprintf "%s" "$PULSE_EVENT_TYPE" > "$2"\necho "args: $#"\n',
        python=False,
    )
    sink = make_sink([script, received, type_seen], cwd=tmp_path)
    delivery = make_delivery(event_id="-msg", event_type=nasty, text=nasty)
    result = await sink.deliver(delivery)
    assert received.read_bytes() == delivery.body
    assert type_seen.read_text() == nasty
    assert result.output_tail == "[stdout]\nargs: 2\n"
    assert not marker.exists()


async def test_large_output_keeps_only_the_tail(tmp_path: Path) -> None:
    # Megabytes of output before reading stdin: the relay must drain the
    # pipes while it writes, or both sides would wait on each other.
    script = write_script(
        tmp_path,
        "chatty.py",
        "import sys\n"
        "sys.stdout.write('o' * 3_000_000 + 'END-OF-STDOUT')\n"
        "sys.stdout.flush()\n"
        "sys.stderr.write('e' * 2_000_000 + 'END-OF-STDERR')\n"
        "sys.stderr.flush()\n"
        "data = sys.stdin.buffer.read()\n"
        "sys.exit(0 if data.startswith(b'{') else 5)\n",
    )
    sink = make_sink([script])
    delivery = make_delivery(text="z" * 3_000_000)
    result = await sink.deliver(delivery)
    tail = result.output_tail
    assert tail is not None
    stdout_part, stderr_part = tail.split("\n[stderr")
    assert stdout_part.startswith("[stdout (last 4096 of 3000013 bytes)]\n")
    assert stdout_part.endswith("o" * (MAX_OUTPUT_TAIL_BYTES - 13) + "END-OF-STDOUT")
    assert stderr_part.startswith(" (last 4096 of 2000013 bytes)]\n")
    assert stderr_part.endswith("END-OF-STDERR")
    assert len(tail) < 2 * MAX_OUTPUT_TAIL_BYTES + 200


async def test_child_closing_stdin_early_is_fine(tmp_path: Path) -> None:
    script = write_script(tmp_path, "ignore.py", "import os\nos.close(0)\nprint('ignored')\n")
    sink = make_sink([script])
    # Far larger than a pipe buffer, so the write hits the closed pipe.
    result = await sink.deliver(make_delivery(text="x" * 5_000_000))
    assert result.output_tail == "[stdout]\nignored\n"


async def test_missing_command_is_dead_at_once_with_a_clear_reason(tmp_path: Path) -> None:
    sink = make_sink([tmp_path / "not-installed"])
    with pytest.raises(PermanentSinkError, match=r"command not found: .*not-installed"):
        await sink.deliver(make_delivery())
    sink = make_sink(["pulse-relay-no-such-program-on-path"])
    with pytest.raises(PermanentSinkError, match="command not found"):
        await sink.deliver(make_delivery())


async def test_non_executable_command_is_dead_at_once(tmp_path: Path) -> None:
    script = tmp_path / "plain.sh"
    script.write_text("#!/bin/sh\nexit 0\n")
    script.chmod(0o644)
    with pytest.raises(PermanentSinkError, match="command not executable"):
        await make_sink([script]).deliver(make_delivery())


async def test_missing_working_directory_is_dead_at_once(tmp_path: Path) -> None:
    script = write_script(tmp_path, "ok.sh", "exit 0\n", python=False)
    sink = make_sink([script], cwd=tmp_path / "gone")
    with pytest.raises(PermanentSinkError, match="cannot enter working directory"):
        await sink.deliver(make_delivery())


async def test_an_environment_too_big_to_exec_is_dead_at_once(tmp_path: Path) -> None:
    # What a 200 KB event type stored before types were bounded would do: E2BIG,
    # which no retry can cure.
    script = write_script(tmp_path, "ok.sh", "exit 0\n", python=False)
    with pytest.raises(PermanentSinkError, match="too long"):
        await make_sink([script]).deliver(make_delivery(event_type="job." + "x" * 200_000))


async def test_a_start_failure_that_may_pass_is_retried(tmp_path: Path) -> None:
    sink = make_sink(["true"])
    busy = BlockingIOError(errno.EAGAIN, "Resource temporarily unavailable")
    assert isinstance(sink._start_failure(busy), RetryableSinkError)


async def test_the_child_sees_only_the_allowed_part_of_the_relays_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    allowed = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "LC_TIME": "C.UTF-8",
        "TZ": "UTC",
        "HOME": str(tmp_path),
    }
    withheld = {
        "PULSE_API_KEY": "relay-api-key",
        "PULSE_WEBHOOK_SECRET": "whsec_relay",
        "PULSE_RELAY_STORE__PATH": "/var/lib/pulse-relay/pulse-relay.db",
        "CREDENTIALS_DIRECTORY": str(tmp_path / "credentials"),
        "AWS_SECRET_ACCESS_KEY": "relay-cloud-key",
        "LCX": "not a locale variable",
    }
    for name in list(os.environ):
        monkeypatch.delenv(name)
    for name, value in {**allowed, **withheld}.items():
        monkeypatch.setenv(name, value)
    script = write_script(
        tmp_path,
        "env.py",
        "import json, os, sys\njson.dump(dict(os.environ), open(sys.argv[1], 'w'))\n",
    )
    report_path = tmp_path / "env.json"
    await make_sink([script, report_path], env={"APP_MODE": "relay"}).deliver(make_delivery())
    assert json.loads(report_path.read_text()) == {
        **allowed,
        "APP_MODE": "relay",
        "PULSE_EVENT_ID": "msg_1",
        "PULSE_EVENT_TYPE": "job.completed",
        "PULSE_JOB_ID": "job-1",
        "PULSE_JOB_STATUS": "completed",
    }


async def test_nul_in_event_text_does_not_break_the_environment(tmp_path: Path) -> None:
    script = write_script(tmp_path, "record.py", RECORDER)
    report_path = tmp_path / "report.json"
    await make_sink([script, report_path]).deliver(make_delivery(event_type="job.\x00odd"))
    assert json.loads(report_path.read_text())["env"]["PULSE_EVENT_TYPE"] == "job.\ufffdodd"


async def test_argv_that_exec_can_never_take_goes_dead(tmp_path: Path) -> None:
    script = write_script(tmp_path, "ok.sh", "exit 0\n", python=False)
    settings = CommandSinkSettings.model_construct(
        type="command", name="hook", argv=[str(script), "bad\x00arg"]
    )
    with pytest.raises(PermanentSinkError, match="null byte"):
        await CommandSink(settings).deliver(make_delivery())


async def test_build_sink(tmp_path: Path) -> None:
    settings = CommandSinkSettings(
        type="command", name="hook", argv=["true"], events=["job.completed"]
    )
    sink = build_sink(settings)
    assert isinstance(sink, CommandSink)
    await sink.close()


def live_children() -> list[int]:
    """This process's children that still run (zombies waiting to be reaped excluded)."""
    return _live_processes(1, os.getpid())


async def test_the_command_starts_on_a_worker_thread_not_the_loops(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The loop stands still while a child is forked on its thread; see sinks/spawn.py.
    started_on: list[threading.Thread] = []
    real_popen = subprocess.Popen

    def recording_popen(*args: Any, **kwargs: Any) -> subprocess.Popen[bytes]:
        started_on.append(threading.current_thread())
        return real_popen(*args, **kwargs)

    monkeypatch.setattr(subprocess, "Popen", recording_popen)
    script = write_script(tmp_path, "echo.sh", "cat\n", python=False)
    result = await make_sink([script]).deliver(make_delivery(text="on its own thread"))
    assert result.output_tail is not None and "on its own thread" in result.output_tail
    assert len(started_on) == 1
    assert started_on[0] is not threading.current_thread()
    assert started_on[0].name.startswith("command-sink-hook")


async def test_a_running_command_is_waited_for_through_a_pidfd_not_a_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    opened: list[int] = []
    real_pidfd_open = os.pidfd_open

    def recording_pidfd_open(pid: int, flags: int = 0) -> int:
        opened.append(pid)
        return real_pidfd_open(pid, flags)

    monkeypatch.setattr(os, "pidfd_open", recording_pidfd_open)
    pid_file = tmp_path / "pid"
    script = write_script(tmp_path, "slow.sh", 'echo $$ > "$1"\nsleep 0.3\nexit 3\n', python=False)
    delivery = asyncio.create_task(make_sink([script, pid_file]).deliver(make_delivery()))
    await wait_for(lambda: pid_file.exists() and pid_file.read_text().strip() != "")
    # asyncio 3.11's default would be a thread per child, blocked in waitpid.
    assert [t.name for t in threading.enumerate() if t.name.startswith("asyncio-waitpid")] == []
    with pytest.raises(RetryableSinkError, match=r"^exit status 3$"):
        await delivery
    assert opened == [int(pid_file.read_text())]


async def test_without_pidfds_the_exit_and_a_timeout_are_still_seen(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refused(_pid: int, _flags: int = 0) -> int:
        raise OSError(errno.ENOSYS, "Function not implemented")

    # As under a seccomp profile that refuses pidfd_open: a worker thread waits instead.
    monkeypatch.setattr(os, "pidfd_open", refused)
    script = write_script(tmp_path, "three.sh", "cat > /dev/null\nexit 3\n", python=False)
    with pytest.raises(RetryableSinkError, match=r"^exit status 3$"):
        await make_sink([script]).deliver(make_delivery())
    pids = tmp_path / "pids"
    hang = write_script(tmp_path, "hang.sh", 'echo "$$" > "$1"\nsleep 100\n', python=False)
    with pytest.raises(RetryableSinkError, match="timed out after 1s"):
        await make_sink([hang, pids], timeout_seconds=1).deliver(make_delivery())
    assert is_gone(int(pids.read_text()))


async def test_cancelled_while_the_command_starts_leaves_no_process(tmp_path: Path) -> None:
    script = write_script(tmp_path, "hang.sh", "sleep 100\n", python=False)
    sink = make_sink([script], timeout_seconds=60)
    task = asyncio.create_task(sink.deliver(make_delivery()))
    # One turn of the loop: the start has been handed to its thread, which has not answered.
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # Killed and reaped before the cancellation was let through.
    assert live_children() == []
