"""How the command line prints events, one event and watches: tables and text for a terminal.

Kept apart from `cli.py` (which parses arguments and calls into the rest) and
imported only by the commands that print these, so `--help` stays light.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from pulse_relay.serialize import iso, summary_state

if TYPE_CHECKING:
    from pulse_relay.store import EventView

# C0 and C1 controls and DEL, and the bidirectional overrides and isolates
# (which reorder what follows them on screen): text from senders holding them
# could move the cursor, rewrite a line or disguise a value on the terminal.
_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
_NAMED_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\\": "\\\\"}


def printable(text: str) -> str:
    """`text` for a terminal: control characters shown as visible escapes (\\x1b, \\n...)."""
    if _UNPRINTABLE.search(text) is None:
        return text

    def escape(match: re.Match[str]) -> str:
        character = match.group()
        if character in _NAMED_ESCAPES:
            return _NAMED_ESCAPES[character]
        code = ord(character)
        return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"

    # A backslash is escaped too once anything is, so "\\n" typed by a sender
    # cannot pass for an escaped newline.
    return re.sub(r"\\|" + _UNPRINTABLE.pattern, escape, text)


def table(rows: list[list[str]], headers: list[str]) -> str:
    """Left-aligned columns under `headers`, every cell made printable."""
    rows = [[printable(cell) for cell in row] for row in rows]
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)
    ]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return "\n".join(lines)


def indent(text: str) -> str:
    """Every line of `text` indented by two spaces."""
    return "\n".join("  " + line for line in text.splitlines())


def events_table(views: Sequence[EventView]) -> str:
    """The `events` listing: one row per event with each sink's delivery state."""
    rows = [
        [
            view.id,
            iso(view.received_at) or "",
            view.source,
            view.type or "-",
            view.job_id or "-",
            summary_state(view),
            " ".join(f"{sink}:{d.state}" for sink, d in view.deliveries.items()) or "-",
        ]
        for view in views
    ]
    return table(rows, ["ID", "RECEIVED", "SOURCE", "TYPE", "JOB", "STATE", "SINKS"])


def event_text(view: EventView, document: dict[str, Any]) -> list[str]:
    """The lines of `show`: summary, headers, payload, job, metadata, deliveries, attempts."""
    lines = []
    for key in ("id", "received_at", "source", "type", "job_id", "state", "error"):
        value = document[key]
        lines.append(f"{key + ':':<13}{printable(value) if value is not None else '-'}")
    lines.append(f"{'client:':<13}{view.client_address or '-'}")
    fetch_error = f" ({printable(view.fetch_error)})" if view.fetch_error else ""
    lines.append(f"{'fetch:':<13}{view.fetch_state}{fetch_error}")
    lines.append("headers:")
    for name, value in (view.headers or {}).items():
        lines.append(f"  {printable(name)}: {printable(value)}")
    lines.append("payload:")
    lines.append(
        indent(json.dumps(document.get("payload", document.get("payload_text")), indent=2))
    )
    lines.append("job:")
    lines.append(indent(json.dumps(view.job, indent=2)))
    if view.metadata:
        lines.append("metadata:")
        lines.append(indent(json.dumps(view.metadata, indent=2)))
    return lines + _deliveries_text(view)


def _deliveries_text(view: EventView) -> list[str]:
    lines = ["deliveries:"]
    for sink, delivery in view.deliveries.items():
        extra = f" - {printable(delivery.last_error)}" if delivery.last_error else ""
        lines.append(f"  {sink}: {delivery.state} after {delivery.attempts} attempt(s){extra}")
    lines.append("attempts:")
    for attempt in view.attempts:
        what = attempt.sink or "job fetch"
        if attempt.edited_envelope is not None:
            what += " (edited envelope: see --json)"
        code = f" [{attempt.status_code}]" if attempt.status_code is not None else ""
        error = f" {printable(attempt.error)}" if attempt.error else ""
        lines.append(
            f"  {iso(attempt.started_at)} {what} #{attempt.attempt} {attempt.outcome}{code}"
            f" {attempt.duration_ms:.1f} ms{error}"
        )
    return lines


def watches_table(watches: Sequence[dict[str, Any]]) -> str:
    """`watch --list`: one row per watch document (as the admin API lists them)."""
    rows = [
        [
            w["job_id"],
            w["state"],
            w["origin"],
            w["last_status"] or "-",
            str(w["polls"]),
            (w["next_poll_at"] or "-") if w["state"] == "active" else "-",
            w["last_error"] or "",
            " ".join(f"{k}={v}" for k, v in w["metadata"].items()),
        ]
        for w in watches
    ]
    headers = ["JOB", "STATE", "ORIGIN", "STATUS", "POLLS", "NEXT POLL", "ERROR", "META"]
    return table(rows, headers)
