"""The command sink: run a program (never a shell) with the envelope on its stdin."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import signal
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, cast

from pulse_relay.sinks.base import (
    Delivery,
    PermanentSinkError,
    RetryableSinkError,
    SinkResult,
)
from pulse_relay.sinks.spawn import ChildProcess, kill_group, start_child

if TYPE_CHECKING:
    from pulse_relay.config import CommandSinkSettings

# How much of each of stdout and stderr is kept for the attempt log.
MAX_OUTPUT_TAIL_BYTES = 4096
# After the command exits, how long its pipes may stay open (a background
# process it started still holding them) before the relay stops listening.
PIPE_DRAIN_GRACE_SECONDS = 1.0
# After SIGKILL the process is gone at once unless the kernel is stuck (an
# unreachable network filesystem); do not hang the delivery on that. With the
# drain grace this stays well inside the margin callers add to the timeout.
KILL_WAIT_SECONDS = 2.0
# What a child may inherit from the relay's environment: where programs are,
# language, time zone and home. Nothing else: the relay's own environment holds
# its secrets (PULSE_API_KEY, PULSE_WEBHOOK_SECRET, CREDENTIALS_DIRECTORY...).
INHERITED_VARIABLES = frozenset({"PATH", "LANG", "TZ", "HOME"})
INHERITED_PREFIXES = ("LC_",)
# Start failures that trying again cannot cure: the program or its working
# directory is missing or not usable, or the arguments and environment are too big.
_PERMANENT_START_ERRNOS = frozenset(
    {
        errno.ENOENT,
        errno.EACCES,
        errno.E2BIG,
        errno.ENOEXEC,
        errno.ENOTDIR,
        errno.EISDIR,
        errno.ELOOP,
        errno.ENAMETOOLONG,
        errno.EPERM,
    }
)


class _OutputCollector(asyncio.SubprocessProtocol):
    """Keeps only the last bytes of stdout and stderr, however much the child writes."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.tails: dict[int, bytearray] = {1: bytearray(), 2: bytearray()}
        self.total_bytes: dict[int, int] = {1: 0, 2: 0}
        self.exited = loop.create_future()
        self._open_pipes = {0, 1, 2}
        self.pipes_closed = loop.create_future()

    def pipe_data_received(self, fd: int, data: bytes | str) -> None:
        chunk = data.encode() if isinstance(data, str) else data
        tail = self.tails[fd]
        tail += chunk
        # Trimming as data arrives, rather than reading into a buffer, is what
        # keeps a chatty child from costing memory or blocking on a full pipe.
        del tail[:-MAX_OUTPUT_TAIL_BYTES]
        self.total_bytes[fd] += len(chunk)

    def pipe_connection_lost(self, fd: int, exc: Exception | None) -> None:
        # stdin lost early (the child closed it, EPIPE) is ordinary: what the
        # command did with the input is told by its exit status.
        self._open_pipes.discard(fd)
        if not self._open_pipes - {0} and not self.pipes_closed.done():
            self.pipes_closed.set_result(None)

    def process_exited(self) -> None:
        if not self.exited.done():
            self.exited.set_result(None)

    def output_tail(self) -> str | None:
        """Both tails, labelled, decoded leniently; None when the command printed nothing."""
        parts = []
        for fd, label in ((1, "stdout"), (2, "stderr")):
            tail = self.tails[fd]
            if not tail:
                continue
            dropped = self.total_bytes[fd] - len(tail)
            note = f" (last {len(tail)} of {self.total_bytes[fd]} bytes)" if dropped else ""
            parts.append(f"[{label}{note}]\n{tail.decode('utf-8', errors='replace')}")
        return "\n".join(parts) if parts else None


def _env_value(value: str) -> str:
    # A NUL cannot be passed in the environment; event text comes from the
    # sender, so it must not make the exec fail.
    return value.replace("\x00", "\ufffd")


