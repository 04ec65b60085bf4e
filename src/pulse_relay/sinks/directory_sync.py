"""Group fsync of a directory: concurrent writers into one directory share its fsync.

A renamed file is durable once its directory is fsynced, and one fsync of a
directory makes durable every entry changed before that fsync began. Writers
that rename into the same directory at the same moment therefore need one
fsync between them, not one each: the first to arrive runs it, and those who
arrive while it runs join the next one, which the first of them runs once the
current one is over. Nobody is released by an fsync that began before they
asked (their rename might not be in it), and nobody is released by a failed one.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable


class _Round:
    """One fsync of a directory and the writers it will release."""

    __slots__ = ("error", "is_done")

    def __init__(self) -> None:
        self.is_done = False
        self.error: BaseException | None = None


class _Directory:
    """A directory's fsync in progress, the one its newer writers wait for, and its users."""

    __slots__ = ("pending", "running", "users")

    def __init__(self) -> None:
        self.running: _Round | None = None
        self.pending: _Round | None = None
        self.users = 0


class DirectorySync:
    """Shares directory fsyncs between threads; `fsync` is injectable so tests can count them."""

    def __init__(self, fsync: Callable[[int], None] = os.fsync) -> None:
        self._fsync = fsync
        # One condition for every directory: waiters of another directory wake for
        # nothing now and then, which costs less than a lock per directory to manage.
        self._condition = threading.Condition()
        self._directories: dict[tuple[int, int], _Directory] = {}

    def writers(self, directory_fd: int) -> int:
        """How many writers are in `sync` for the directory of `directory_fd` now."""
        with self._condition:
            directory = self._directories.get(_key(directory_fd))
            return 0 if directory is None else directory.users

    def sync(self, directory_fd: int) -> None:
        """Return once an fsync of `directory_fd`'s directory that began after this call is done.

        Raises that fsync's error (an OSError) when it failed, in every writer it covered.
        """
        key = _key(directory_fd)
        with self._condition:
            directory = self._directories.get(key)
            if directory is None:
                directory = self._directories[key] = _Directory()
            if directory.pending is None:
                directory.pending = _Round()
            # The pending round has not begun, so it covers whatever this writer did before.
            joined = directory.pending
            directory.users += 1
            try:
                while not joined.is_done:
                    if directory.running is None and directory.pending is joined:
                        self._run(directory, joined, directory_fd)
                    else:
                        self._condition.wait()
            finally:
                directory.users -= 1
                if directory.users == 0:
                    del self._directories[key]
        if joined.error is not None:
            error = joined.error
            if isinstance(error, OSError):
                # A copy per writer: one exception object raised in many threads
                # would collect all their tracebacks.
                raise OSError(error.errno, error.strerror, error.filename)
            raise error

    def _run(self, directory: _Directory, joined: _Round, directory_fd: int) -> None:
        """Run `joined`'s fsync with the condition released; called with it held."""
        directory.running, directory.pending = joined, None
        self._condition.release()
        try:
            self._fsync(directory_fd)
        except BaseException as exc:
            joined.error = exc
        finally:
            self._condition.acquire()
            joined.is_done = True
            directory.running = None
            self._condition.notify_all()


def _key(directory_fd: int) -> tuple[int, int]:
    # The directory itself, not a path: any descriptor of it fsyncs the same entries.
    status = os.fstat(directory_fd)
    return status.st_dev, status.st_ino
