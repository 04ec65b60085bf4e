"""The OpenAPI 3.1 document of the control API, served at `/api/openapi.json`."""

from __future__ import annotations

from typing import Any


def openapi_document(version: str) -> dict[str, Any]:
    """The whole document for this version of the relay."""
    return {
        "openapi": "3.1.0",
        "info": {"title": "pulse-relay control API", "version": version},
        "paths": {},
    }
