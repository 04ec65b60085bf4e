"""What counts as a secret by its name, and the marker shown in its place.

`check-config` masks configured headers and variables with these names, and the
log pipeline masks any field so named: one list, so the two cannot drift apart.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit

REDACTED = "**********"

# Any name containing one of these, in any case: DB_PASS, PRIVATE_KEY, STRIPE_KEY,
# X-Hub-Sig. Over-matching only hides a harmless value; under-matching leaks a credential.
_SECRET_NAME = re.compile(
    r"auth|key|token|secret|cookie|pass|credential|session|sig|priv", re.IGNORECASE
)


def is_secret_name(name: str) -> bool:
    """True for a key, header or variable name that may hold a credential."""
    return _SECRET_NAME.search(name) is not None


def mask_url(url: str) -> str:
    """`url` with its user-info, query and fragment (where tokens travel) replaced by the marker.

    Text that is not a URL with a scheme and a host is returned as it is, unless it looks
    like one that cannot be parsed (`postgresql://u:pw@[db`): that is masked whole, as
    the credentials in it cannot be told apart.
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        return REDACTED
    if not parts.scheme or not parts.netloc:
        return url
    _user_info, at, host = parts.netloc.rpartition("@")
    masked = parts._replace(
        netloc=f"{REDACTED}@{host}" if at else host,
        query=REDACTED if parts.query else "",
        fragment=REDACTED if parts.fragment else "",
    )
    return urlunsplit(masked)
