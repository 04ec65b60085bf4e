"""Delivery: end to end (webhook to file), fan-out to three sinks, the command sink's path."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

from bench import common, load
from bench.common import RelayConfig, median
from bench.load import WrkResult
from bench.measure import Sizes, row

# -- end to end ---------------------------------------------------------------------------


def e2e_latencies(
    sizes: Sizes, name: str, store_url: str | None = None
) -> tuple[list[float], dict[int, int]]:
    """One paced end-to-end run (fetch + file sink) on SQLite, or on `store_url`:
    each event's time from POST to its file renamed into place, in ms, and the statuses."""
    count = sizes.e2e_events
    with common.workdir(name) as workdir:
        emulator, base_url = common.emulator_process(workdir, "e2e-", count)
        out = workdir / "out"
        out.mkdir()
        sink = {"name": "files", "type": "file", "directory": str(out), "filename": "{id}.json"}
        relay, port, _ = common.relay_process(
            workdir, RelayConfig(sinks=[sink], pulse_base_url=base_url, store_url=store_url)
        )
        with emulator, relay:
            requests = common.signed_requests("e2e-", count)
            with common.RenameWatcher(out) as watcher:
                sent_at, statuses = asyncio.run(
                    load.send_paced(
                        f"http://127.0.0.1:{port}{common.WEBHOOK_PATH}",
                        requests,
                        rate_per_second=sizes.e2e_rate,
                    )
                )
                common.wait_until(lambda: len(watcher.times) >= count, timeout_seconds=60)
            latencies = [
                (watcher.times[f"{wid}.json"] - sent) / 1e6
                for wid, sent in sent_at.items()
                if f"{wid}.json" in watcher.times
            ]
    return latencies, statuses


def end_to_end(sizes: Sizes) -> dict[str, Any]:
    """Webhook sent → file sink's file renamed into place, paced at `e2e_rate`."""
    count = sizes.e2e_events
    latencies, statuses = e2e_latencies(sizes, "e2e")
    p50 = common.percentile(latencies, 0.5)
    p99 = common.percentile(latencies, 0.99)
    return {
        "rows": [
            row(
                "end-to-end",
                f"p50 {p50:.1f} ms / p99 {p99:.1f} ms at {sizes.e2e_rate:.0f} events/s "
                f"({len(latencies)}/{count} files)",
                "p50 < 25 ms",
                p50 < 25 and len(latencies) == count,
            )
        ],
        "statuses": statuses,
        "p50_ms": p50,
        "p90_ms": common.percentile(latencies, 0.9),
        "p99_ms": p99,
        "max_ms": max(latencies, default=float("nan")),
        "files": len(latencies),
    }


# -- fan-out ---------------------------------------------------------------------------------


# Issue 24's target: the drain once every webhook is in, against bench/fanout_floor.py.
FANOUT_DRAIN_VS_FLOOR_TARGET = 0.80


def fanout_sinks(out: Path, http_port: int) -> list[dict[str, Any]]:
    return [
        {"name": "files", "type": "file", "directory": str(out), "filename": "{id}.json"},
        {"name": "app", "type": "http", "url": f"http://127.0.0.1:{http_port}/sink"},
        {"name": "script", "type": "command", "argv": ["/bin/true"]},
    ]


