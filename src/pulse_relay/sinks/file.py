"""The file sink: one JSON file per job (replaced atomically) or one JSON line per event."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import json
import os
import re
import secrets
import stat
import string
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, TypeVar

from pulse_relay.config.types import parse_filename_template, relative_path_problem
from pulse_relay.sinks.base import (
    Delivery,
    PermanentSinkError,
    RetryableSinkError,
    SinkResult,
)

if TYPE_CHECKING:
    from pulse_relay.config import FileSinkSettings

_T = TypeVar("_T")

# The file name when none is configured, by format; and the one used instead of a
# template with {job_id} for an event that belongs to no job.
DEFAULT_TEMPLATES = {
    "json": parse_filename_template("{job_id}.json"),
    "jsonl": parse_filename_template("events.jsonl"),
}
_NO_JOB_TEMPLATES = {
    "json": parse_filename_template("{id}.json"),
    "jsonl": parse_filename_template("{id}.jsonl"),
}

# Characters a field value may keep as they are. Everything else, including
# path separators, NUL and '%' itself, is percent-encoded: the mapping is
# one-to-one, so two different ids can never render to the same file name,
# and a value can never add a directory level.
_SAFE_VALUE_CHARACTERS = frozenset(string.ascii_letters + string.digits + "-_.:@+=,~")
# Errors that retrying cannot fix: the rendered name itself is unusable.
_PERMANENT_ERRNOS = frozenset({errno.ENAMETOOLONG})
# Enough of an envelope's head to hold id, type, job_id and received_at.
_HEAD_BYTES = 64 * 1024
_RECEIVED_AT = re.compile(rb'"received_at"\s*:\s*"([0-9T:.Z+-]{1,40})"')
_PATH_LOCK_STRIPES = 64
# The configured directory may be reached through a symlink (the operator's
# choice); nothing below it is.
_ROOT_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_DIRECTORY_FLAGS = _ROOT_FLAGS | os.O_NOFOLLOW
_NEW_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def directory_mode_for(file_mode: int) -> int:
    """The mode of directories the sink creates: the owner's, plus search where files are read."""
    readable = file_mode & 0o044
    return 0o700 | readable | (readable >> 2)


def encode_field_value(value: str) -> str:
    """Percent-encode `value` into one harmless path component (one-to-one, never '.' or '..')."""
    encoded = "".join(
        character
        if character in _SAFE_VALUE_CHARACTERS
        else "".join(f"%{byte:02X}" for byte in character.encode("utf-8", "surrogatepass"))
        for character in value
    )
    if encoded in {".", ".."}:
        return encoded.replace(".", "%2E")
    return encoded


def _utc_date(received_at: str) -> str:
    """The UTC date of `received_at`, so a retry after midnight writes the same file."""
    if received_at:
        try:
            when = datetime.fromisoformat(received_at)
        except ValueError:
            pass
        else:
            if when.tzinfo is not None:
                return when.astimezone(UTC).strftime("%Y-%m-%d")
    return datetime.now(UTC).strftime("%Y-%m-%d")


