"""Ingest: the relay's ceiling and ack latency against a minimal handler and bare aiohttp."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench import common
from bench.common import RelayConfig, median
from bench.measure import Sizes, row, wrk_cpu

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
        base, base_cpu = wrk_cpu(baseline, run_dir, base_port, sizes, f"b{number}-", 20_000.0)
    minimal, minimal_port = common.minimal_process(run_dir)
    with minimal:
        floor, floor_cpu = wrk_cpu(minimal, run_dir, minimal_port, sizes, f"m{number}-", base.rate)
    relay, port, store = common.relay_process(run_dir, RelayConfig(log_level="info"))
    with relay:
        mine, mine_cpu = wrk_cpu(relay, run_dir, port, sizes, f"r{number}-", base.rate)
        accepted = common.query_one(store, "SELECT count(*) FROM events")
    lined, lined_port = common.minimal_process(run_dir, log_line=True)
    with lined:
        line, line_cpu = wrk_cpu(lined, run_dir, lined_port, sizes, f"l{number}-", base.rate)
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
        row(
            "ingest vs minimal handler",
            f"{to_minimal:.2f} ({rates})",
            "≥ 0.85",
            to_minimal >= 0.85,
        ),
        row("ingest vs bare aiohttp", f"{to_bare:.2f} (same runs)", "≥ 0.45", to_bare >= 0.45),
        row(
            "ingest vs minimal handler + log line",
            f"{to_lined:.2f} (the minimal handler writing the relay's line per webhook: "
            f"{lined_rate:.0f}/s, {cpu['minimal_log_line']:.0f} µs CPU per answer)",
            "report",
            None,
        ),
        row(
            "ingest CPU per answer",
            f"relay {cpu['relay']:.0f} µs; minimal handler {cpu['minimal']:.0f} µs; "
            f"bare aiohttp {cpu['baseline']:.0f} µs (minimal ÷ relay "
            f"{cpu['minimal'] / cpu['relay']:.2f})",
            "report",
            None,
        ),
        row(
            "ack latency",
            f"p50 {p50:.1f} ms / p99 {p99:.1f} ms at {sizes.connections} connections",
            "p99 < 25 ms",
            p99 < 25,
        ),
    ]
