"""Lone surrogates: text JSON can spell (`"\\ud800"`) and no UTF-8 text can hold.

A sender's payload or a hostile document's job result may carry them. Where such
text leaves the relay (the envelope, a page, the store's reason columns), each is
replaced by U+FFFD, here: one rule for every place (the README's *Sinks* section).
"""

from __future__ import annotations

import json
import re
from typing import Any

LONE_SURROGATE = re.compile("[\ud800-\udfff]")
REPLACEMENT_CHARACTER = "\ufffd"


def without_lone_surrogates(text: str) -> str:
    """`text` with each lone surrogate replaced by U+FFFD."""
    return LONE_SURROGATE.sub(REPLACEMENT_CHARACTER, text)


def replace_lone_surrogates(document: Any) -> Any:
    """A JSON document with each lone surrogate in its text (keys too) replaced by U+FFFD;
    the document itself when it holds none."""
    text = json.dumps(document, ensure_ascii=False)
    if LONE_SURROGATE.search(text) is None:
        return document
    return json.loads(without_lone_surrogates(text))
