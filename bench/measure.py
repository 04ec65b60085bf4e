"""What every scenario measures with: its sizes, a row of the report's table, and wrk runs
on fresh ids with the CPU time they cost the server."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import common, load
from bench.load import WrkResult


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


def row(scenario: str, figure: str, target: str, met: bool | None) -> dict[str, Any]:
    """One row of the report's table: what was measured, against which target, met or not
    (None: a figure to report, with no target)."""
    return {"scenario": scenario, "figure": figure, "target": target, "met": met}


def requests_needed(sizes: Sizes, ceiling_per_second: float) -> int:
    """How many distinct signed requests a wrk run of `sizes` needs."""
    # Every request must be a fresh insert: enough unique ids for the fastest plausible run.
    return int(ceiling_per_second * sizes.wrk_seconds * 1.3) + 1000


def wrk_fresh(
    workdir: Path, base_url: str, sizes: Sizes, prefix: str, ceiling: float = 20_000.0
) -> WrkResult:
    """A wrk run of `sizes` on `base_url`'s webhook path, every request a new event id."""
    requests = common.signed_requests(prefix, requests_needed(sizes, ceiling))
    path = common.write_requests_file(workdir / f"{prefix}requests.txt", requests)
    return load.run_wrk(
        base_url + common.WEBHOOK_PATH,
        path,
        connections=sizes.connections,
        duration_seconds=sizes.wrk_seconds,
    )


def wrk_cpu(
    process: common.Process, run_dir: Path, port: int, sizes: Sizes, prefix: str, ceiling: float
) -> tuple[WrkResult, float]:
    """A wrk run and the server's CPU time per answer in µs (steadier than rates when the
    machine is shared: it does not depend on how much of a core the server was given)."""
    before = common.cpu_seconds(process.pid)
    result = wrk_fresh(run_dir, f"http://127.0.0.1:{port}", sizes, prefix, ceiling)
    used = common.cpu_seconds(process.pid) - before
    return result, used / max(1, result.requests) * 1e6