def fan_out(sizes: Sizes) -> dict[str, Any]:
    """Rounds of a burst's drain, each beside the no-store floor measured right after it,
    then a paced run at 90 % of the first burst's capacity watching the backlog."""
    burst = sizes.fanout_burst
    with common.workdir("fanout") as workdir:
        sustain_count = int(2000 * sizes.fanout_sustain_seconds)
        jobs = burst * sizes.runs + sustain_count
        emulator, base_url = common.emulator_process(workdir, "fan-", jobs)
        receiver, http_port = common.baseline_process(workdir)
        out = workdir / "out"
        out.mkdir()
        relay, port, store = common.relay_process(
            workdir, RelayConfig(sinks=fanout_sinks(out, http_port), pulse_base_url=base_url)
        )
        url = f"http://127.0.0.1:{port}{common.WEBHOOK_PATH}"
        with emulator, receiver, relay:
            rounds = []
            for number in range(sizes.runs):
                measured = _burst(url, store, number * burst, burst, relay.pid)
                floor_dir = workdir / f"floor{number}"
                floor_count = min(burst, 2000)
                floor = fanout_floor_run(floor_dir, base_url, http_port, floor_count)
                measured["floor"] = floor["events"] / floor["seconds"]
                measured["floor_cpu_us_per_event"] = floor["cpu_seconds"] / floor_count * 1e6
                measured["drain_vs_floor"] = measured["after_ingest"] / measured["floor"]
                bound = fanout_floor_run(
                    workdir / f"bound{number}", base_url, http_port, floor_count, record=True
                )
                measured["bound"] = bound["events"] / bound["seconds"]
                measured["bound_cpu_us_per_event"] = bound["cpu_seconds"] / floor_count * 1e6
                measured["bound_vs_floor"] = measured["bound"] / measured["floor"]
                print(f"  fan-out round {number}: {measured}")
                rounds.append(measured)
                if number == 0:
                    attempts = _sustain_steps(url, store, burst * sizes.runs, measured, sizes)
    return _fan_out_result(rounds, attempts, burst)


def _burst(url: str, store: Path, start: int, count: int, pid: int) -> dict[str, Any]:
    """`count` webhooks as fast as they go; capacity, the drain once all were in, and the
    relay's CPU per event (ingest, fetch and the three deliveries)."""
    before = common.delivered_count(store)
    cpu_before = common.cpu_seconds(pid)
    requests = common.signed_requests("fan-", count, start=start)
    started = time.monotonic()
    asyncio.run(load.send_all(url, requests))
    ingested = time.monotonic() - started
    while_ingesting = common.delivered_count(store) - before
    drained = common.wait_until(
        lambda: common.delivered_count(store) - before >= 3 * count, timeout_seconds=600
    )
    finished = time.monotonic() - started
    # The drain once every webhook is in, with no ingest competing for the loop.
    draining_seconds = max(finished - ingested, 1e-3)
    return {
        "drained": drained,
        "capacity": count / finished,
        "after_ingest": (3 * count - while_ingesting) / 3 / draining_seconds,
        "relay_cpu_us_per_event": (common.cpu_seconds(pid) - cpu_before) / count * 1e6,
    }


def _sustain_steps(
    url: str, store: Path, start: int, burst: dict[str, Any], sizes: Sizes
) -> list[dict[str, Any]]:
    """Paced runs at 90 %, else 75 %, else 60 % of the burst's capacity, until one is steady."""
    attempts: list[dict[str, Any]] = []
    for fraction in (0.9, 0.75, 0.6):
        rate = max(10.0, burst["capacity"] * fraction)
        count = int(rate * sizes.fanout_sustain_seconds)
        result = _sustain(url, store, start, count, rate)
        start += count
        attempts.append(result)
        print(f"  fan-out paced {rate:.0f}/s: {result}")
        if result["steady"]:
            break
    return attempts


