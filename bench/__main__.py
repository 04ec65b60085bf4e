"""`python -m bench all|report|SCENARIO... [--quick]`: run scenarios, write BENCHMARKS.md."""

from __future__ import annotations

import argparse
import dataclasses
import signal
import sys
import time
from pathlib import Path

from bench import report
from bench.load import ensure_wrk
from bench.measure import Sizes
from bench.scenarios import SCENARIOS


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("scenarios", nargs="+", choices=["all", "report", *SCENARIOS])
    parser.add_argument("--quick", action="store_true", help="small sizes, one run each")
    parser.add_argument("--runs", type=int, help="runs per measured figure (median)")
    parser.add_argument("--seconds", type=float, help="duration of each wrk run")
    parser.add_argument(
        "--output",
        type=Path,
        default=Path(__file__).resolve().parent.parent / "BENCHMARKS.md",
        help="the report to (re)write",
    )
    parser.add_argument("--no-report", action="store_true", help="do not rewrite the report")
    parser.add_argument(
        "--results",
        type=Path,
        default=report.RESULTS_DIR,
        help="where each scenario's figures are stored and the report reads them",
    )
    args = parser.parse_args(argv)
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[attr-defined]
    # Stopped with SIGTERM, the run still stops what it started (a PostgreSQL server
    # runs on its own and would outlive it): exit handlers run on SystemExit.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    sizes = Sizes.quick() if args.quick else Sizes()
    if args.runs:
        sizes = dataclasses.replace(sizes, runs=args.runs)
    if args.seconds:
        sizes = dataclasses.replace(sizes, wrk_seconds=args.seconds)
    names = list(SCENARIOS) if "all" in args.scenarios else list(dict.fromkeys(args.scenarios))
    if "report" in names:
        names.remove("report")
    if names:
        ensure_wrk()
    command = "python -m bench " + " ".join(argv if argv is not None else sys.argv[1:])
    for name in names:
        started = time.monotonic()
        print(f"{name} ...", flush=True)
        result = SCENARIOS[name](sizes)
        result["sizes"] = dataclasses.asdict(sizes)
        report.save(name, result, command=command, directory=args.results)
        for row in result["rows"]:
            print(
                f"  {row['scenario']}: {row['figure']} (target {row['target']}, met: {row['met']})"
            )
        print(f"  {name} took {time.monotonic() - started:.0f} s", flush=True)
    if not args.no_report:
        report.write(args.output, args.results)
        print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