class FileSink:
    """Writes each delivery's body to a file under `settings.directory`."""

    def __init__(self, settings: FileSinkSettings) -> None:
        self.name = settings.name
        self._settings = settings
        self._format = settings.format
        self._mode = settings.mode.bits
        self._directory_mode = directory_mode_for(self._mode)
        self._template = settings.filename or DEFAULT_TEMPLATES[self._format]
        self._fallback_template = _NO_JOB_TEMPLATES[self._format]
        # Appends are short, so one lock for the whole sink is enough to keep
        # them from tying up worker threads waiting on each other's flock; the
        # flock in the writer covers other processes sharing the file.
        self._append_lock = asyncio.Lock()
        self._path_locks = [asyncio.Lock() for _ in range(_PATH_LOCK_STRIPES)]
        # Threads of its own, one per delivery slot: writes wait on fsync, and in the
        # loop's default pool (cores + 4 threads) they queued behind each other and
        # held up its other users (name lookups of the HTTP sink and the Pulse client).
        self._executor = ThreadPoolExecutor(
            max_workers=settings.concurrency, thread_name_prefix=f"file-sink-{self.name}"
        )

    def render_filename(self, delivery: Delivery) -> str:
        """The file name for `delivery` relative to the directory, field values encoded."""
        template = self._template
        if delivery.job_id is None and "job_id" in template.fields:
            template = self._fallback_template
        values = {
            "id": delivery.event_id,
            "type": delivery.event_type,
            "job_id": delivery.job_id or "",
            "date": _utc_date(delivery.received_at),
        }
        return "".join(
            piece.literal + ("" if piece.field is None else encode_field_value(values[piece.field]))
            for piece in template.pieces
        )

    async def deliver(self, delivery: Delivery) -> SinkResult:
        """Write the body; PermanentSinkError for a path outside the directory, else retryable."""
        relative = self.render_filename(delivery)
        try:
            if self._format == "json":
                # Per-path lock: the newer-file check and the rename must not interleave
                # with another delivery for the same job.
                async with self._path_locks[hash(relative) % len(self._path_locks)]:
                    path, written = await asyncio.wait_for(
                        self._in_thread(
                            self._write_json, relative, delivery.body, delivery.received_at
                        ),
                        self._settings.timeout_seconds,
                    )
                if not written:
                    return SinkResult(detail=f"kept {path}: it holds a later event of this job")
            else:
                line = _one_line(delivery.body)
                async with self._append_lock:
                    path = await asyncio.wait_for(
                        self._in_thread(self._append_line, relative, line),
                        self._settings.timeout_seconds,
                    )
        except TimeoutError:
            raise RetryableSinkError(
                f"file write did not finish within {self._settings.timeout_seconds:g}s"
            ) from None
        except OSError as exc:
            reason = f"cannot write {relative!r}: {exc.strerror or exc}"
            if exc.errno in _PERMANENT_ERRNOS:
                raise PermanentSinkError(reason) from None
            raise RetryableSinkError(reason) from None
        verb = "wrote" if self._format == "json" else "appended to"
        return SinkResult(detail=f"{verb} {path}")

    async def close(self) -> None:
        """Let the writer threads end once their writes are done (every write closes its file)."""
        # Not waited for: a write stuck on a dead mount must not hold up shutdown.
        self._executor.shutdown(wait=False)

    async def _in_thread(self, work: Callable[..., _T], *args: object) -> _T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, work, *args)

    def _parts(self, relative: str) -> tuple[str, ...]:
        """The components of `relative`, or PermanentSinkError if it cannot name a file inside."""
        problem = relative_path_problem(relative)
        if problem is not None:
            raise PermanentSinkError(f"file name {relative!r} would leave the directory: {problem}")
        parts = PurePosixPath(relative).parts
        if relative.endswith("/") or not parts:
            raise PermanentSinkError(f"file name {relative!r} names the directory, not a file")
        return parts

    @contextlib.contextmanager
    def _parent_directory(self, relative: str) -> Iterator[tuple[int, str]]:
        """An open descriptor of the directory that holds `relative`'s file, and the file's name.

        Every component below the configured directory is opened relative to its
        parent without following a symlink, and created when missing: whatever is
        swapped in on the way, what is written lands inside the directory.
        """
        parts = self._parts(relative)
        fd = _open_root(Path(self._settings.directory), self._directory_mode)
        try:
            for part in parts[:-1]:
                child = _open_child_directory(fd, part, self._directory_mode, relative)
                os.close(fd)
                fd = child
            yield fd, parts[-1]
        finally:
            os.close(fd)

    def _write_json(self, relative: str, body: bytes, received_at: str) -> tuple[Path, bool]:
        path = Path(self._settings.directory) / relative
        with self._parent_directory(relative) as (directory_fd, name):
            # Deliveries are not ordered (a retry of an older event may come last): a file
            # already holding a later event of the job keeps it.
            existing = _received_at_of(directory_fd, name, relative)
            if existing is not None and received_at and existing > received_at:
                return path, False
            # Readers never see a half-written file: the body goes to a temporary
            # file in the same directory (same filesystem), which then replaces
            # the target in one rename. A rename replaces a symlink at the target
            # name rather than following it.
            temporary = f".{name}.{secrets.token_hex(6)}.tmp"
            fd = os.open(temporary, _NEW_FILE_FLAGS, self._mode, dir_fd=directory_fd)
            try:
                try:
                    os.fchmod(fd, self._mode)  # exactly `mode`, whatever the umask
                    _write_all(fd, body)
                    os.fsync(fd)
                finally:
                    os.close(fd)
                os.replace(temporary, name, src_dir_fd=directory_fd, dst_dir_fd=directory_fd)
            except BaseException:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(temporary, dir_fd=directory_fd)
                raise
            os.fsync(directory_fd)
        return path, True

    def _append_line(self, relative: str, line: bytes) -> Path:
        with self._parent_directory(relative) as (directory_fd, name):
            fd = _open_for_append(directory_fd, name, relative)
            try:
                _refuse_unless_single_file(os.fstat(fd), relative)
                fcntl.flock(fd, fcntl.LOCK_EX)
                status = _still_the_only_name(fd, directory_fd, name, relative)
                if status.st_mode & 0o777 != self._mode and status.st_uid == os.geteuid():
                    os.fchmod(fd, self._mode)
                size_bytes = _append_whole_line(fd, line)
            finally:
                os.close(fd)
            if size_bytes == 0:
                os.fsync(directory_fd)
        return Path(self._settings.directory) / relative


def _append_whole_line(fd: int, line: bytes) -> int:
    """Append `line` under the caller's lock; returns the size the file had before."""
    size_bytes = os.fstat(fd).st_size
    # A crash mid-line elsewhere must not glue this envelope onto the
    # fragment: start on a fresh line.
    if size_bytes and os.pread(fd, 1, size_bytes - 1) != b"\n":
        line = b"\n" + line
    try:
        _write_all(fd, line)
        os.fsync(fd)
    except OSError:
        # Leave no partial line behind (a full disk mid-write), so the
        # retry appends a clean one.
        with contextlib.suppress(OSError):
            os.ftruncate(fd, size_bytes)
        raise
    return size_bytes


