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
import string
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import TYPE_CHECKING, TypeVar

from pulse_relay.sinks.base import (
    Delivery,
    PermanentSinkError,
    RetryableSinkError,
    SinkResult,
)

if TYPE_CHECKING:
    from pulse_relay.config import FileSinkSettings

_T = TypeVar("_T")

DEFAULT_JSON_FILENAME = "{job_id}.json"
DEFAULT_JSONL_FILENAME = "events.jsonl"
TEMPLATE_FIELDS = frozenset({"id", "type", "job_id", "date"})

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


@dataclass(frozen=True)
class _Piece:
    literal: str
    field: str | None


def parse_filename_template(template: str) -> tuple[_Piece, ...]:
    """Split a filename template into literal text and fields; ValueError says what is wrong."""
    if not template.strip():
        raise ValueError("must not be empty")
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ValueError(f"not a valid template: {exc}") from None
    pieces: list[_Piece] = []
    for literal, field_name, format_spec, conversion in parsed:
        if field_name is None:
            pieces.append(_Piece(literal, None))
            continue
        # Only bare names: `{id.__class__}` or `{id!r:>9}` would let a template
        # reach into objects or pad names in surprising ways.
        if field_name not in TEMPLATE_FIELDS or format_spec or conversion:
            allowed = ", ".join("{" + name + "}" for name in sorted(TEMPLATE_FIELDS))
            raise ValueError(f"unknown template field {{{field_name}}} (allowed: {allowed})")
        pieces.append(_Piece(literal, field_name))
    return tuple(pieces)


def relative_path_problem(relative: str) -> str | None:
    """Why `relative` (a template or a rendered name) could leave the sink directory, or None."""
    if PurePosixPath(relative).is_absolute() or PureWindowsPath(relative).is_absolute():
        return "must be relative to the sink directory"
    if ".." in re.split(r"[/\\]", relative):
        return 'must not contain ".." components'
    return None


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


def _is_inside(path: str, directory: str) -> bool:
    return path == directory or path.startswith(directory.rstrip(os.sep) + os.sep)


class FileSink:
    """Writes each delivery's body to a file under `settings.directory`."""

    def __init__(self, settings: FileSinkSettings) -> None:
        self.name = settings.name
        self._settings = settings
        self._format = settings.format
        default = DEFAULT_JSON_FILENAME if self._format == "json" else DEFAULT_JSONL_FILENAME
        template = settings.filename or default
        try:
            self._template = parse_filename_template(template)
        except ValueError as exc:
            raise ValueError(f"sink {self.name!r}: filename template {template!r}: {exc}") from None
        extension = ".json" if self._format == "json" else ".jsonl"
        self._fallback_template = parse_filename_template("{id}" + extension)
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
        if delivery.job_id is None and any(piece.field == "job_id" for piece in template):
            template = self._fallback_template
        values = {
            "id": delivery.event_id,
            "type": delivery.event_type,
            "job_id": delivery.job_id or "",
            "date": _utc_date(delivery.received_at),
        }
        return "".join(
            piece.literal + ("" if piece.field is None else encode_field_value(values[piece.field]))
            for piece in template
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

    def _resolve(self, relative: str) -> Path:
        """The real path for `relative`, created directories included, or PermanentSinkError."""
        problem = relative_path_problem(relative)
        if problem is not None:
            raise PermanentSinkError(f"file name {relative!r} would leave the directory: {problem}")
        pure = PurePosixPath(relative)
        if relative.endswith("/") or not pure.parts:
            raise PermanentSinkError(f"file name {relative!r} names the directory, not a file")
        directory = Path(self._settings.directory)
        directory.mkdir(parents=True, exist_ok=True)
        root = os.path.realpath(directory)
        # realpath follows every symlink among the components that exist, so a
        # link anywhere on the way (or the file itself) pointing out is caught.
        target = os.path.realpath(os.path.join(root, *pure.parts))
        if not _is_inside(target, root) or target == root:
            raise PermanentSinkError(
                f"file name {relative!r} resolves to {target}, outside the sink directory {root}"
            )
        Path(target).parent.mkdir(parents=True, exist_ok=True)
        return Path(target)

    def _write_json(self, relative: str, body: bytes, received_at: str) -> tuple[Path, bool]:
        path = self._resolve(relative)
        # Deliveries are not ordered (a retry of an older event may come last): a file
        # already holding a later event of the job keeps it.
        existing = _received_at_of(path)
        if existing is not None and received_at and existing > received_at:
            return path, False
        # Readers never see a half-written file: the body goes to a temporary
        # file in the same directory (same filesystem), which then replaces
        # the target in one rename.
        temporary = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
        # Created like an ordinary file (0o666 minus the umask) so whatever
        # consumes the directory can read it.
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
        try:
            try:
                _write_all(fd, body)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(temporary, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary)
            raise
        _fsync_directory(path.parent)
        return path, True

    def _append_line(self, relative: str, line: bytes) -> Path:
        path = self._resolve(relative)
        # Read access too: the last byte is checked for a torn line.
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
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
        finally:
            os.close(fd)
        if size_bytes == 0:
            _fsync_directory(path.parent)
        return path


def _received_at_of(path: Path) -> str | None:
    """The `received_at` of the envelope stored at `path`, None if absent or unreadable.

    The envelope is written with `received_at` among its first keys, so the head
    of the file suffices; inside JSON strings a quote is always escaped, so the
    pattern cannot match text from an id or a type.
    """
    try:
        with open(path, "rb") as file:
            head = file.read(_HEAD_BYTES)
    except OSError:
        return None
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


def _fsync_directory(directory: Path) -> None:
    """Make a rename or a new directory entry durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
