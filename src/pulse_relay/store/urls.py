"""`store.url`: which backend, where, and how to print it without its password."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

POSTGRES_SCHEMES = ("postgresql", "postgres")


def sqlite_path(url: str) -> Path | None:
    """The file of a `sqlite:` URL (`sqlite:///abs.db` or `sqlite:rel.db`); None otherwise."""
    if not url.startswith("sqlite:"):
        return None
    rest = url.removeprefix("sqlite:")
    if rest.startswith("//"):
        rest = rest.removeprefix("//")
        if not rest.startswith("/"):
            raise ValueError("sqlite:// URLs need an absolute path: sqlite:///path/to.db")
    if not rest:
        raise ValueError("the sqlite URL names no file")
    return Path(rest)


def is_postgres(url: str) -> bool:
    """Whether `url` names a PostgreSQL database."""
    return urlsplit(url).scheme in POSTGRES_SCHEMES


def mask_url(url: str) -> str:
    """`url` with any password replaced by ***."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    userinfo = f"{parts.username or ''}:***@"
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=userinfo + host))
