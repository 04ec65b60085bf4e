"""Fan-out on PostgreSQL against the same on SQLite, and PostgreSQL round trips per event.

`pg-fanout`: each round sends one burst of webhooks to a fresh relay on SQLite, then
to a fresh relay on a fresh PostgreSQL database, every event fetched and delivered to
the three sinks of the fan-out scenario (file, HTTP, command). Figures per backend:
the drain rate once every webhook is in, and CPU per event over the whole life of the
events (the relay's; on PostgreSQL the server's processes' too).

Round trips: one more relay on PostgreSQL reaches the server through a counting proxy
(bench/pg_roundtrips.py) while webhooks arrive at the end-to-end scenario's pace, and
then in a burst; the round trips of every connection of the relay, divided by the
events, each of which is one ingest, one job fetch and three deliveries.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from bench import common, load
from bench.common import RelayConfig, median
from bench.delivery_scenarios import fanout_floor_run, fanout_sinks
from bench.measure import Sizes, row
from bench.pg_roundtrips import CountingProxy

PREFIX = "pgf-"
SINKS = 3
# Bursts no larger than this: two backends times three rounds must stay within minutes.
MAX_BURST = 3000
# Seconds of an idle relay whose round trips are counted: its polls, its lease renewals.
IDLE_SECONDS = 5.0


def pg_fanout(sizes: Sizes) -> dict[str, Any]:
    """Rounds of SQLite then PostgreSQL bursts, then the round-trip count."""
    burst = min(sizes.fanout_burst, MAX_BURST)
    with common.workdir("pg-fanout") as workdir:
        # The round-trip count sends its paced events, then a burst of fresh ids after them.
        jobs = min(sizes.e2e_events, burst) + burst
        emulator, base_url = common.emulator_process(workdir, PREFIX, jobs)
        receiver, http_port = common.baseline_process(workdir)
        with emulator, receiver:
            rounds = []
            bounds = []

            def on_both(measure: Callable[..., dict[str, Any]], name: str) -> dict[str, Any]:
                """`measure` on SQLite, then on PostgreSQL, each in a folder of its own."""
                return {
                    backend: measure(
                        workdir / f"{name}-{backend}", backend, burst, base_url, http_port
                    )
                    for backend in ("sqlite", "postgres")
                }

            for number in range(sizes.runs):
                rounds.append(on_both(_burst, f"r{number}"))
                print(f"  pg-fanout round {number}: {rounds[-1]}")
                bounds.append(on_both(_bound, f"b{number}"))
                print(f"  pg-fanout lower bound {number}: {bounds[-1]}")
            trips = _round_trips(workdir / "trips", base_url, http_port, sizes, burst)
            print(f"  pg-fanout round trips: {trips}")
    return {
        "rows": _rows(rounds, trips, burst) + _bound_rows(bounds, rounds),
        "rounds": rounds,
        "bounds": bounds,
        "round_trips": trips,
    }


@contextlib.contextmanager
def _store(backend: str) -> Iterator[str | None]:
    if backend == "postgres":
        with common.postgres_database() as url:
            yield url
    else:
        yield None


def _delivered(url: str | None, store: Path) -> Callable[[], int]:
    if url is None:
        return lambda: common.delivered_count(store)
    return lambda: common.delivered_count_pg(url)


def _burst(
    run_dir: Path, backend: str, count: int, base_url: str, http_port: int
) -> dict[str, Any]:
    """One burst into a fresh relay: drain rate once all were in, CPU per event."""
    out = run_dir / "out"
    out.mkdir(parents=True)
    with _store(backend) as url:
        config = RelayConfig(
            sinks=fanout_sinks(out, http_port), pulse_base_url=base_url, store_url=url
        )
        relay, port, store = common.relay_process(run_dir, config)
        with relay:
            delivered = _delivered(url, store)
            server = common.counted_server_pids(url)
            relay_before, server_before = (
                common.cpu_seconds(relay.pid),
                common.server_cpu_seconds(server),
            )
            started = time.monotonic()
            requests = common.signed_requests(PREFIX, count)
            statuses = asyncio.run(
                load.send_all(f"http://127.0.0.1:{port}{common.WEBHOOK_PATH}", requests)
            )
            ingested = time.monotonic() - started
            while_ingesting = delivered()
            drained = common.wait_until(lambda: delivered() >= SINKS * count, timeout_seconds=600)
            finished = time.monotonic() - started
            relay_cpu = common.cpu_seconds(relay.pid) - relay_before
            server_cpu = common.server_cpu_seconds(server) - server_before
    return {
        "statuses": statuses,
        "drained": drained,
        "capacity": count / finished,
        "drain_after_ingest": (SINKS * count - while_ingesting)
        / SINKS
        / max(finished - ingested, 1e-3),
        "relay_cpu_us_per_event": relay_cpu / count * 1e6,
        "server_cpu_us_per_event": server_cpu / count * 1e6,
    }


def _bound(
    run_dir: Path, backend: str, count: int, base_url: str, http_port: int
) -> dict[str, Any]:
    """The fan-out lower bound (bench/fanout_floor.py keeping what the relay keeps) on
    `backend`: its drain rate and CPU per event (on PostgreSQL the server's too)."""
    with _store(backend) as url:
        server = common.counted_server_pids(url)
        server_before = common.server_cpu_seconds(server)
        measured = fanout_floor_run(
            run_dir,
            base_url,
            http_port,
            count,
            record=url is None,
            record_postgres=url,
            prefix=PREFIX,
        )
        server_cpu = common.server_cpu_seconds(server) - server_before
    return {
        "rate": measured["events"] / measured["seconds"],
        "cpu_us_per_event": (measured["cpu_seconds"] + server_cpu) / count * 1e6,
        "server_cpu_us_per_event": server_cpu / count * 1e6,
    }


def _bound_rows(bounds: list[dict[str, Any]], rounds: list[dict[str, Any]]) -> list[dict[str, Any]]:
    ratio = median(b["postgres"]["rate"] / b["sqlite"]["rate"] for b in bounds)
    cpu = median(
        b["postgres"]["cpu_us_per_event"] / b["sqlite"]["cpu_us_per_event"] for b in bounds
    )
    relay = median(
        r["postgres"]["drain_after_ingest"] / r["sqlite"]["drain_after_ingest"] for r in rounds
    )
    return [
        row(
            "fan-out lower bound, PostgreSQL ÷ SQLite",
            f"{ratio:.2f} (the floor keeping what the relay keeps: PostgreSQL "
            f"{median(b['postgres']['rate'] for b in bounds):.0f} events/s, SQLite "
            f"{median(b['sqlite']['rate'] for b in bounds):.0f}/s); CPU per event {cpu:.2f} "
            f"(PostgreSQL {median(b['postgres']['cpu_us_per_event'] for b in bounds):.0f} µs "
            f"with the server's, SQLite "
            f"{median(b['sqlite']['cpu_us_per_event'] for b in bounds):.0f} µs); the relays "
            f"in the same rounds: {relay:.2f}",
            "report",
            None,
        )
    ]


def _round_trips(
    run_dir: Path, base_url: str, http_port: int, sizes: Sizes, burst: int
) -> dict[str, Any]:
    """Round trips per event at the end-to-end pace and in a burst, and per idle second."""
    out = run_dir / "out"
    out.mkdir(parents=True)
    paced_count = min(sizes.e2e_events, burst)
    with common.postgres_database() as url, CountingProxy(_port(url)) as proxy:
        config = RelayConfig(
            sinks=fanout_sinks(out, http_port), pulse_base_url=base_url, store_url=proxy.url(url)
        )
        relay, port, _ = common.relay_process(run_dir, config)
        with relay:
            target = f"http://127.0.0.1:{port}{common.WEBHOOK_PATH}"
            delivered = _delivered(url, Path())
            time.sleep(1.0)  # the relay's start-up (migration, first claims) is not an event's
            proxy.reset()
            time.sleep(IDLE_SECONDS)
            idle = proxy.reset() / IDLE_SECONDS
            requests = common.signed_requests(PREFIX, paced_count)
            asyncio.run(load.send_paced(target, requests, rate_per_second=sizes.e2e_rate))
            common.wait_until(lambda: delivered() >= SINKS * paced_count, timeout_seconds=300)
            paced = proxy.reset() / paced_count
            requests = common.signed_requests(PREFIX, burst, start=paced_count)
            asyncio.run(load.send_all(target, requests))
            common.wait_until(
                lambda: delivered() >= SINKS * (paced_count + burst), timeout_seconds=600
            )
            burst_trips = proxy.reset() / burst
    return {
        "paced_per_event": paced,
        "paced_events": paced_count,
        "rate_per_second": sizes.e2e_rate,
        "burst_per_event": burst_trips,
        "burst_events": burst,
        "idle_per_second": idle,
    }


def _port(url: str) -> int:
    port = urlsplit(url).port
    if port is None:
        raise ValueError(f"no port in {url}")
    return port


def _rows(rounds: list[dict[str, Any]], trips: dict[str, Any], burst: int) -> list[dict[str, Any]]:
    def med(backend: str, key: str) -> float:
        return median(r[backend][key] for r in rounds)

    ratio = median(
        r["postgres"]["drain_after_ingest"] / r["sqlite"]["drain_after_ingest"] for r in rounds
    )
    cpu = median(
        (r["postgres"]["relay_cpu_us_per_event"] + r["postgres"]["server_cpu_us_per_event"])
        / r["sqlite"]["relay_cpu_us_per_event"]
        for r in rounds
    )
    worst = max(trips["paced_per_event"], trips["burst_per_event"])
    return [
        row(
            "fan-out on PostgreSQL ÷ on SQLite",
            f"{ratio:.2f} (drain once all {burst} were in: PostgreSQL "
            f"{med('postgres', 'drain_after_ingest'):.0f} events/s, SQLite "
            f"{med('sqlite', 'drain_after_ingest'):.0f}/s; three sinks each)",
            "≥ 0.80",
            ratio >= 0.80 and all(r[b]["drained"] for r in rounds for b in r),
        ),
        row(
            "fan-out CPU per event, PostgreSQL ÷ SQLite",
            f"{cpu:.2f} (relay {med('postgres', 'relay_cpu_us_per_event'):.0f} µs + server "
            f"{med('postgres', 'server_cpu_us_per_event'):.0f} µs; SQLite relay "
            f"{med('sqlite', 'relay_cpu_us_per_event'):.0f} µs; ingest, fetch, three deliveries)",
            "report",
            None,
        ),
        row(
            "PostgreSQL round trips per event",
            f"{trips['paced_per_event']:.1f} at {trips['rate_per_second']:.0f} events/s, "
            f"{trips['burst_per_event']:.1f} in a burst of {trips['burst_events']} (ingest, fetch, "
            f"three deliveries; counted on the wire); idle relay "
            f"{trips['idle_per_second']:.1f} per second",
            "≤ 5",
            worst <= 5,
        ),
    ]