def _fan_out_result(
    rounds: list[dict[str, Any]], attempts: list[dict[str, Any]], burst: int
) -> dict[str, Any]:
    sustained = next((a for a in attempts if a["steady"]), None)
    drain_vs_floor = median(r["drain_vs_floor"] for r in rounds)
    after_ingest = median(r["after_ingest"] for r in rounds)
    floor = median(r["floor"] for r in rounds)
    capacity = median(r["capacity"] for r in rounds)
    figure = (
        f"drain ÷ floor {drain_vs_floor:.2f} (median of {len(rounds)} rounds' ratios; drain "
        f"once all were in {after_ingest:.0f}/s, no-store floor {floor:.0f}/s; CPU per "
        f"event: relay {median(r['relay_cpu_us_per_event'] for r in rounds):.0f} µs with its "
        f"ingest, floor {median(r['floor_cpu_us_per_event'] for r in rounds):.0f} µs); "
    )
    figure += (
        f"{sustained['rate']:.0f} events/s sustained (pending ≤ {sustained['max_pending']}); "
        f"burst drain {capacity:.0f} events/s"
        if sustained
        else f"no steady rate found; burst drain {capacity:.0f} events/s"
    )
    drained = all(r["drained"] for r in rounds)
    met = drained and drain_vs_floor >= FANOUT_DRAIN_VS_FLOOR_TARGET
    target = f"drain ÷ floor ≥ {FANOUT_DRAIN_VS_FLOOR_TARGET:.2f}"
    bound_vs_floor = median(r["bound_vs_floor"] for r in rounds)
    bound = (
        f"{bound_vs_floor:.2f} of the floor (median of {len(rounds)} rounds; "
        f"{median(r['bound'] for r in rounds):.0f} events/s, "
        f"{median(r['bound_cpu_us_per_event'] for r in rounds):.0f} µs CPU per event); "
        f"the relay in the same rounds: {drain_vs_floor:.2f}"
    )
    return {
        "rows": [
            row("fan-out", figure, target, met),
            row(
                "fan-out lower bound: the floor keeping what the relay keeps", bound, "report", None
            ),
        ],
        "rounds": rounds,
        "capacity": capacity,
        "drain_after_ingest_events_per_second": after_ingest,
        "burst": burst,
        "attempts": attempts,
        "floor_events_per_second": floor,
        "drain_vs_floor": drain_vs_floor,
        "bound_vs_floor": bound_vs_floor,
    }


def fanout_floor_run(
    out: Path,
    base_url: str,
    http_port: int,
    count: int,
    *,
    record: bool = False,
    record_postgres: str | None = None,
    prefix: str = "fan-",
) -> dict[str, Any]:
    """What bench/fanout_floor.py measured: events, seconds, its CPU seconds; with
    `record` (in a SQLite file) or `record_postgres` (in that database), as the lower
    bound that keeps what the relay keeps."""
    out.mkdir()
    arguments = [base_url, common.API_KEY, prefix, str(count), str(http_port), str(out)]
    if record:
        arguments += ["--record", str(out / "bound.db")]
    if record_postgres is not None:
        arguments += ["--record-postgres", record_postgres]
    answer = subprocess.run(
        [common.PYTHON, "-m", "bench.fanout_floor", *arguments],
        cwd=common.BENCH_DIR.parent,
        capture_output=True,
        check=True,
        text=True,
        timeout=600,
    )
    measured: dict[str, Any] = json.loads(answer.stdout)
    return measured


def _sustain(url: str, store: Path, start: int, count: int, rate: float) -> dict[str, Any]:
    requests = common.signed_requests("fan-", count, start=start)
    samples: list[tuple[float, int]] = []
    stop = False

    async def sample() -> None:
        begin = time.monotonic()
        while not stop:
            samples.append((time.monotonic() - begin, common.pending_deliveries(store)))
            await asyncio.sleep(0.5)

    async def drive() -> None:
        nonlocal stop
        sampler = asyncio.create_task(sample())
        await load.send_paced(url, requests, rate_per_second=rate)
        stop = True
        await sampler

    asyncio.run(drive())
    cleared = common.wait_until(lambda: common.pending_deliveries(store) == 0, timeout_seconds=120)
    # Steady: the backlog in the second half is no larger than in the first half
    # (plus one second's worth of events), and it empties once sending stops.
    half = len(samples) // 2
    first = max((p for _, p in samples[:half]), default=0)
    second = max((p for _, p in samples[half:]), default=0)
    steady = cleared and second <= first + 3 * rate
    return {
        "rate": rate,
        "events": count,
        "max_pending": max((p for _, p in samples), default=0),
        "first_half_max_pending": first,
        "second_half_max_pending": second,
        "steady": steady,
    }


