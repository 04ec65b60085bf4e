"""The scenarios. Each returns a JSON-able dict: rows for the table plus raw figures."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import common
from bench.common import RelayConfig, WrkResult, median


@dataclass(frozen=True)
class Sizes:
    """Every scenario's size; `quick()` is a fast run, the defaults the full one."""

    runs: int = 3
    wrk_seconds: float = 10.0
    connections: int = 64
    e2e_events: int = 3000
    e2e_rate: float = 200.0
    fanout_burst: int = 6000
    fanout_sustain_seconds: float = 20.0
    memory_events: int = 100_000
    scale_prefill: int = 1_000_000
    dedupe_ids: int = 20_000
    command_events: int = 3000
    cli_runs: int = 21
    inflight_events: int = 8
    lease_seconds: float = 5.0

    @classmethod
    def quick(cls) -> Sizes:
        return cls(
            runs=1,
            wrk_seconds=3.0,
            e2e_events=400,
            fanout_burst=600,
            fanout_sustain_seconds=5.0,
            memory_events=5000,
            scale_prefill=100_000,
            dedupe_ids=5000,
            command_events=400,
            cli_runs=7,
            inflight_events=4,
        )


def _row(scenario: str, figure: str, target: str, met: bool | None) -> dict[str, Any]:
    return {"scenario": scenario, "figure": figure, "target": target, "met": met}


def _requests_needed(sizes: Sizes, ceiling_per_second: float) -> int:
    # Every request must be a fresh insert: enough unique ids for the fastest plausible run.
    return int(ceiling_per_second * sizes.wrk_seconds * 1.3) + 1000


# -- ingest ceiling + ack latency -------------------------------------------------------


def ingest(sizes: Sizes) -> dict[str, Any]:
    """Relay ingest at default settings ÷ each baseline, same wrk settings, fresh stores."""
    runs: list[dict[str, Any]] = []
    with common.workdir("ingest") as workdir:
        for number in range(sizes.runs):
            run_dir = workdir / f"run{number}"
            run_dir.mkdir()
            runs.append(_ingest_run(run_dir, sizes, number))
    return {"rows": _ingest_rows(runs, sizes), "runs": runs}


def _ingest_run(run_dir: Path, sizes: Sizes, number: int) -> dict[str, Any]:
    """One run: bare aiohttp, the minimal handler, the relay, then the minimal handler with
    the relay's log line, back to back."""
    baseline, base_port = common.baseline_process(run_dir)
    with baseline:
        base, base_cpu = _wrk_cpu(baseline, run_dir, base_port, sizes, f"b{number}-", 20_000.0)
    minimal, minimal_port = common.minimal_process(run_dir)
    with minimal:
        floor, floor_cpu = _wrk_cpu(minimal, run_dir, minimal_port, sizes, f"m{number}-", base.rate)
    relay, port, store = common.relay_process(run_dir, RelayConfig(log_level="info"))
    with relay:
        mine, mine_cpu = _wrk_cpu(relay, run_dir, port, sizes, f"r{number}-", base.rate)
        accepted = common.query_one(store, "SELECT count(*) FROM events")
    lined, lined_port = common.minimal_process(run_dir, log_line=True)
    with lined:
        line, line_cpu = _wrk_cpu(lined, run_dir, lined_port, sizes, f"l{number}-", base.rate)
    print(
        f"  ingest run {number}: bare {base.rate:.0f}/s minimal {floor.rate:.0f}/s "
        f"(with log line {line.rate:.0f}/s) relay {mine.rate:.0f}/s (p99 {mine.p99_ms:.1f} "
        f"ms); CPU µs per answer: {base_cpu:.0f} / {floor_cpu:.0f} ({line_cpu:.0f}) / "
        f"{mine_cpu:.0f}"
    )
    return {
        "baseline": base.__dict__,
        "minimal": floor.__dict__,
        "minimal_log_line": line.__dict__,
        "relay": mine.__dict__,
        "baseline_rate": base.rate,
        "minimal_rate": floor.rate,
        "minimal_log_line_rate": line.rate,
        "relay_rate": mine.rate,
        "cpu_us_per_answer": {
            "baseline": base_cpu,
            "minimal": floor_cpu,
            "minimal_log_line": line_cpu,
            "relay": mine_cpu,
        },
        "stored_events": accepted,
        "ratio": mine.rate / base.rate,
        "minimal_ratio": mine.rate / floor.rate,
        "minimal_log_line_ratio": mine.rate / line.rate,
    }


