"""Ingest: the relay's ceiling and ack latency against a minimal handler and bare aiohttp."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench import common
from bench.common import RelayConfig, median
from bench.load import WrkResult
from bench.measure import Sizes, row, wrk_cpu

# Each server of a run, in the order it is driven: (name, wrk prefix).
SERVERS = (
    ("baseline", "b"),
    ("minimal", "m"),
    ("relay", "r"),
    ("minimal_log_line", "l"),
    ("lower_bound", "w"),
)

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


def _server(run_dir: Path, name: str) -> tuple[common.Process, int, Path | None]:
    """One server of a run, on a fresh store: (process, port, the relay's store or None)."""
    if name == "baseline":
        return (*common.baseline_process(run_dir), None)
    if name == "relay":
        return common.relay_process(run_dir, RelayConfig(log_level="info"))
    modes = {"minimal_log_line": {"log_line": True}, "lower_bound": {"relay_work": True}}
    return (*common.minimal_process(run_dir, **modes.get(name, {})), None)


def _ingest_run(run_dir: Path, sizes: Sizes, number: int) -> dict[str, Any]:
    """One run: bare aiohttp, the minimal handler, the relay, the minimal handler with the
    relay's log line, then the minimal handler doing the relay's work, back to back."""
    results: dict[str, WrkResult] = {}
    cpu: dict[str, float] = {}
    accepted = None
    ceiling = 20_000.0
    for name, prefix in SERVERS:
        process, port, store = _server(run_dir, name)
        with process:
            results[name], cpu[name] = wrk_cpu(
                process, run_dir, port, sizes, f"{prefix}{number}-", ceiling
            )
            if store is not None:
                accepted = common.query_one(store, "SELECT count(*) FROM events")
        ceiling = results["baseline"].rate
    rates = {name: result.rate for name, result in results.items()}
    print(
        f"  ingest run {number}: "
        + " ".join(f"{name} {rates[name]:.0f}/s ({cpu[name]:.0f} µs CPU)" for name in rates)
        + f"; relay p99 {results['relay'].p99_ms:.1f} ms"
    )
    relay = rates["relay"]
    return {
        **{name: result.__dict__ for name, result in results.items()},
        **{f"{name}_rate": rate for name, rate in rates.items()},
        "cpu_us_per_answer": cpu,
        "stored_events": accepted,
        "ratio": relay / rates["baseline"],
        "minimal_ratio": relay / rates["minimal"],
        "minimal_log_line_ratio": relay / rates["minimal_log_line"],
        "lower_bound_ratio": rates["lower_bound"] / rates["minimal_log_line"],
        "lower_bound_bare_ratio": rates["lower_bound"] / rates["baseline"],
    }


def _ingest_rows(runs: list[dict[str, Any]], sizes: Sizes) -> list[dict[str, Any]]:
    ratio = {
        name: median(r[name] for r in runs)
        for name in (
            "ratio",
            "minimal_ratio",
            "minimal_log_line_ratio",
            "lower_bound_ratio",
            "lower_bound_bare_ratio",
        )
    }
    rate = {name: median(r[f"{name}_rate"] for r in runs) for name, _ in SERVERS}
    cpu = {name: median(r["cpu_us_per_answer"][name] for r in runs) for name, _ in SERVERS}
    p50 = median(r["relay"]["p50_ms"] for r in runs)
    p99 = median(r["relay"]["p99_ms"] for r in runs)
    to_lined, to_bare = ratio["minimal_log_line_ratio"], ratio["ratio"]
    return [
        row(
            "ingest ÷ minimal handler + log line",
            f"{to_lined:.2f} (relay {rate['relay']:.0f}/s; the minimal handler writing the "
            f"relay's line per webhook {rate['minimal_log_line']:.0f}/s)",
            "≥ 0.85",
            to_lined >= 0.85,
        ),
        row(
            "ingest lower bound: minimal handler doing the relay's work",
            f"{ratio['lower_bound_ratio']:.2f} of the log-line handler, "
            f"{ratio['lower_bound_bare_ratio']:.2f} of bare aiohttp ({rate['lower_bound']:.0f}/s, "
            f"{cpu['lower_bound']:.0f} µs CPU per answer; the relay: {to_lined:.2f} and "
            f"{to_bare:.2f}, {cpu['relay']:.0f} µs)",
            "report",
            None,
        ),
        row(
            "ingest ÷ bare aiohttp",
            f"{to_bare:.2f} (bare aiohttp {rate['baseline']:.0f}/s, same runs)",
            "≥ 0.40",
            to_bare >= 0.40,
        ),
        row(
            "ingest ÷ minimal handler",
            f"{ratio['minimal_ratio']:.2f} (no log line: {rate['minimal']:.0f}/s)",
            "report",
            None,
        ),
        row(
            "ingest CPU per answer",
            "; ".join(f"{name.replace('_', ' ')} {cpu[name]:.0f} µs" for name, _ in SERVERS),
            "report",
            None,
        ),
        row(
            f"ack p99 at {sizes.connections} connections",
            f"{p99:.1f} ms (p50 {p50:.1f} ms)",
            "< 25 ms",
            p99 < 25,
        ),
    ]
