"""Machine description and BENCHMARKS.md, written from the stored results of each scenario."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import shutil
import sqlite3
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / "results"
FINDINGS = Path(__file__).resolve().parent / "FINDINGS.md"
ORDER = (
    "ingest",
    "e2e",
    "fanout",
    "memory",
    "scale",
    "command",
    "cli",
    "pg-ingest",
    "pg-e2e",
    "pg-fanout",
    "takeover",
    "restart-drain",
)


def machine() -> dict[str, str]:
    """CPU, cores, memory, kernel and the versions that matter."""
    cpu = "unknown"
    with open("/proc/cpuinfo") as handle:
        for line in handle:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    memory_kib = 0
    with open("/proc/meminfo") as handle:
        for line in handle:
            if line.startswith("MemTotal:"):
                memory_kib = int(line.split()[1])
    wrk_version = "not installed"
    if shutil.which("wrk"):
        wrk = subprocess.run(["wrk", "--version"], capture_output=True, text=True, check=False)
        wrk_version = (wrk.stdout or wrk.stderr).split("\n", 1)[0].strip()
    return {
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "memory": f"{memory_kib / 1024 / 1024:.1f} GiB",
        "kernel": platform.release(),
        "os": _os_name(),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "aiohttp": metadata.version("aiohttp"),
        "aiosqlite": metadata.version("aiosqlite"),
        "pulse-relay": metadata.version("pulse-relay"),
        "wrk": wrk_version,
    }


def _os_name() -> str:
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip('"')
    except OSError:
        pass
    return sys.platform


def save(name: str, result: dict[str, Any], *, command: str, directory: Path = RESULTS_DIR) -> None:
    """Store one scenario's result as `directory`/NAME.json, with its command and date."""
    directory.mkdir(parents=True, exist_ok=True)
    result = dict(
        result, command=command, date=dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    )
    (directory / f"{name}.json").write_text(json.dumps(result, indent=1, default=str) + "\n")


def load(directory: Path = RESULTS_DIR) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for name in ORDER:
        path = directory / f"{name}.json"
        if path.exists():
            found[name] = json.loads(path.read_text())
    return found


def _met(value: bool | None) -> str:
    return {True: "yes", False: "**no**", None: "—"}[value]


def write(path: Path, directory: Path = RESULTS_DIR) -> None:
    """Render BENCHMARKS.md from every scenario result stored in `directory`."""
    results = load(directory)
    info = machine()
    lines = [
        "# Benchmarks",
        "",
        "Run every scenario against the real `pulse-relay serve` on 127.0.0.1 and rewrite this",
        "file (about 25 minutes on the machine below; `--quick` takes about 5):",
        "",
        "```sh",
        "apt-get install -y wrk webhook   # the load generator and Debian's adnanh/webhook",
        ".venv/bin/pip install -e '.[test]'",
        ".venv/bin/python -m bench all            # or: --quick, or one scenario:",
        ".venv/bin/python -m bench ingest  # or e2e, pg-ingest pg-fanout, takeover, ...",
        ".venv/bin/python -m bench report         # rewrite this file from bench/results/*.json",
        "```",
        "",
        "Each scenario stores its figures in `bench/results/SCENARIO.json`; this file is",
        "rendered from those, so a single scenario can be re-run on its own.",
        "",
        "## Results",
        "",
        "| scenario | figure | target | met? |",
        "|---|---|---|---|",
    ]
    for name in ORDER:
        for row in results.get(name, {}).get("rows", []):
            lines.append(
                f"| {row['scenario']} | {row['figure']} | {row['target']} | {_met(row['met'])} |"
            )
    missing = [name for name in ORDER if name not in results]
    if missing:
        lines += ["", f"Not run yet: {', '.join(missing)}."]
    lines += ["", "Run dates and commands:", ""]
    for name, result in results.items():
        lines.append(f"- `{name}`: {result.get('date')} — `{result.get('command')}`")
    lines += ["", "## Machine", "", "| | |", "|---|---|"]
    lines += [f"| {key} | {value} |" for key, value in info.items()]
    lines += ["", f"Rendered {dt.datetime.now(dt.UTC).date().isoformat()}.", ""]
    lines += [METHOD, ""]
    if FINDINGS.exists():
        lines += [FINDINGS.read_text().rstrip(), ""]
    lines += ["## Raw figures", ""]
    for name, result in results.items():
        raw = {k: v for k, v in result.items() if k not in ("rows", "command", "date")}
        lines += [f"<details><summary>{name}</summary>", "", "```json"]
        lines += [json.dumps(raw, indent=1, default=str), "```", "", "</details>", ""]
    path.write_text("\n".join(lines))


