"""`store.url`: which backend, and where (printed through redaction.mask_url)."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

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
