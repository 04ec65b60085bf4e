"""What counts as a secret by its name, and the marker shown in its place.

`check-config` masks configured headers and variables with these names, and the
log pipeline masks any field so named: one list, so the two cannot drift apart.
"""

from __future__ import annotations

import re

REDACTED = "**********"

# Over-matching only hides a harmless value; under-matching leaks a credential.
_SECRET_NAME = re.compile(
    r"auth|api[-_]?key|token|secret|cookie|passw|credential|session|signature", re.IGNORECASE
)


def is_secret_name(name: str) -> bool:
    """True for a key, header or variable name that may hold a credential."""
    return _SECRET_NAME.search(name) is not None
