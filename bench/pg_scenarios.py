"""Scenarios on PostgreSQL (ingest, end to end, takeover) and a SQLite restart drain."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bench import common, load
from bench.common import RelayConfig, median
from bench.delivery_scenarios import e2e_latencies
from bench.load import WrkResult
from bench.measure import Sizes, row, wrk_cpu, wrk_fresh
from bench.pg_fanout import pg_fanout

# -- ingest on PostgreSQL ---------------------------------------------------------------


def pg_ingest(sizes: Sizes) -> dict[str, Any]:
    """Relay on SQLite, on PostgreSQL with one relay and with two, against both baselines."""
    runs: list[dict[str, Any]] = []
    with common.workdir("pg-ingest") as workdir:
        for number in range(sizes.runs):
            run_dir = workdir / f"run{number}"
            run_dir.mkdir()
            runs.append(_pg_ingest_run(run_dir, sizes, number))
    return {"rows": _pg_ingest_rows(runs, sizes), "runs": runs}


def _pg_ingest_run(run_dir: Path, sizes: Sizes, number: int) -> dict[str, Any]:
    """One run: the two baselines, then the relay on SQLite, PostgreSQL (1 and 2 relays)."""
    figures: dict[str, dict[str, Any]] = {}
    baseline, base_port = common.baseline_process(run_dir)
    with baseline:
        base, cpu = wrk_cpu(baseline, run_dir, base_port, sizes, f"b{number}-", 20_000.0)
    figures["baseline"] = _figure(base, cpu)
    minimal, minimal_port = common.minimal_process(run_dir)
    with minimal:
        floor, cpu = wrk_cpu(minimal, run_dir, minimal_port, sizes, f"m{number}-", base.rate)
    figures["minimal"] = _figure(floor, cpu)
    sqlite_dir = run_dir / "sqlite"
    sqlite_dir.mkdir()
    relay, port, _ = common.relay_process(sqlite_dir, RelayConfig(log_level="info"))
    with relay:
        mine, cpu = wrk_cpu(relay, sqlite_dir, port, sizes, f"s{number}-", base.rate)
    figures["sqlite"] = _figure(mine, cpu)
    for relays in (1, 2):
        figures[f"postgres_{relays}"] = _pg_relays_run(run_dir, sizes, number, relays, base.rate)
    figures.update(_pg_floor_run(run_dir, sizes, number, base.rate))
    for figure in figures.values():
        figure["to_bare"] = figure["rate"] / figures["baseline"]["rate"]
        figure["to_minimal"] = figure["rate"] / figures["minimal"]["rate"]
    print(
        f"  pg-ingest run {number}: "
        + ", ".join(
            f"{name} {f['rate']:.0f}/s p99 {f['p99_ms']:.1f} ms" for name, f in figures.items()
        )
    )
    return figures


def _figure(result: WrkResult, cpu_us: float) -> dict[str, Any]:
    return {
        "rate": result.rate,
        "p50_ms": result.p50_ms,
        "p99_ms": result.p99_ms,
        "errors": result.errors,
        "requests": result.requests,
        "cpu_us_per_answer": cpu_us,
    }


def _pg_floor_run(
    run_dir: Path, sizes: Sizes, number: int, ceiling: float
) -> dict[str, dict[str, Any]]:
    """The lower-bound handler (bench/minimal.py --relay-work) on SQLite, then on a fresh
    PostgreSQL database with the server's CPU counted as for the relay."""
    folder = run_dir / "floor"
    folder.mkdir()
    handler, port = common.minimal_process(folder, relay_work=True)
    with handler:
        lite, cpu = wrk_cpu(handler, folder, port, sizes, f"fs{number}-", ceiling)
    with common.postgres_database() as url:
        handler, port = common.minimal_process(folder, relay_work=True, postgres=url)
        with handler:
            pg = _pg_wrk(folder, sizes, f"fp{number}-", [handler], [port], url, ceiling)
    return {"floor_sqlite": _figure(lite, cpu), "floor_postgres": pg}