# -- command path -----------------------------------------------------------------------------


def command_path(sizes: Sizes) -> dict[str, Any]:
    """pulse-relay's command-sink drain rate next to adnanh/webhook running the same command."""
    count = sizes.command_events
    concurrency = 4
    with common.workdir("command") as workdir:
        sink = {
            "name": "script",
            "type": "command",
            "argv": ["/bin/true"],
            "concurrency": concurrency,
        }
        relay, port, store = common.relay_process(workdir, RelayConfig(sinks=[sink], fetch_on=[]))
        requests = common.signed_requests("cmd-", count)
        with relay:
            started = time.monotonic()
            asyncio.run(load.send_all(f"http://127.0.0.1:{port}{common.WEBHOOK_PATH}", requests))
            acked = time.monotonic() - started
            common.wait_until(lambda: common.delivered_count(store) >= count, timeout_seconds=600)
            relay_rate = count / (time.monotonic() - started)
        print(f"  command: pulse-relay {relay_rate:.0f}/s (acked all in {acked:.1f} s)")
        webhook_rates = _webhook_rates(workdir, requests, sizes, concurrency)
    figure = f"pulse-relay {relay_rate:.0f} commands/s; webhook " + ", ".join(
        f"{rate:.0f}/s at {conns} connections" for conns, rate in webhook_rates.items()
    )
    return {
        "rows": [row("command path", figure, "report both", None)],
        "relay_rate": relay_rate,
        "relay_ack_seconds": acked,
        "events": count,
        "sink_concurrency": concurrency,
        "webhook_rates": webhook_rates,
    }


def _webhook_rates(
    workdir: Path, requests: list[common.SignedRequest], sizes: Sizes, concurrency: int
) -> dict[int, float]:
    import shutil

    binary = shutil.which("webhook")
    if binary is None and shutil.which("apt-get"):
        subprocess.run(
            ["apt-get", "install", "-y", "-q", "webhook"], check=False, stdout=subprocess.DEVNULL
        )
        binary = shutil.which("webhook")
    if binary is None:
        print("  command: Debian's webhook is not installed; skipped")
        return {}
    hooks = workdir / "hooks.json"
    # The answer waits for the command (include-command-output-in-response), so
    # wrk's request rate is the rate of completed executions.
    hooks.write_text(
        json.dumps(
            [
                {
                    "id": "pulse",
                    "execute-command": "/bin/true",
                    "include-command-output-in-response": True,
                }
            ]
        )
    )
    port = common.free_port()
    process = common.Process(
        [binary, "-hooks", str(hooks), "-ip", "127.0.0.1", "-port", str(port)],
        log_path=workdir / "webhook.log",
        health_url=f"http://127.0.0.1:{port}/",
    )
    path = common.write_requests_file(workdir / "webhook.txt", requests)
    rates: dict[int, float] = {}
    with process:
        for connections in sorted({concurrency, 16}):
            results = []
            for _ in range(sizes.runs):
                result = _wrk_path(f"http://127.0.0.1:{port}", path, connections, sizes)
                results.append(result.rate)
            rates[connections] = median(results)
            print(f"  command: webhook {rates[connections]:.0f}/s at {connections} connections")
    return rates


def _wrk_path(url: str, path: Path, connections: int, sizes: Sizes) -> WrkResult:

    previous = os.environ.get("BENCH_PATH")
    os.environ["BENCH_PATH"] = "/hooks/pulse"
    try:
        return load.run_wrk(
            url + "/hooks/pulse",
            path,
            connections=connections,
            duration_seconds=max(2.0, sizes.wrk_seconds / 2),
            threads=2,
        )
    finally:
        if previous is None:
            os.environ.pop("BENCH_PATH", None)
        else:
            os.environ["BENCH_PATH"] = previous
