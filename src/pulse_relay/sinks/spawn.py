"""A child process started on a worker thread, its pipes and exit then driven by the loop.

`loop.subprocess_exec` forks on the event loop's thread: the loop stands still
until the child has called exec, which in a fan-out drain was a fifth of the
loop's time. Here the start (`subprocess.Popen`, whose fork_exec lets go of the
GIL while the vforked child runs) happens on a worker thread; the loop only
connects the pipes and watches the exit, through a pidfd when the kernel allows
one, else with a blocking wait on the same worker threads. What the protocol
sees is what `loop.subprocess_exec` gives it: data per fd, each pipe's loss,
and the exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Executor
from pathlib import Path
from typing import IO, cast


class _PipeReader(asyncio.Protocol):
    """Hands one output pipe's data and loss to the subprocess protocol, tagged with its fd."""

    def __init__(self, protocol: asyncio.SubprocessProtocol, fd: int) -> None:
        self._protocol = protocol
        self._fd = fd

    def data_received(self, data: bytes) -> None:
        self._protocol.pipe_data_received(self._fd, data)

    def connection_lost(self, exc: Exception | None) -> None:
        self._protocol.pipe_connection_lost(self._fd, exc)


class _PipeWriter(asyncio.BaseProtocol):
    """Tells the subprocess protocol when stdin is gone (closed by us, or by the child)."""

    def __init__(self, protocol: asyncio.SubprocessProtocol) -> None:
        self._protocol = protocol

    def connection_lost(self, exc: Exception | None) -> None:
        self._protocol.pipe_connection_lost(0, exc)


class ChildProcess:
    """A started child: the parts of asyncio.SubprocessTransport the command sink uses."""

    def __init__(
        self,
        process: subprocess.Popen[bytes],
        pipes: dict[int, asyncio.BaseTransport],
        unwatch: Callable[[], None],
    ) -> None:
        self._process = process
        self._pipes = pipes
        self._unwatch = unwatch

    def get_pid(self) -> int:
        return self._process.pid

    def get_returncode(self) -> int | None:
        return self._process.returncode

    def get_pipe_transport(self, fd: int) -> asyncio.BaseTransport | None:
        return self._pipes.get(fd)

    def close(self) -> None:
        """Close the pipes and stop watching the exit (the caller has ended the process)."""
        for pipe in self._pipes.values():
            if not pipe.is_closing():
                pipe.close()
        self._unwatch()


async def start_child(
    executor: Executor,
    protocol: asyncio.SubprocessProtocol,
    argv: Sequence[str],
    env: Mapping[str, str],
    cwd: Path | None,
) -> ChildProcess:
    """Start `argv` in a session of its own on `executor`, then connect its pipes and its
    exit to `protocol` on the loop; raises what Popen raises (OSError, ValueError)."""
    loop = asyncio.get_running_loop()
    process = await loop.run_in_executor(executor, _popen, argv, env, cwd)
    # Popen made all three pipes; each transport owns (and closes) its file.
    stdin, stdout, stderr = (
        cast(IO[bytes], pipe) for pipe in (process.stdin, process.stdout, process.stderr)
    )
    pipes: dict[int, asyncio.BaseTransport] = {}
    pipes[0], _ = await loop.connect_write_pipe(lambda: _PipeWriter(protocol), stdin)
    pipes[1], _ = await loop.connect_read_pipe(lambda: _PipeReader(protocol, 1), stdout)
    pipes[2], _ = await loop.connect_read_pipe(lambda: _PipeReader(protocol, 2), stderr)
    unwatch = _watch_exit(loop, executor, process, protocol.process_exited)
    return ChildProcess(process, pipes, unwatch)


def kill_group(pid: int) -> None:
    """SIGKILL the process group `pid` leads (a child started here leads its own)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def _popen(
    argv: Sequence[str], env: Mapping[str, str], cwd: Path | None
) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        argv,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        cwd=cwd,
        # Its own process group, so a timeout can kill everything the
        # command started, not just the command.
        start_new_session=True,
    )


def _watch_exit(
    loop: asyncio.AbstractEventLoop,
    executor: Executor,
    process: subprocess.Popen[bytes],
    on_exit: Callable[[], None],
) -> Callable[[], None]:
    """Call `on_exit` once `process` has exited and is reaped; returns the undo."""
    try:
        pidfd = os.pidfd_open(process.pid)
    except (AttributeError, OSError):
        # No pidfd (an old kernel, a seccomp profile that refuses it): a worker
        # thread waits instead.
        waited = loop.run_in_executor(executor, process.wait)
        waited.add_done_callback(lambda _: on_exit())
        return lambda: None
    return _PidfdWatch(loop, process, pidfd, on_exit).close


class _PidfdWatch:
    """The loop watching a child's pidfd, which turns readable when the child exits."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        process: subprocess.Popen[bytes],
        pidfd: int,
        on_exit: Callable[[], None],
    ) -> None:
        self._loop = loop
        self._process = process
        self._pidfd: int | None = pidfd
        self._on_exit = on_exit
        loop.add_reader(pidfd, self._exited)

    def close(self) -> None:
        if self._pidfd is not None:
            self._loop.remove_reader(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = None

    def _exited(self) -> None:
        self.close()
        # Readable means exited: this wait does not block, and it reaps the child.
        self._process.wait()
        self._on_exit()