def _wrk_cpu(
    process: common.Process, run_dir: Path, port: int, sizes: Sizes, prefix: str, ceiling: float
) -> tuple[WrkResult, float]:
    """A wrk run and the server's CPU time per answer in µs (steadier than rates when the
    machine is shared: it does not depend on how much of a core the server was given)."""
    before = common.cpu_seconds(process.pid)
    result = _wrk_fresh(run_dir, f"http://127.0.0.1:{port}", sizes, prefix, ceiling)
    used = common.cpu_seconds(process.pid) - before
    return result, used / max(1, result.requests) * 1e6


def _ingest_rows(runs: list[dict[str, Any]], sizes: Sizes) -> list[dict[str, Any]]:
    to_minimal = median(r["minimal_ratio"] for r in runs)
    to_bare = median(r["ratio"] for r in runs)
    rates = (
        f"{median(r['relay_rate'] for r in runs):.0f}/s; minimal handler "
        f"{median(r['minimal_rate'] for r in runs):.0f}/s; bare aiohttp "
        f"{median(r['baseline_rate'] for r in runs):.0f}/s"
    )
    p50 = median(r["relay"]["p50_ms"] for r in runs)
    p99 = median(r["relay"]["p99_ms"] for r in runs)
    cpu = {
        name: median(r["cpu_us_per_answer"][name] for r in runs)
        for name in ("relay", "minimal", "minimal_log_line", "baseline")
    }
    to_lined = median(r["minimal_log_line_ratio"] for r in runs)
    lined_rate = median(r["minimal_log_line_rate"] for r in runs)
    return [
        _row(
            "ingest vs minimal handler",
            f"{to_minimal:.2f} ({rates})",
            "≥ 0.85",
            to_minimal >= 0.85,
        ),
        _row("ingest vs bare aiohttp", f"{to_bare:.2f} (same runs)", "≥ 0.45", to_bare >= 0.45),
        _row(
            "ingest vs minimal handler + log line",
            f"{to_lined:.2f} (the minimal handler writing the relay's line per webhook: "
            f"{lined_rate:.0f}/s, {cpu['minimal_log_line']:.0f} µs CPU per answer)",
            "report",
            None,
        ),
        _row(
            "ingest CPU per answer",
            f"relay {cpu['relay']:.0f} µs; minimal handler {cpu['minimal']:.0f} µs; "
            f"bare aiohttp {cpu['baseline']:.0f} µs (minimal ÷ relay "
            f"{cpu['minimal'] / cpu['relay']:.2f})",
            "report",
            None,
        ),
        _row(
            "ack latency",
            f"p50 {p50:.1f} ms / p99 {p99:.1f} ms at {sizes.connections} connections",
            "p99 < 25 ms",
            p99 < 25,
        ),
    ]