def _pg_relays_run(
    run_dir: Path, sizes: Sizes, number: int, relays: int, ceiling: float
) -> dict[str, Any]:
    """`relays` serve processes on one fresh database, wrk's connections split across them."""
    config = RelayConfig(log_level="info")
    with common.postgres_database() as url:
        config.store_url = url
        processes: list[common.Process] = []
        ports: list[int] = []
        try:
            for index in range(relays):
                folder = run_dir / f"pg{relays}-{index}"
                folder.mkdir()
                process, port, _ = common.relay_process(folder, config)
                processes.append(process.start())
                ports.append(port)
            return _pg_wrk(run_dir, sizes, f"p{relays}{number}-", processes, ports, url, ceiling)
        finally:
            for process in processes:
                process.stop()


def _pg_wrk(
    run_dir: Path,
    sizes: Sizes,
    prefix: str,
    processes: list[common.Process],
    ports: list[int],
    url: str,
    ceiling: float,
) -> dict[str, Any]:
    """wrk against every relay at once (connections split evenly); rates summed, the worse
    p99, relay and PostgreSQL backend CPU per answer."""
    split = dataclasses.replace(sizes, connections=sizes.connections // len(ports))
    backends = common.counted_server_pids(url)
    before = common.cpu_seconds_of([p.pid for p in processes])
    server_before = common.server_cpu_seconds(backends)
    with ThreadPoolExecutor(max_workers=len(ports)) as pool:
        results = list(
            pool.map(
                lambda i: wrk_fresh(
                    run_dir, f"http://127.0.0.1:{ports[i]}", split, f"{prefix}{i}-", ceiling
                ),
                range(len(ports)),
            )
        )
    after = common.cpu_seconds_of([p.pid for p in processes])
    pg_cpu = common.server_cpu_seconds(backends) - server_before
    requests = sum(r.requests for r in results)
    relay_cpu = sum(after[p.pid] - before[p.pid] for p in processes if p.pid in after)
    stored = common.pg_query(url, "SELECT count(*) FROM events")[0][0]
    return {
        "rate": sum(r.rate for r in results),
        "p50_ms": max(r.p50_ms for r in results),
        "p99_ms": max(r.p99_ms for r in results),
        "errors": sum(r.errors for r in results),
        "requests": requests,
        "cpu_us_per_answer": relay_cpu / max(1, requests) * 1e6,
        "postgres_cpu_us_per_answer": pg_cpu / max(1, requests) * 1e6,
        "postgres_backends": len(backends),
        "stored_events": stored,
        "per_relay": [r.__dict__ for r in results],
    }


def _pg_ingest_rows(runs: list[dict[str, Any]], sizes: Sizes) -> list[dict[str, Any]]:
    def med(name: str, key: str) -> float:
        return median(r[name][key] for r in runs)

    rows = [
        row(
            "pg-ingest baselines",
            f"bare aiohttp {med('baseline', 'rate'):.0f}/s; minimal handler "
            f"{med('minimal', 'rate'):.0f}/s (CPU {med('baseline', 'cpu_us_per_answer'):.0f} / "
            f"{med('minimal', 'cpu_us_per_answer'):.0f} µs per answer)",
            "report",
            None,
        )
    ]
    labels = {
        "sqlite": "SQLite",
        "postgres_1": "PostgreSQL, 1 relay",
        "postgres_2": "PostgreSQL, 2 relays",
    }
    for name, label in labels.items():
        cpu = f"relay CPU {med(name, 'cpu_us_per_answer'):.0f} µs per answer"
        if name != "sqlite":
            cpu += f" + PostgreSQL backends {med(name, 'postgres_cpu_us_per_answer'):.0f} µs"
        rows.append(
            row(
                f"pg-ingest: {label}",
                f"{med(name, 'rate'):.0f}/s; ÷ minimal {med(name, 'to_minimal'):.2f}, "
                f"÷ bare {med(name, 'to_bare'):.2f}; ack p50 {med(name, 'p50_ms'):.1f} / "
                f"p99 {med(name, 'p99_ms'):.1f} ms at {sizes.connections} connections; {cpu}",
                "report",
                None,
            )
        )
    return rows + _pg_ingest_targets(runs) + [_pg_floor_row(runs)]


def _pg_ingest_targets(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The two ratios with targets, each the median of the runs' own ratios."""
    rate = median(r["postgres_1"]["rate"] / r["sqlite"]["rate"] for r in runs)
    cpu = median(
        (r["postgres_1"]["cpu_us_per_answer"] + r["postgres_1"]["postgres_cpu_us_per_answer"])
        / r["sqlite"]["cpu_us_per_answer"]
        for r in runs
    )
    return [
        row(
            "ingest on PostgreSQL ÷ on SQLite, one relay each",
            f"{rate:.2f}",
            "≥ 0.60",
            rate >= 0.60,
        ),
        row(
            "ingest CPU per event, PostgreSQL (relay + server) ÷ SQLite relay",
            f"{cpu:.2f}",
            "≤ 1.3",
            cpu <= 1.3,
        ),
    ]


def _pg_floor_row(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The best the two target ratios can be on this stack: the lower-bound handler's, each
    the median of the runs' own ratios, next to the relay's from the same runs."""

    def ratios(lite: str, pg: str) -> tuple[float, float]:
        rate = median(r[pg]["rate"] / r[lite]["rate"] for r in runs)
        cpu = median(
            (r[pg]["cpu_us_per_answer"] + r[pg]["postgres_cpu_us_per_answer"])
            / r[lite]["cpu_us_per_answer"]
            for r in runs
        )
        return rate, cpu

    rate, cpu = ratios("floor_sqlite", "floor_postgres")
    relay_rate, relay_cpu = ratios("sqlite", "postgres_1")
    floor_pg = median(r["floor_postgres"]["rate"] for r in runs)
    handler = median(r["floor_postgres"]["cpu_us_per_answer"] for r in runs)
    server = median(r["floor_postgres"]["postgres_cpu_us_per_answer"] for r in runs)
    lite = median(r["floor_sqlite"]["cpu_us_per_answer"] for r in runs)
    return row(
        "ingest lower bound: minimal handler doing the relay's work, PostgreSQL ÷ SQLite",
        f"rate {rate:.2f} ({floor_pg:.0f} / {median(r['floor_sqlite']['rate'] for r in runs):.0f}"
        f"/s), CPU {cpu:.2f} (handler {handler:.0f} + server {server:.0f} ÷ {lite:.0f} µs per "
        f"answer); the relay in the same runs: rate {relay_rate:.2f}, CPU {relay_cpu:.2f}",
        "report",
        None,
    )


# -- end to end on PostgreSQL ---------------------------------------------------------------


def pg_end_to_end(sizes: Sizes) -> dict[str, Any]:
    """The e2e scenario on PostgreSQL, with the same run on SQLite just before it."""
    figures: dict[str, dict[str, Any]] = {}
    for label in ("sqlite", "postgres"):
        if label == "postgres":
            with common.postgres_database() as url:
                latencies, statuses = e2e_latencies(sizes, "pg-e2e", url)
        else:
            latencies, statuses = e2e_latencies(sizes, "pg-e2e-sqlite")
        figures[label] = {
            "p50_ms": common.percentile(latencies, 0.5),
            "p90_ms": common.percentile(latencies, 0.9),
            "p99_ms": common.percentile(latencies, 0.99),
            "max_ms": max(latencies, default=float("nan")),
            "files": len(latencies),
            "statuses": statuses,
        }
        print(f"  pg-e2e {label}: {figures[label]}")
    pg, lite = figures["postgres"], figures["sqlite"]
    count = sizes.e2e_events
    return {
        "rows": [
            row(
                "end-to-end on PostgreSQL",
                f"p50 {pg['p50_ms']:.1f} ms / p99 {pg['p99_ms']:.1f} ms at "
                f"{sizes.e2e_rate:.0f} events/s ({pg['files']}/{count} files); SQLite same "
                f"run p50 {lite['p50_ms']:.1f} / p99 {lite['p99_ms']:.1f} ms",
                "p50 < 25 ms",
                pg["p50_ms"] < 25 and pg["files"] == count,
            )
        ],
        **figures,
    }


# -- slow sink, kills ----------------------------------------------------------------------

# A command sink that notes when it starts and finishes each event (its id from the
# environment), sleeping in between: its first run of an event takes `first` seconds
# (work that stays in flight until its relay is killed), any later run `delay`.
SLOW_SINK = """\
import os, sys, time
sys.stdin.buffer.read()
log, first, delay = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
event = os.environ["PULSE_EVENT_ID"]
seen = f" {event} " in open(log).read()
def note(what):
    with open(log, "a") as handle:
        handle.write(f"{what} {event} {time.time():.6f}\\n")
note("start")
time.sleep(delay if seen else first)
note("done")
"""


def _slow_sink(
    workdir: Path, first: float, delay: float, concurrency: int
) -> tuple[dict[str, Any], Path]:
    script = workdir / "slow_sink.py"
    script.write_text(SLOW_SINK)
    log = workdir / "sink.log"
    log.touch()
    argv = [common.PYTHON, str(script), str(log), str(first), str(delay)]
    return {"name": "slow", "type": "command", "argv": argv, "concurrency": concurrency}, log


def _sink_notes(log: Path) -> list[tuple[str, str, float]]:
    notes = []
    for line in log.read_text().splitlines():
        what, event, at = line.split()
        notes.append((what, event, float(at)))
    return notes


def _send_and_wait_started(port: int, log: Path, count: int, prefix: str) -> list[str]:
    """Post `count` events (no fetch) and wait until the sink runs every one of them."""
    import asyncio

    requests = common.signed_requests(prefix, count, event_type="job.created")
    asyncio.run(load.send_all(f"http://127.0.0.1:{port}{common.WEBHOOK_PATH}", requests))
    ids = [r.webhook_id for r in requests]

    def started() -> bool:
        return {e for w, e, _ in _sink_notes(log) if w == "start"} >= set(ids)

    if not common.wait_until(started, timeout_seconds=60, interval_seconds=0.05):
        raise RuntimeError("the slow sink never ran every event")
    return ids


def takeover(sizes: Sizes) -> dict[str, Any]:
    """Two relays on PostgreSQL; the one holding the claims is SIGKILLed with its commands;
    time from the kill until the other has delivered the last of them."""
    lease, count, delay = sizes.lease_seconds, sizes.inflight_events, 0.5
    with common.workdir("takeover") as workdir, common.postgres_database() as url:
        sink, log = _slow_sink(workdir, 120.0, delay, count)
        config = RelayConfig(sinks=[sink], fetch_on=[], store_url=url, lease_seconds=lease)
        folders = [workdir / "a", workdir / "b"]
        relays = []
        for folder in folders:
            folder.mkdir()
            relays.append(common.relay_process(folder, config))
        (first, first_port, _), (second, _, _) = relays
        with first:
            ids = _send_and_wait_started(first_port, log, count, "take-")
            # b starts once a has claimed everything, so a holds every claim.
            with second:
                killed_at = common.kill_with_children(first)
                done = common.wait_until(
                    lambda: common.delivered_count_pg(url) >= count, timeout_seconds=lease * 4 + 60
                )
                rows = common.pg_query(url, "SELECT max(updated_at) FROM deliveries")
                took = float(rows[0][0]) - killed_at
        return _kill_result("takeover", log, ids, killed_at, took, done, lease, delay)


def _kill_result(
    name: str,
    log: Path,
    ids: list[str],
    killed_at: float,
    took: float,
    done: bool,
    lease: float,
    delay: float,
) -> dict[str, Any]:
    notes = _sink_notes(log)
    finished = [e for w, e, _ in notes if w == "done"]
    duplicates = len(finished) - len(set(finished))
    restarted = [at for w, e, at in notes if w == "start" and at > killed_at and e in ids]
    print(f"  {name}: {took:.2f} s, {duplicates} duplicates, all delivered: {done}")
    return {
        "lease_seconds": lease,
        "sink_seconds": delay,
        "events": len(ids),
        "seconds_to_last_delivery": took,
        "seconds_to_last_restart": max(restarted, default=float("nan")) - killed_at,
        "duplicates": duplicates,
        "all_delivered": done,
        "killed_at": killed_at,
    }


def takeover_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    lease = result["lease_seconds"]
    took = result["seconds_to_last_delivery"]
    # The kill to the last delivery includes the sink's own run time on the second relay.
    rerun = result["seconds_to_last_restart"]
    return [
        row(
            "takeover (PostgreSQL, 2 relays)",
            f"lease {lease:g} s: the killed relay's {result['events']} in-flight deliveries "
            f"restarted by the other {rerun:.2f} s after the kill, last delivered "
            f"{took:.2f} s after it (sink takes {result['sink_seconds']:g} s); "
            f"{result['duplicates']} duplicates",
            "last delivered ≤ one lease; no duplicates",
            result["all_delivered"] and took <= lease and result["duplicates"] == 0,
        )
    ]


def restart_drain(sizes: Sizes) -> dict[str, Any]:
    """SQLite: a relay with deliveries in flight is SIGKILLed with its commands and started
    again; time from the new process's start until that work runs and is delivered."""
    count, delay = sizes.inflight_events, 1.0
    with common.workdir("restart-drain") as workdir:
        sink, log = _slow_sink(workdir, 120.0, delay, count)
        relay, port, store = common.relay_process(workdir, RelayConfig(sinks=[sink], fetch_on=[]))
        with relay:
            ids = _send_and_wait_started(port, log, count, "drain-")
            killed_at = common.kill_with_children(relay)
            started_at = time.time()
            relay.start()
            healthy_at = time.time()

            def delivered() -> bool:
                return common.delivered_count(store) >= count

            done = common.wait_until(delivered, timeout_seconds=120, interval_seconds=0.05)
            last = common.query_one(store, "SELECT max(updated_at) FROM deliveries")
        notes = _sink_notes(log)
    rerun = max((at for w, e, at in notes if w == "start" and at > killed_at), default=0.0)
    result: dict[str, Any] = {
        "events": count,
        "sink_seconds": delay,
        "seconds_to_healthz": healthy_at - started_at,
        "seconds_to_all_running": rerun - started_at,
        "seconds_to_all_delivered": float(last) - started_at,
        "duplicates": len([w for w, _, _ in notes if w == "done"]) - len(set(ids)),
        "all_delivered": done,
    }
    print(f"  restart-drain: {result}")
    running = result["seconds_to_all_running"]
    result["rows"] = [
        row(
            "restart drain (SQLite)",
            f"{count} leased deliveries running again {running:.2f} s after the restarted "
            f"process started (/healthz answered at {result['seconds_to_healthz']:.2f} s), "
            f"all delivered after {result['seconds_to_all_delivered']:.2f} s "
            f"(sink takes {delay:g} s)",
            "running again ≤ 2 s after restart",
            done and running <= 2.0,
        )
    ]
    return result


def _takeover(sizes: Sizes) -> dict[str, Any]:
    result = takeover(sizes)
    return {"rows": takeover_rows(result), **result}


SCENARIOS: dict[str, Callable[[Sizes], dict[str, Any]]] = {
    "pg-ingest": pg_ingest,
    "pg-e2e": pg_end_to_end,
    "pg-fanout": pg_fanout,
    "takeover": _takeover,
    "restart-drain": restart_drain,
}
