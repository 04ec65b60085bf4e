"""The directory group fsync: real directories, real threads, fsyncs counted through an
injected function that does the real fsync after it is let through."""

from __future__ import annotations

import errno
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from pulse_relay.sinks.directory_sync import DirectorySync
from tests.helpers import wait_until


class GatedFsync:
    """os.fsync that records each call and, when gated, holds it until the test lets it go."""

    def __init__(self, *, is_gated: bool = True) -> None:
        self.is_gated = is_gated
        self.started: list[int] = []
        self.finished = 0
        self.failures: dict[int, OSError] = {}
        self._gates: list[threading.Event] = []
        self._lock = threading.Lock()

    def __call__(self, fd: int) -> None:
        with self._lock:
            number = len(self.started)
            self.started.append(fd)
            gate = threading.Event()
            self._gates.append(gate)
        if self.is_gated:
            assert gate.wait(timeout=20), "fsync never let through"
        os.fsync(fd)
        with self._lock:
            self.finished += 1
        if number in self.failures:
            raise self.failures[number]

    def release(self, number: int) -> None:
        self._gates[number].set()


@pytest.fixture
def directory_fd(tmp_path: Path) -> Iterator[int]:
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    yield fd
    os.close(fd)


class Writer(threading.Thread):
    """A writer as the file sink is one: a file renamed into place, then its directory synced
    through its own descriptor."""

    def __init__(self, directory: Path, name: str, sync: DirectorySync) -> None:
        super().__init__(name=name)
        self.directory = directory
        self.sync = sync
        self.error: OSError | None = None

    def run(self) -> None:
        temporary = self.directory / f".{self.name}.tmp"
        temporary.write_text(self.name)
        os.replace(temporary, self.directory / self.name)
        fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            self.sync.sync(fd)
        except OSError as exc:
            self.error = exc
        finally:
            os.close(fd)


def rename_then_sync(directory: Path, name: str, sync: DirectorySync) -> Writer:
    writer = Writer(directory, name, sync)
    writer.start()
    return writer


def test_a_lone_writer_runs_one_fsync_of_its_directory(tmp_path: Path, directory_fd: int) -> None:
    fsync = GatedFsync(is_gated=False)
    sync = DirectorySync(fsync)
    sync.sync(directory_fd)
    sync.sync(directory_fd)
    # Nobody to share with: each call has an fsync that began after it.
    assert fsync.started == [directory_fd, directory_fd]
    assert sync.writers(directory_fd) == 0


def test_writers_that_arrive_during_an_fsync_share_the_next_one(
    tmp_path: Path, directory_fd: int
) -> None:
    fsync = GatedFsync()
    sync = DirectorySync(fsync)
    first = rename_then_sync(tmp_path, "a.json", sync)
    wait_until(lambda: len(fsync.started) == 1)
    # b and c renamed after the running fsync began: it may not cover them.
    later = [rename_then_sync(tmp_path, name, sync) for name in ("b.json", "c.json")]
    wait_until(lambda: sync.writers(directory_fd) == 3)
    fsync.release(0)
    first.join(timeout=20)
    assert not first.is_alive()
    wait_until(lambda: len(fsync.started) == 2)
    assert all(thread.is_alive() for thread in later), "released by an fsync begun before them"
    fsync.release(1)
    for thread in later:
        thread.join(timeout=20)
        assert not thread.is_alive()
    assert len(fsync.started) == 2 and fsync.finished == 2
    assert sorted(os.listdir(tmp_path)) == ["a.json", "b.json", "c.json"]
    assert sync.writers(directory_fd) == 0


def test_a_failed_fsync_fails_every_writer_it_covered_and_the_next_one_is_new(
    tmp_path: Path, directory_fd: int
) -> None:
    fsync = GatedFsync()
    fsync.failures[1] = OSError(errno.EIO, "Input/output error")
    sync = DirectorySync(fsync)
    first = rename_then_sync(tmp_path, "a.json", sync)
    wait_until(lambda: len(fsync.started) == 1)
    later = [rename_then_sync(tmp_path, name, sync) for name in ("b.json", "c.json")]
    wait_until(lambda: sync.writers(directory_fd) == 3)
    fsync.release(0)
    wait_until(lambda: len(fsync.started) == 2)
    fsync.release(1)
    for thread in [first, *later]:
        thread.join(timeout=20)
    assert first.error is None
    for thread in later:
        assert thread.error is not None and thread.error.errno == errno.EIO
    # The failure is not remembered as the directory's state: a new writer gets a new fsync.
    fsync.is_gated = False
    sync.sync(directory_fd)
    assert len(fsync.started) == 3


def test_different_directories_do_not_wait_for_each_other(tmp_path: Path) -> None:
    fsync = GatedFsync()
    sync = DirectorySync(fsync)
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    held = rename_then_sync(tmp_path / "one", "a.json", sync)
    wait_until(lambda: len(fsync.started) == 1)
    other = rename_then_sync(tmp_path / "two", "b.json", sync)
    # The second directory's fsync starts while the first one's is still held.
    wait_until(lambda: len(fsync.started) == 2)
    fsync.release(1)
    other.join(timeout=20)
    assert not other.is_alive() and held.is_alive()
    fsync.release(0)
    held.join(timeout=20)
    assert not held.is_alive()


def test_many_writers_into_one_directory_all_return_with_fewer_fsyncs(tmp_path: Path) -> None:
    fsync = GatedFsync(is_gated=False)
    sync = DirectorySync(fsync)
    threads = [rename_then_sync(tmp_path, f"{number}.json", sync) for number in range(64)]
    for thread in threads:
        thread.join(timeout=20)
        assert not thread.is_alive()
        assert thread.error is None
    assert len(os.listdir(tmp_path)) == 64
    assert len(fsync.started) <= 64