def _wrk_fresh(
    workdir: Path, base_url: str, sizes: Sizes, prefix: str, ceiling: float = 20_000.0
) -> WrkResult:
    requests = common.signed_requests(prefix, _requests_needed(sizes, ceiling))
    path = common.write_requests_file(workdir / f"{prefix}requests.txt", requests)
    return common.run_wrk(
        base_url + common.WEBHOOK_PATH,
        path,
        connections=sizes.connections,
        duration_seconds=sizes.wrk_seconds,
    )


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
                    common.send_paced(
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
            _row(
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


def _fanout_sinks(out: Path, http_port: int) -> list[dict[str, Any]]:
    return [
        {"name": "files", "type": "file", "directory": str(out), "filename": "{id}.json"},
        {"name": "app", "type": "http", "url": f"http://127.0.0.1:{http_port}/sink"},
        {"name": "script", "type": "command", "argv": ["/bin/true"]},
    ]


def fan_out(sizes: Sizes) -> dict[str, Any]:
    """Capacity from a burst's drain, then a paced run at 90 % of it watching the backlog."""
    burst = sizes.fanout_burst
    with common.workdir("fanout") as workdir:
        sustain_count = int(2000 * sizes.fanout_sustain_seconds)
        emulator, base_url = common.emulator_process(workdir, "fan-", burst + sustain_count)
        receiver, http_port = common.baseline_process(workdir)
        out = workdir / "out"
        out.mkdir()
        relay, port, store = common.relay_process(
            workdir, RelayConfig(sinks=_fanout_sinks(out, http_port), pulse_base_url=base_url)
        )
        url = f"http://127.0.0.1:{port}{common.WEBHOOK_PATH}"
        with emulator, receiver, relay:
            requests = common.signed_requests("fan-", burst)
            started = time.monotonic()
            asyncio.run(common.send_all(url, requests))
            ingested = time.monotonic() - started
            delivered_while_ingesting = common.delivered_count(store)
            drained = common.wait_until(
                lambda: common.delivered_count(store) >= 3 * burst, timeout_seconds=600
            )
            finished = time.monotonic() - started
            capacity = burst / finished
            # The drain once every webhook is in, with no ingest competing for the loop.
            draining_seconds = max(finished - ingested, 1e-3)
            after_ingest = (3 * burst - delivered_while_ingesting) / 3 / draining_seconds
            print(
                f"  fan-out burst: {burst} events in {ingested:.1f} s, capacity {capacity:.0f}/s, "
                f"{after_ingest:.0f}/s once all were in"
            )
            attempts: list[dict[str, Any]] = []
            start_at = burst
            for fraction in (0.9, 0.75, 0.6):
                rate = max(10.0, capacity * fraction)
                count = int(rate * sizes.fanout_sustain_seconds)
                result = _sustain(url, store, start_at, count, rate)
                start_at += count
                attempts.append(result)
                print(f"  fan-out paced {rate:.0f}/s: {result}")
                if result["steady"]:
                    break
            floor = _fanout_floor(workdir, base_url, http_port, min(burst, 2000))
            print(f"  fan-out floor (no store, no relay): {floor:.0f} events/s")
    sustained = next((a for a in attempts if a["steady"]), None)
    figure = (
        f"{sustained['rate']:.0f} events/s sustained (pending ≤ {sustained['max_pending']}); "
        f"burst drain {capacity:.0f} events/s"
        if sustained
        else f"no steady rate found; burst drain {capacity:.0f} events/s"
    )
    figure += (
        f", {after_ingest:.0f}/s once all were in; no-store floor {floor:.0f}/s "
        f"(drain ÷ floor {after_ingest / floor:.2f})"
    )
    met = sustained is not None and sustained["rate"] >= 300 and drained
    return {
        "rows": [_row("fan-out", figure, "report; ≥ 300/s", met)],
        "capacity": capacity,
        "drain_after_ingest_events_per_second": after_ingest,
        "burst": burst,
        "attempts": attempts,
        "floor_events_per_second": floor,
        "drain_vs_floor": after_ingest / floor,
    }


def _fanout_floor(workdir: Path, base_url: str, http_port: int, count: int) -> float:
    """Events/s of bench/fanout_floor.py, the sinks' and the fetch's own work, same processes."""
    out = workdir / "floor"
    out.mkdir()
    arguments = [base_url, common.API_KEY, "fan-", str(count), str(http_port), str(out)]
    answer = subprocess.run(
        [common.PYTHON, "-m", "bench.fanout_floor", *arguments],
        cwd=common.BENCH_DIR.parent,
        capture_output=True,
        check=True,
        text=True,
        timeout=600,
    )
    measured = json.loads(answer.stdout)
    return float(measured["events"] / measured["seconds"])


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
        await common.send_paced(url, requests, rate_per_second=rate)
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


# -- memory ----------------------------------------------------------------------------------


def memory(sizes: Sizes) -> dict[str, Any]:
    """Peak RSS of serve through `memory_events` events in two halves; RSS after each drain."""
    total = sizes.memory_events
    half = total // 2
    with common.workdir("memory") as workdir:
        emulator, base_url = common.emulator_process(workdir, "mem-", total)
        out = workdir / "out"
        out.mkdir()
        sink = {"name": "files", "type": "file", "directory": str(out), "filename": "{id}.json"}
        relay, port, store = common.relay_process(
            workdir, RelayConfig(sinks=[sink], pulse_base_url=base_url)
        )
        url = f"http://127.0.0.1:{port}{common.WEBHOOK_PATH}"
        trace: list[tuple[float, int]] = []
        after: list[int] = []
        with emulator, relay:
            started = time.monotonic()
            idle_rss, _ = common.rss_kib(relay.pid)
            for part in range(2):
                requests = common.signed_requests("mem-", half, start=part * half)
                _run_sampling(
                    lambda r=requests: asyncio.run(common.send_all(url, r)),
                    relay.pid,
                    trace,
                    started,
                )
                done = (part + 1) * half

                def drained(done: int = done) -> bool:
                    trace.append((time.monotonic() - started, common.rss_kib(relay.pid)[0]))
                    return common.delivered_count(store) >= done

                common.wait_until(drained, timeout_seconds=900, interval_seconds=0.5)
                time.sleep(2.0)
                after.append(common.rss_kib(relay.pid)[0])
                print(f"  memory: {done} events drained, RSS {after[-1] / 1024:.1f} MiB")
            peak = common.rss_kib(relay.pid)[1]
            elapsed = time.monotonic() - started
    growth = after[1] - after[0]
    peak_mb = peak / 1024
    no_growth = growth <= max(0.05 * after[0], 4096)
    return {
        "rows": [
            _row(
                "memory",
                f"peak {peak_mb:.1f} MiB (VmHWM); after drain {after[0] / 1024:.1f} → "
                f"{after[1] / 1024:.1f} MiB ({total} events)",
                "< 120 MB, no growth after the backlog drains",
                peak_mb * 1.048576 < 120 and no_growth,
            )
        ],
        "idle_rss_kib": idle_rss,
        "peak_kib": peak,
        "after_drain_kib": after,
        "elapsed_seconds": elapsed,
        "trace": trace[:: max(1, len(trace) // 60)],
    }


def _run_sampling(
    work: Callable[[], Any], pid: int, trace: list[tuple[float, int]], started: float
) -> None:
    stop = False

    def sample() -> None:
        while not stop:
            trace.append((time.monotonic() - started, common.rss_kib(pid)[0]))
            time.sleep(0.5)

    import threading

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        work()
    finally:
        stop = True
        thread.join()


# -- scale -----------------------------------------------------------------------------------


def _prefill(store: Path, count: int) -> None:
    """Write `count` delivered-looking events straight into the schema serve created."""
    db = sqlite3.connect(store)
    try:
        db.execute("PRAGMA synchronous = OFF")
        now = time.time() - 3600
        headers = json.dumps({"content-type": "application/json"})

        def rows() -> Any:
            for number in range(count):
                job_id = f"old-{number}"
                yield (
                    f"old-{number}",
                    now + number * 1e-4,
                    "webhook",
                    "job.completed",
                    job_id,
                    f"{job_id}:completed",
                    "accepted",
                    headers,
                    common.make_body("job.completed", job_id),
                    "done",
                )

        with db:
            db.executemany(
                "INSERT INTO events (id, received_at, source, type, job_id, job_key, state, "
                "headers, body, fetch_state) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                rows(),
            )
    finally:
        db.close()


def scale(sizes: Sizes) -> dict[str, Any]:
    """Ingest ratio and duplicate-answer latency: empty store vs `scale_prefill` events."""
    results: dict[str, list[dict[str, Any]]] = {"empty": [], "full": []}
    with common.workdir("scale") as workdir:
        full_dir = workdir / "full"
        full_dir.mkdir()
        relay, _, full_store = common.relay_process(full_dir, RelayConfig())
        with relay:
            pass
        started = time.monotonic()
        _prefill(full_store, sizes.scale_prefill)
        print(
            f"  scale: prefilled {sizes.scale_prefill} events in {time.monotonic() - started:.0f} s"
        )
        baseline, base_port = common.baseline_process(workdir)
        with baseline:
            for number in range(sizes.runs):
                base = _wrk_fresh(workdir, f"http://127.0.0.1:{base_port}", sizes, f"sb{number}-")
                for label in ("empty", "full"):
                    store_path = full_store if label == "full" else None
                    run = _scale_run(workdir, sizes, base, label, number, store_path)
                    results[label].append(run)
    summary = {
        label: {
            "ratio": median(r["ratio"] for r in runs),
            "dedupe_p50_ms": median(r["dedupe"]["p50_ms"] for r in runs),
            "dedupe_p99_ms": median(r["dedupe"]["p99_ms"] for r in runs),
            "dedupe_rate": median(r["dedupe_rate"] for r in runs),
        }
        for label, runs in results.items()
    }
    empty, full = summary["empty"], summary["full"]
    ratio_change = full["ratio"] / empty["ratio"] - 1
    dedupe_change = full["dedupe_p50_ms"] / empty["dedupe_p50_ms"] - 1
    met = abs(ratio_change) <= 0.10 and dedupe_change <= 0.10
    return {
        "rows": [
            _row(
                "scale",
                f"{sizes.scale_prefill:,} stored: ingest ratio {full['ratio']:.2f} vs empty "
                f"{empty['ratio']:.2f} ({ratio_change:+.0%}); dedupe p50 "
                f"{full['dedupe_p50_ms']:.1f} vs {empty['dedupe_p50_ms']:.1f} ms "
                f"({dedupe_change:+.0%})",
                "within 10 % of the empty store",
                met,
            )
        ],
        "summary": summary,
        "runs": results,
    }


def _scale_run(
    workdir: Path, sizes: Sizes, base: WrkResult, label: str, number: int, store_path: Path | None
) -> dict[str, Any]:
    """One relay run (on a fresh store, or on `store_path`) against this run's baseline."""
    run_dir = workdir / f"{label}{number}"
    run_dir.mkdir()
    relay, port, _store = common.relay_process(run_dir, RelayConfig(), store_path=store_path)
    url = f"http://127.0.0.1:{port}"
    with relay:
        mine = _wrk_fresh(run_dir, url, sizes, f"s{label}{number}-", base.rate)
        dedupe = _dedupe(run_dir, url, sizes, label, number)
    print(
        f"  scale {label} run {number}: ratio {mine.rate / base.rate:.2f}, "
        f"dedupe p50 {dedupe.p50_ms:.1f} ms"
    )
    return {
        "ratio": mine.rate / base.rate,
        "relay_rate": mine.rate,
        "baseline_rate": base.rate,
        "dedupe": dedupe.__dict__,
        "dedupe_rate": dedupe.rate,
    }


def _dedupe(run_dir: Path, url: str, sizes: Sizes, label: str, number: int) -> WrkResult:
    """wrk replaying ids the store already holds: every answer is a 200 duplicate."""
    if label == "full":
        requests = common.signed_requests("old-", sizes.dedupe_ids, start=number * sizes.dedupe_ids)
    else:
        requests = common.signed_requests(f"d{number}-", sizes.dedupe_ids)
        asyncio.run(common.send_all(url + common.WEBHOOK_PATH, requests))
    path = common.write_requests_file(run_dir / "dedupe.txt", requests)
    return common.run_wrk(
        url + common.WEBHOOK_PATH,
        path,
        connections=sizes.connections,
        duration_seconds=max(2.0, sizes.wrk_seconds / 2),
    )


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
            asyncio.run(common.send_all(f"http://127.0.0.1:{port}{common.WEBHOOK_PATH}", requests))
            acked = time.monotonic() - started
            common.wait_until(lambda: common.delivered_count(store) >= count, timeout_seconds=600)
            relay_rate = count / (time.monotonic() - started)
        print(f"  command: pulse-relay {relay_rate:.0f}/s (acked all in {acked:.1f} s)")
        webhook_rates = _webhook_rates(workdir, requests, sizes, concurrency)
    figure = f"pulse-relay {relay_rate:.0f} commands/s; webhook " + ", ".join(
        f"{rate:.0f}/s at {conns} connections" for conns, rate in webhook_rates.items()
    )
    return {
        "rows": [_row("command path", figure, "report both", None)],
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
    import os

    previous = os.environ.get("BENCH_PATH")
    os.environ["BENCH_PATH"] = "/hooks/pulse"
    try:
        return common.run_wrk(
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


# -- CLI start ---------------------------------------------------------------------------------


def cli_start(sizes: Sizes) -> dict[str, Any]:
    """Wall time of `pulse-relay --help` and `events`, next to `python -c pass` and the
    floor under `events` (bench/cli_floor.py), interleaved.

    Every command runs with its modules byte-compiled, as `pip install` leaves an
    installed package and as a first run leaves them: a bytecode cache of the run's own
    (PYTHONPYCACHEPREFIX), filled by an untimed first pass. `events` is also timed
    compiling the project's modules on every run (PYTHONDONTWRITEBYTECODE, no cache for
    an editable install's sources), the cost a checkout with that setting pays."""
    with common.workdir("cli") as workdir:
        config = workdir / "relay.toml"
        config.write_text(f'[store]\npath = "{workdir / "relay.db"}"\n')
        relay = [common.PYTHON, "-m", "pulse_relay", "--config", str(config)]
        subprocess.run([*relay, "watch", "cli-job"], check=True, capture_output=True)
        commands = {
            "python -c pass": [common.PYTHON, "-c", "pass"],
            "--help": [*relay, "--help"],
            "events": [*relay, "events"],
            "events, compiled every run": [*relay, "events"],
            # The floor under `events` (bench/cli_floor.py): pydantic-settings validating
            # the same sections, then sqlite3 printing the rows; and each half alone.
            "floor": [common.PYTHON, "-m", "bench.cli_floor", "both", str(config)],
            "floor: settings": [common.PYTHON, "-m", "bench.cli_floor", "settings", str(config)],
            "floor: sqlite3": [common.PYTHON, "-m", "bench.cli_floor", "sqlite", str(config)],
        }
        cached = {
            key: value for key, value in os.environ.items() if key != "PYTHONDONTWRITEBYTECODE"
        }
        cached["PYTHONPYCACHEPREFIX"] = str(workdir / "pycache")
        uncached = {key: value for key, value in os.environ.items() if key != "PYTHONPYCACHEPREFIX"}
        uncached["PYTHONDONTWRITEBYTECODE"] = "1"

        def run(name: str, argv: list[str]) -> None:
            env = uncached if name == "events, compiled every run" else cached
            subprocess.run(
                argv, check=True, capture_output=True, cwd=common.BENCH_DIR.parent, env=env
            )

        for name, argv in commands.items():
            run(name, argv)  # untimed: fills the bytecode cache
        times: dict[str, list[float]] = {name: [] for name in commands}
        for _ in range(sizes.cli_runs):
            for name, argv in commands.items():
                started = time.perf_counter()
                run(name, argv)
                times[name].append(time.perf_counter() - started)
    medians = {name: median(values) for name, values in times.items()}
    floor = medians["python -c pass"]
    rows = [
        _row(
            f"CLI start: `{name}`",
            f"{medians[name]:.3f} s ({medians[name] / floor:.1f} times `python -c pass`, "
            f"{floor:.3f} s)",
            "< 0.25 s",
            medians[name] < 0.25,
        )
        for name in ("--help", "events")
    ]
    rows.append(
        _row(
            "CLI start: floor under `events`",
            f"{medians['floor']:.3f} s: pydantic-settings with the same sections "
            f"{medians['floor: settings']:.3f} s, sqlite3 read-only "
            f"{medians['floor: sqlite3']:.3f} s; `events` is "
            f"{medians['events'] / medians['floor']:.2f} times the floor; `events` "
            f"compiling its modules on every run {medians['events, compiled every run']:.3f} s",
            "report",
            None,
        )
    )
    return {
        "rows": rows,
        "medians_seconds": medians,
        "runs": sizes.cli_runs,
    }


SCENARIOS: dict[str, Callable[[Sizes], dict[str, Any]]] = {
    "ingest": ingest,
    "e2e": end_to_end,
    "fanout": fan_out,
    "memory": memory,
    "scale": scale,
    "command": command_path,
    "cli": cli_start,
}

from bench import pg_scenarios  # noqa: E402  (it builds on the helpers above)

SCENARIOS.update(pg_scenarios.SCENARIOS)