def _open_root(directory: Path, mode: int) -> int:
    """The configured directory, opened (created first, with `mode`, when missing).

    The configured path itself is the operator's and may be or contain a symlink.
    """
    try:
        return os.open(directory, _ROOT_FLAGS)
    except FileNotFoundError:
        pass
    directory.parent.mkdir(parents=True, exist_ok=True, mode=mode)
    created = True
    try:
        os.mkdir(directory, mode)
    except FileExistsError:
        created = False
    fd = os.open(directory, _ROOT_FLAGS)
    if created:
        os.fchmod(fd, mode)
    return fd


def _open_child_directory(parent_fd: int, name: str, mode: int, relative: str) -> int:
    """The directory `name` inside `parent_fd`, created with `mode` when missing; never a link."""
    created = False
    try:
        fd = os.open(name, _DIRECTORY_FLAGS, dir_fd=parent_fd)
    except FileNotFoundError:
        with contextlib.suppress(FileExistsError):
            os.mkdir(name, mode, dir_fd=parent_fd)
            created = True
        fd = _open_no_link(name, _DIRECTORY_FLAGS, parent_fd, relative)
    except OSError:
        _refuse_link(parent_fd, name, relative)
        raise
    if created:
        os.fchmod(fd, mode)
        os.fsync(parent_fd)
    return fd


def _open_for_append(directory_fd: int, name: str, relative: str) -> int:
    # Read access too: the last byte is checked for a torn line. O_NONBLOCK so a
    # FIFO planted at the name cannot hang the writer (it is refused once opened).
    flags = os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    return _open_no_link(name, flags, directory_fd, relative, mode=0o600)


def _open_no_link(
    name: str, flags: int, directory_fd: int, relative: str, *, mode: int = 0o600
) -> int:
    """os.open of `name` in `directory_fd` (flags with O_NOFOLLOW); a link there is refused."""
    try:
        return os.open(name, flags, mode, dir_fd=directory_fd)
    except OSError:
        _refuse_link(directory_fd, name, relative)
        raise


def _refuse_link(directory_fd: int, name: str, relative: str) -> None:
    """PermanentSinkError when `name` in `directory_fd` is a symlink (why an open failed)."""
    try:
        status = os.stat(name, dir_fd=directory_fd, follow_symlinks=False)
    except OSError:
        return
    if stat.S_ISLNK(status.st_mode):
        raise PermanentSinkError(
            f"cannot write {relative!r}: {name!r} is a symbolic link (the file sink follows none)"
        )


def _still_the_only_name(fd: int, directory_fd: int, name: str, relative: str) -> os.stat_result:
    """The status of the open file, once it is proven to have one name: `name` here.

    A link count read from the open file proves nothing a moment later: a file
    outside, hard-linked in at `name` and unlinked and linked again around the
    check, would pass. The name's own status gives both facts at one instant:
    it leads to the very file that is open, and that file has no other name.
    """
    status = os.fstat(fd)
    try:
        current = os.stat(name, dir_fd=directory_fd, follow_symlinks=False)
    except FileNotFoundError:
        current = None
    if current is None or (current.st_dev, current.st_ino) != (status.st_dev, status.st_ino):
        raise RetryableSinkError(f"{relative!r} was replaced while it was being opened")
    _refuse_unless_single_file(current, relative)
    return current


def _refuse_unless_single_file(status: os.stat_result, relative: str) -> None:
    """PermanentSinkError unless `status` is a regular file with no other name (hard link)."""
    if not stat.S_ISREG(status.st_mode):
        raise PermanentSinkError(f"cannot write {relative!r}: it exists and is not a regular file")
    if status.st_nlink > 1:
        raise PermanentSinkError(
            f"cannot write {relative!r}: it has {status.st_nlink} hard links"
            " (another name elsewhere would receive the envelope)"
        )


def _received_at_of(directory_fd: int, name: str, relative: str) -> str | None:
    """The `received_at` of the envelope stored at `name`, None if there is none.

    Refuses (PermanentSinkError) a symlink, a hard-linked file or anything but a
    regular file at the name. The envelope is written with `received_at` among
    its first keys, so the head of the file suffices; inside JSON strings a
    quote is always escaped, so the pattern cannot match text from an id or a type.
    """
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = _open_no_link(name, flags, directory_fd, relative)
    except FileNotFoundError:
        return None
    try:
        _refuse_unless_single_file(os.fstat(fd), relative)
        head = os.pread(fd, _HEAD_BYTES, 0)
    finally:
        os.close(fd)
    found = _RECEIVED_AT.search(head)
    return found.group(1).decode() if found else None


def _one_line(body: bytes) -> bytes:
    """`body` as a single JSON line; JSON whitespace is the only place a newline can be."""
    if b"\n" in body or b"\r" in body:
        try:
            document = json.loads(body)
        except ValueError:
            raise PermanentSinkError(
                "envelope is not valid JSON; cannot write it as one line"
            ) from None
        body = json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode()
    return body + b"\n"


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]
