"""Packages whose names are imported on first use: start-up pays only for what it needs."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any


def lazy_attributes(package: str, table: Mapping[str, tuple[str, str]]) -> Callable[[str], Any]:
    """A module `__getattr__` for `package`: each name of `table` (name -> (module,
    attribute)) is imported when first asked for, then kept in the package."""

    def __getattr__(name: str) -> Any:
        try:
            module, attribute = table[name]
        except KeyError:
            raise AttributeError(f"module {package!r} has no attribute {name!r}") from None
        value = getattr(importlib.import_module(module), attribute)
        setattr(sys.modules[package], name, value)
        return value

    return __getattr__
