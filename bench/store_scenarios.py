"""The store under load: memory over a long run, and ingest on a store of a million events."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import common, load
from bench.common import RelayConfig, median
from bench.load import WrkResult
from bench.measure import Sizes, row, wrk_fresh

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
                    lambda r=requests: asyncio.run(load.send_all(url, r)),
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
            row(
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
                base = wrk_fresh(workdir, f"http://127.0.0.1:{base_port}", sizes, f"sb{number}-")
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
            row(
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
        mine = wrk_fresh(run_dir, url, sizes, f"s{label}{number}-", base.rate)
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
        asyncio.run(load.send_all(url + common.WEBHOOK_PATH, requests))
    path = common.write_requests_file(run_dir / "dedupe.txt", requests)
    return load.run_wrk(
        url + common.WEBHOOK_PATH,
        path,
        connections=sizes.connections,
        duration_seconds=max(2.0, sizes.wrk_seconds / 2),
    )