class CommandSink:
    """Runs `settings.argv` once per delivery, in its own process group."""

    def __init__(self, settings: CommandSinkSettings) -> None:
        self.name = settings.name
        self._settings = settings
        # Read once: walking os.environ cost more loop time per delivery than the
        # rest of the environment's making, and the relay's own does not change.
        self._base_environment = inherited_environment(os.environ) | settings.env
        # Starts (and, without pidfds, waits) happen here, one thread per delivery slot.
        self._executor = ThreadPoolExecutor(
            max_workers=settings.concurrency, thread_name_prefix=f"command-sink-{self.name}"
        )

    def _environment(self, delivery: Delivery) -> dict[str, str]:
        env = dict(self._base_environment)
        # Set last so the configuration cannot disguise which event this is.
        env["PULSE_EVENT_ID"] = _env_value(delivery.event_id)
        env["PULSE_EVENT_TYPE"] = _env_value(delivery.event_type)
        env["PULSE_JOB_ID"] = _env_value(delivery.job_id or "")
        env["PULSE_JOB_STATUS"] = _env_value(delivery.job_status or "")
        return env

    def _start_failure(self, exc: OSError) -> PermanentSinkError | RetryableSinkError:
        """Dead at once when retrying cannot help (ENOENT, EACCES, E2BIG...), else retryable."""
        program = self._settings.argv[0]
        cwd = self._settings.cwd
        if cwd is not None and exc.filename is not None and str(exc.filename) == str(cwd):
            reason = f"cannot enter working directory {str(cwd)!r}: {exc.strerror}"
        elif isinstance(exc, FileNotFoundError):
            reason = f"command not found: {program!r}"
        elif isinstance(exc, PermissionError):
            reason = f"command not executable: {program!r}: {exc.strerror}"
        elif exc.errno == errno.E2BIG:
            reason = f"cannot start {program!r}: arguments and environment too long (E2BIG)"
        else:
            reason = f"cannot start {program!r}: {exc.strerror or exc}"
        if exc.errno in _PERMANENT_START_ERRNOS:
            return PermanentSinkError(reason)
        # Out of processes or memory for a moment (EAGAIN, ENOMEM): worth another try.
        return RetryableSinkError(reason)

    async def _start(self, delivery: Delivery) -> tuple[ChildProcess, _OutputCollector]:
        """Start the command; the errors that mean it cannot start become sink errors."""
        collector = _OutputCollector(asyncio.get_running_loop())
        # Not loop.subprocess_exec: it forks on the loop's thread (see spawn.py).
        # Output is trimmed as it arrives, the exit is seen even while a leftover
        # grandchild keeps a pipe open, and the pipes can be closed.
        start = asyncio.ensure_future(
            start_child(
                self._executor,
                collector,
                self._settings.argv,
                self._environment(delivery),
                self._settings.cwd,
            )
        )
        try:
            return await asyncio.shield(start), collector
        except asyncio.CancelledError:
            # Let the start complete (a thread cannot be stopped halfway), then
            # kill the group: nothing the command started outlives the delivery.
            with contextlib.suppress(Exception):
                await _kill_and_reap(await start, collector)
            raise
        except OSError as exc:
            raise self._start_failure(exc) from None
        except ValueError as exc:
            # An argument or variable with a NUL byte can never be passed to exec.
            raise PermanentSinkError(f"cannot start {self._settings.argv[0]!r}: {exc}") from None

    async def deliver(self, delivery: Delivery) -> SinkResult:
        """Run the command; exit 0 delivered, a failed start dead, anything else retryable."""
        timeout_seconds = self._settings.timeout_seconds
        transport, collector = await self._start(delivery)
        timed_out = False
        try:
            stdin = cast(asyncio.WriteTransport | None, transport.get_pipe_transport(0))
            if stdin is not None:
                # Buffered by the transport and flushed as the child reads; a
                # child that never reads is the timeout's business.
                stdin.write(delivery.body)
                stdin.close()
            # asyncio.wait, unlike a timeout around `await future`, leaves the
            # future intact when time runs out, so it can be awaited again.
            exited, _ = await asyncio.wait({collector.exited}, timeout=timeout_seconds)
            if not exited:
                timed_out = True
                kill_group(transport.get_pid())
                await asyncio.wait({collector.exited}, timeout=KILL_WAIT_SECONDS)
            # Killing the group closes the pipes at once; after a normal exit a
            # background process may still hold them, and is not waited for.
            await asyncio.wait({collector.pipes_closed}, timeout=PIPE_DRAIN_GRACE_SECONDS)
        finally:
            # Cancelled (shutdown) or unkillable: leave no process running.
            await _kill_and_reap(transport, collector)
        output_tail = collector.output_tail()
        if timed_out:
            raise RetryableSinkError(
                f"timed out after {timeout_seconds:g}s, process group killed",
                output_tail=output_tail,
            )
        returncode = transport.get_returncode()
        if returncode == 0:
            return SinkResult(detail="exit status 0", output_tail=output_tail)
        raise RetryableSinkError(_describe_exit(returncode), output_tail=output_tail)

    async def close(self) -> None:
        """Let the start threads end; each delivery's process is gone when `deliver` returns."""
        self._executor.shutdown(wait=False)


def inherited_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """The part of `environ` a command may see: PATH, LANG, LC_*, TZ and HOME."""
    return {
        name: value
        for name, value in environ.items()
        if name in INHERITED_VARIABLES or name.startswith(INHERITED_PREFIXES)
    }


def _describe_exit(returncode: int | None) -> str:
    if returncode is None:
        return "exit status unknown"
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"killed by {name}"
    return f"exit status {returncode}"


async def _kill_and_reap(child: ChildProcess, collector: _OutputCollector) -> None:
    """Kill the command's group if it still runs, wait a moment for its exit, close."""
    if child.get_returncode() is None:
        kill_group(child.get_pid())
        # Reaped before the transport is dropped, so no process is left a zombie.
        await asyncio.wait({collector.exited}, timeout=KILL_WAIT_SECONDS)
    child.close()
