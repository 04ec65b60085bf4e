"""Reading what a chaos run left behind and holding it to the contract."""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.chaos.parties import ChaosReceiver
from bench.chaos.plan import SINKS, PlannedEvent
from bench.chaos.senders import SendLog
from bench.common import query_one


def read_store(db_path: Path) -> tuple[dict[str, dict[str, Any]], dict[tuple[str, str], Any]]:
    """Events and deliveries as the store holds them (plain SQL, read only)."""
    connect = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=30)
    with contextlib.closing(connect) as db:
        db.row_factory = sqlite3.Row
        events = {row["id"]: dict(row) for row in db.execute("SELECT id, state FROM events")}
        deliveries = {
            (row["event_id"], row["sink"]): dict(row)
            for row in db.execute(
                "SELECT event_id, sink, state, attempts, last_error FROM deliveries"
            )
        }
    return events, deliveries


def integrity(db_path: Path) -> str:
    """`PRAGMA integrity_check` of the store: "ok" or the first problem."""
    with contextlib.closing(sqlite3.connect(str(db_path), timeout=30)) as db:
        return str(db.execute("PRAGMA integrity_check").fetchone()[0])


def pending_work(db_path: Path) -> int:
    """Deliveries still pending plus fetches still pending."""
    deliveries = query_one(db_path, "SELECT count(*) FROM deliveries WHERE state = 'pending'")
    fetches = query_one(db_path, "SELECT count(*) FROM events WHERE fetch_state = 'pending'")
    return int(deliveries) + int(fetches)


def read_file_sink(workdir: Path) -> tuple[Counter[str], int]:
    """Envelope ids in the jsonl file, and the number of lines that do not parse."""
    seen: Counter[str] = Counter()
    torn = 0
    path = workdir / "files" / "events.jsonl"
    if not path.exists():
        return seen, 0
    for line in path.read_bytes().splitlines():
        try:
            seen[json.loads(line)["id"]] += 1
        except (ValueError, KeyError, TypeError):
            torn += 1
    return seen, torn


def read_command_sink(workdir: Path) -> tuple[Counter[str], int, Counter[str]]:
    """Envelope ids the command received in full, bad files, and the faults it injected."""
    seen: Counter[str] = Counter()
    bad = 0
    for path in (workdir / "cmd" / "got").iterdir():
        event_id = path.name.split(".", 1)[0]
        try:
            same = json.loads(path.read_bytes())["id"] == event_id
        except (ValueError, KeyError, TypeError):
            same = False
        if same:
            seen[event_id] += 1
        else:
            bad += 1
    faults: Counter[str] = Counter()
    for path in (workdir / "cmd" / "faults").iterdir():
        if path.suffix in (".fail", ".hang"):
            faults["command-" + path.suffix[1:]] += 1
    return seen, bad, faults


@dataclass
class Outcome:
    """Every figure of a run; `problems` lists each breach of the contract."""

    events_planned: int = 0
    acknowledged: int = 0
    abandoned_absent: int = 0
    abandoned_delivered: int = 0
    delivered: Counter[str] = field(default_factory=Counter)
    dead_expected: Counter[str] = field(default_factory=Counter)
    duplicates: Counter[str] = field(default_factory=Counter)
    lost: int = 0
    command_cut_short: int = 0
    kill_rounds: int = 0
    kill_phases: Counter[str] = field(default_factory=Counter)
    faults: Counter[str] = field(default_factory=Counter)
    permanent: Counter[str] = field(default_factory=Counter)
    http_statuses: Counter[int] = field(default_factory=Counter)
    integrity_after_kills: Counter[str] = field(default_factory=Counter)
    integrity_final: str = ""
    drain_seconds: float = 0.0
    total_seconds: float = 0.0
    problems: list[str] = field(default_factory=list)

    @property
    def five_xx_other_than_503(self) -> int:
        return sum(n for status, n in self.http_statuses.items() if status >= 500 and status != 503)