METHOD = """## How each figure is measured

Everything runs on one 2-core machine: the load generator (wrk, or the Python sender),
the relay, the baseline, the Pulse API emulator (its own process, `bench/emulator_proc.py`)
and the HTTP sink's receiver all compete for the same two cores. That is why timings
are ratios against baselines measured in the same run. The relay runs with
`store.synchronous = "FULL"` and `verify.tolerance_seconds = 3600` (requests are
signed just before each run; verification costs the same); the ingest runs use the
default `[log] level = "info"` (one JSON line per accepted webhook, docs/metrics.md), the
others `warning`. Metrics are always on. "Median" is over `--runs` runs (3 by
default, 1 with `--quick`).

- **ingest** — `wrk -t2 -c64 -d10s --timeout 10s -s bench/signed_requests.lua`
  over pre-signed requests with unique `webhook-id`s (enough that no id repeats within a
  run, so every request is a real insert into a fresh store; the store's row count is
  recorded to check it). The relay has no sinks, so only the ingest path runs: bounded
  read, Standard Webhooks verification, parse, group-commit insert with fsync, log
  line, 202. Each run drives, back to back with the same wrk command, two baselines
  and then the relay: `bench/baseline.py`, a bare aiohttp handler that reads the body
  and answers 200, and `bench/minimal.py`, the least a verified durable ingest can
  do on this stack (Standard Webhooks verify, JSON parse, group commit of the event
  on a writer thread with `synchronous = FULL`, JSON answer; no logs, metrics or
  routing). After the relay, the same minimal handler again with `--log-line`: it
  writes the relay's JSON line per accepted webhook through the relay's own logging
  set-up, the one piece of the relay's extra work docs/metrics.md requires; the ingest
  target is set against it. Last, the minimal handler with `--relay-work`: the least
  code that does the relay's work per webhook (verification, the log line, the row the
  relay stores with every column it writes, in the relay's own schema and indexes, its
  deliveries rows, dedupe by id, the same group commit with `synchronous = FULL`, the
  relay's answer): its rate ÷ the log-line handler's is the lower bound row, the best
  ratio a relay doing that work reaches here. Figures: median of relay req/s ÷ each
  baseline's req/s, and each server's CPU time (all threads, from `/proc/PID/stat`)
  per answer, which does not depend on how much of a core the server got on a shared
  machine.
- **ack p99 at 64 connections** — wrk's p50 and p99 of those same relay runs (64 connections,
  closed loop, so at the ingest ceiling), median over runs.
- **end-to-end** — a Python asyncio/aiohttp sender posts `job.completed` webhooks at a
  fixed rate (open loop: each request starts at its slot, whatever the previous one
  does). The relay fetches each job from the emulator and the file sink writes
  `{id}.json`. An inotify watch (`IN_MOVED_TO`) on the sink directory, read by a thread
  of the sender process, timestamps the rename that puts each file in place (the
  sink writes a temporary file, fsyncs it and renames it). Latency = rename time -
  the time the sender started the POST, both from the same clock in the same process.
- **fan-out** — sinks file + http (to the baseline app) + command (`/bin/true`), every
  event fetched from the emulator. Each round (3; 1 with `--quick`) sends a burst of N
  events as fast as 32 connections go; capacity = N ÷ time until every delivery is
  `delivered`; drain = the burst's deliveries still to do once every webhook was in ÷
  3 ÷ the time they took. Right after each burst, `bench/fanout_floor.py` does the same
  work for 2000 events with no store and no relay (one GET per event, then the three
  sinks at once, each file fsynced, renamed and its directory fsynced): the floor of
  that round. Then the same script with `--record` does it again as the lower bound:
  the floor that also keeps, in a SQLite file of the relay's schema, each fetched job
  and each outcome with its attempt, committed in groups by one writer thread (no
  claims, leases, logs or metrics). After the first round, events are paced at 90 % of
  its capacity (else 75 %, 60 %) for 20 s while the number of `pending` deliveries is
  sampled every 0.5 s: the rate counts as sustained when the backlog in the second half is not
  larger than in the first half (plus 3 s of events) and it empties after sending
  stops. Figures: the median of the rounds' drain ÷ floor (the target); the lower
  bound ÷ floor beside it; that paced rate; the median burst capacity.
- **memory** — events (fetch + file sink) sent as fast as 32 connections go, in two
  halves; `VmRSS` of `serve` sampled every 0.5 s during ingest and drain; peak is the
  kernel's `VmHWM`; "after drain" is `VmRSS` 2 s after every delivery of a half is
  done. No growth: RSS after the second half ≤ RSS after the first + max(5 %, 4 MiB).
- **scale** — serve creates the schema, then 1 000 000 delivered events are written
  straight into `events` with sqlite3; serve restarts on that store. Per run: the
  baseline, the relay on a fresh empty store, the relay on the 1 M store, same wrk
  settings. Dedupe latency: wrk (64 connections, 5 s) replaying signed requests whose
  ids the store already holds (for the empty store, ids just ingested), so every
  answer is a 200 `duplicate`.
- **command path** — pulse-relay: one command sink `argv = ["/bin/true"]`,
  `concurrency = 4`, no fetch; N events posted as fast as 32 connections go; the
  figure is N ÷ time from the first POST to the last delivery marked `delivered`
  (it acks first and executes later, so this is the execution rate, ack included).
  Debian's `webhook` (adnanh/webhook) runs the same `/bin/true` with
  `include-command-output-in-response: true`, so each answer comes after the command
  exited and wrk's request rate (same request file, 5 s, 4 and 16 connections) is its
  execution rate. It verifies nothing and stores nothing: it is the cost of running a
  command from an HTTP request, not a like-for-like relay.
- **CLI start** — wall time of `pulse-relay --help` and `pulse-relay events` (on a
  store holding one watch) and of `python -c pass`, run in turn 21 times (7 with
  `--quick`); figure: each median, and its ratio to `python -c pass`. Every command
  runs with its modules byte-compiled, as `pip install` leaves an installed package
  (a bytecode cache of the run's own, `PYTHONPYCACHEPREFIX`, filled by one untimed
  pass); `events` is also timed compiling the project's modules on every run
  (`PYTHONDONTWRITEBYTECODE=1` with the editable install's sources), reported beside
  the floor. The floor (`bench/cli_floor.py both`) runs in the same rounds; `events` ÷
  floor is the ratio of the two medians of CPU time (user + system of each process:
  starting is CPU work, and the wall time of a shared machine adds whatever else ran),
  the wall-time ratio beside it. The lower bound beside it is the floor's `relay`
  mode: click imported and the relay's own settings loaded, then the same read, what
  `events` cannot shed.
- **pg-ingest** — one run drives, back to back with the ingest scenario's wrk command
  (64 connections, unique pre-signed ids, 10 s): bare aiohttp, the minimal handler,
  the relay on SQLite (`synchronous = FULL`, `[log] level = "info"`, as in ingest),
  the relay on PostgreSQL (`store.url`, a fresh database `pulse_relay_bench_<random>`,
  created for the measurement and dropped after it, on a PostgreSQL 15 server the
  benchmark starts from Debian's binaries with `fsync` and `synchronous_commit` on,
  `bench/pg_server.py`; `BENCH_POSTGRES_ADMIN_URL` names another server instead),
  then two `serve` processes on one fresh database with the load
  split: two wrk processes (`-t2 -c32` each, their own unique ids) started together;
  answers/s is their sum, p50 and p99 the worse of the two. Figures: answers/s, each
  ratio to each baseline, ack p50/p99, median over runs. PostgreSQL runs on the same
  two cores, so its CPU counts against the relay: the PostgreSQL rows pay for the
  database server as well, which the SQLite rows do in-process. CPU per answer: the
  relays' from `/proc/PID/stat`, and every process of the server (backends, WAL
  writer, checkpointer; the postmaster's reaped children through its `cutime`). With a
  named server, only the backends serving the benchmark database (from
  `pg_stat_activity`) are counted. Targets: ingest on PostgreSQL ÷ on SQLite (one
  relay each) ≥ 0.60, and CPU per event, PostgreSQL (relay + server) ÷ the SQLite
  relay, ≤ 1.3; each the median of the runs' own ratios. Last in each run, the lower
  bound for both: the minimal handler with `--relay-work` on SQLite, then with
  `--postgres URL` on a fresh database (`bench/minimal_pg.py`: the same rows on the
  relay's own PostgreSQL schema, one connection, one transaction per group, a single
  pipelined `INSERT ... SELECT FROM unnest(...) ON CONFLICT DO NOTHING RETURNING id`),
  the server's CPU counted as for the relay: the same two ratios for the least code
  doing the relay's work, the best reachable on this stack.
- **end-to-end on PostgreSQL** — the end-to-end scenario's machinery and rate with
  `store.url` on a fresh database, and the same run on SQLite just before it.
- **fan-out on PostgreSQL** (`pg-fanout`) — each round sends a burst of up to 3000
  events (600 with `--quick`) as fast as 32 connections go to a fresh relay on SQLite,
  then to a fresh relay on a fresh PostgreSQL database, with the fan-out scenario's
  three sinks. Figures: the drain rate once every webhook was in (PostgreSQL ÷ SQLite,
  median of the rounds' ratios, target ≥ 0.80) and CPU per event over the events'
  whole life (relay, plus the server on PostgreSQL). Then one more relay on
  PostgreSQL reaches the server through a counting TCP proxy
  (`bench/pg_roundtrips.py`): a round trip begins each time the client speaks after
  the server has, so a pipeline of statements is one and each awaited statement is
  one, whatever the code that sent it. Counted: 5 s of the idle relay, then events
  at the end-to-end rate, then a burst; round trips ÷ events for each (target ≤ 5 for
  both; an event is one ingest, one job fetch and three deliveries).
- **takeover** — two relays on one fresh PostgreSQL database, `delivery.lease_seconds`
  = 5, a command sink (`bench/pg_scenarios.py` `SLOW_SINK`, concurrency 8) that notes
  each event's start and end; its first run of an event takes 120 s (so it is still
  in flight at the kill), a later run 0.5 s. Relay A alone receives 8
  events (4 with `--quick`, no fetch); once the sink runs all of them, relay B starts
  and A is SIGKILLed together with its sink commands (as a container or a systemd
  unit going down takes them all). Figure: from the kill to the latest `updated_at`
  of the `delivered` deliveries (the relay's clock, the same as the benchmark's), and
  when B started the last of them again; duplicates = events the sink finished more
  than once.
- **restart drain** — SQLite, one relay, the same slow sink (first run 120 s, a
  later run 1 s, concurrency 8), 8 events in flight (4 with `--quick`); the relay and its commands
  are SIGKILLed and `serve` is started again on the same store. Figures from the
  moment the new process is spawned: until the sink has started every one of the
  killed relay's deliveries again (the target, ≤ 2 s: it includes the interpreter's
  start; the time until `/healthz` answers is recorded beside it), and until all
  are `delivered`."""
