"""Checks of the host a configuration will run on: what `check-config` adds to validation.

Settings validation proves the file is well-formed; these checks prove it can
work here: the store's folder and every file sink's directory can be written,
every command sink's program exists and may be executed, and the ingress's
TLS certificate and key can be read, parse, and belong together. They run as the
user who runs them, which may not be the service's own user.

`exposed_secret_files` is what `check-config` and `serve` both warn about: a file
holding a secret that other users may open.
"""

from __future__ import annotations

import os
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path

from pulse_relay.config import (
    CommandSinkSettings,
    FileSinkSettings,
    Loc,
    Settings,
    admin_exposure_problem,
    secret_files,
)
from pulse_relay.ingress.tls import tls_problem


def _nearest_existing(path: Path) -> Path:
    """`path` itself, or its closest ancestor that exists (where it would be created)."""
    candidate = path.absolute()
    while not candidate.exists() and candidate != candidate.parent:
        candidate = candidate.parent
    return candidate


def _writable_directory_problem(path: Path) -> str | None:
    existing = _nearest_existing(path)
    if not existing.is_dir():
        return f"{existing} is not a directory"
    if not os.access(existing, os.W_OK | os.X_OK):
        if existing == path.absolute():
            return f"directory {path} is not writable"
        return f"directory {path} does not exist and {existing} is not writable to create it"
    return None


def _program_problem(program: str, cwd: Path | None) -> str | None:
    if os.sep in program:
        path = Path(program)
        if not path.is_absolute() and cwd is not None:
            path = cwd / path
        if not path.exists():
            return f"command {program!r} not found"
        if path.is_dir() or not os.access(path, os.X_OK):
            return f"command {program!r} is not executable"
        return None
    if shutil.which(program) is None:
        return f"command {program!r} not found on PATH"
    return None


@dataclass(frozen=True)
class HostProblem:
    """One problem: `key` is the setting whose value it is about (its origin is named),
    `text` the line to print, starting with that key."""

    key: Loc
    text: str


def check_host(settings: Settings) -> list[HostProblem]:
    """One entry per problem; empty when all is well."""
    problems: list[HostProblem] = []
    admin_problem = admin_exposure_problem(settings)
    if admin_problem is not None:
        # The host is what was set; the token is what is missing.
        problems.append(HostProblem(("admin", "host"), admin_problem))
    store_file = settings.store.sqlite_file
    if store_file is not None:
        store_problem = _writable_directory_problem(store_file.absolute().parent)
        if store_problem is not None:
            key = ("store", "url") if settings.store.url.get_secret_value() else ("store", "path")
            problems.append(HostProblem(key, f"{'.'.join(map(str, key))}: {store_problem}"))
    server = settings.server
    if server.tls_cert_file is not None and server.tls_key_file is not None:
        problem = tls_problem(server.tls_cert_file, server.tls_key_file)
        if problem is not None:
            problems.append(
                HostProblem(
                    ("server", "tls_cert_file"),
                    f"server.tls_cert_file / server.tls_key_file: {problem}",
                )
            )
    for index, sink in enumerate(settings.sinks):
        if not sink.enabled:
            continue
        where = f"sinks[{index}]"
        if isinstance(sink, FileSinkSettings):
            problem = _writable_directory_problem(sink.directory)
            if problem is not None:
                problems.append(
                    HostProblem(("sinks", index), f"{where}.directory ({sink.name}): {problem}")
                )
        elif isinstance(sink, CommandSinkSettings):
            if sink.cwd is not None and not sink.cwd.is_dir():
                problems.append(
                    HostProblem(
                        ("sinks", index),
                        f"{where}.cwd ({sink.name}): {sink.cwd} is not a directory",
                    )
                )
            problem = _program_problem(sink.argv[0], sink.cwd)
            if problem is not None:
                problems.append(
                    HostProblem(("sinks", index), f"{where}.argv ({sink.name}): {problem}")
                )
    return problems


def exposed_secret_files(settings: Settings, config_path: Path | None) -> list[str]:
    """A warning for each file holding a secret that other users may open (mode & 0o007).

    A file that cannot be looked at is left to validation and `check_host`.
    """
    warnings: list[str] = []
    for file in secret_files(settings, config_path):
        try:
            mode = stat.S_IMODE(file.path.stat().st_mode)
        except OSError:
            continue
        if mode & 0o007:
            warnings.append(
                f"{file.what} {file.path} holds {file.holds} and is open to other users"
                f" (mode {mode:04o}): chmod o-rwx {file.path}"
            )
    return warnings