@dataclass
class _Seen:
    """What the sinks got (envelope id → count) and what the store holds."""

    by_sink: dict[str, Counter[str]]
    events: dict[str, dict[str, Any]]
    deliveries: dict[tuple[str, str], Any]


def check(
    plan: list[PlannedEvent],
    sent: SendLog,
    workdir: Path,
    receiver: ChaosReceiver,
    outcome: Outcome,
) -> None:
    """Hold the final state to the contract and fill in the figures."""
    seen = _read_what_was_seen(workdir, receiver, outcome)
    known = {event.event_id for event in plan}
    for sink, ids in seen.by_sink.items():
        phantom = set(ids) - known
        if phantom:
            outcome.problems.append(f"{sink}: {len(phantom)} ids never sent, e.g. {min(phantom)}")
    lost: set[str] = set()
    for event in plan:
        if not _check_event(event, event.event_id in sent.acked, seen, outcome):
            lost.add(event.event_id)
    outcome.lost = len(lost)
    outcome.acknowledged = len(sent.acked)
    outcome.events_planned = len(plan)
    outcome.http_statuses = sent.statuses
    outcome.integrity_final = integrity(workdir / "relay.db")
    if outcome.integrity_final != "ok":
        outcome.problems.append(f"integrity_check: {outcome.integrity_final}")


def _read_what_was_seen(workdir: Path, receiver: ChaosReceiver, outcome: Outcome) -> _Seen:
    events, deliveries = read_store(workdir / "relay.db")
    files, torn = read_file_sink(workdir)
    command, bad_files, _ = read_command_sink(workdir)
    if torn:
        outcome.problems.append(f"{torn} torn or unreadable lines in the jsonl sink")
    # A command whose relay is killed while writing its stdin sees a short envelope and
    # may exit 0; the relay never recorded that run, so it runs the command again.
    outcome.command_cut_short = bad_files
    if receiver.bad_bodies:
        outcome.problems.append(f"{receiver.bad_bodies} unreadable bodies at the HTTP receiver")
    return _Seen({"app": receiver.received, "files": files, "cmd": command}, events, deliveries)


def _check_event(event: PlannedEvent, acked: bool, seen: _Seen, outcome: Outcome) -> bool:
    """Count one event's figures; False when it was lost."""
    stored = event.event_id in seen.events
    if event.permanent:
        outcome.permanent[event.permanent] += acked
    if not acked and not stored:
        if any(ids[event.event_id] for ids in seen.by_sink.values()):
            outcome.problems.append(f"{event.event_id}: delivered but never stored")
        outcome.abandoned_absent += 1
        return True
    if acked and not stored:
        outcome.problems.append(f"{event.event_id}: acknowledged but not in the store")
        return False
    if not acked:
        outcome.abandoned_delivered += 1
    results = [_check_delivery(event, sink, seen, outcome) for sink in SINKS]
    return all(results)


def _check_delivery(event: PlannedEvent, sink: str, seen: _Seen, outcome: Outcome) -> bool:
    """Hold one (event, sink) to `delivered` or `dead`; False when the sink lost it."""
    row = seen.deliveries.get((event.event_id, sink))
    if row is None:
        # Event and deliveries are written in one transaction: never half-recorded.
        outcome.problems.append(f"{event.event_id}: stored without its {sink} delivery")
        return False
    expected = event.expected(sink)
    count = seen.by_sink[sink][event.event_id]
    if row["state"] != expected:
        outcome.problems.append(
            f"{event.event_id}/{sink}: {row['state']}, expected {expected} ({row['last_error']})"
        )
    if expected == "dead":
        outcome.dead_expected[sink] += 1
        if not row["last_error"]:
            outcome.problems.append(f"{event.event_id}/{sink}: dead without a reason")
        if count:
            outcome.problems.append(f"{event.event_id}/{sink}: dead but was received")
        return True
    outcome.delivered[sink] += count > 0
    outcome.duplicates[sink] += max(0, count - 1)
    if count == 0:
        outcome.problems.append(f"{event.event_id}: never reached {sink}")
        return False
    return True
