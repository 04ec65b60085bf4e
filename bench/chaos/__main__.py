"""`python -m bench.chaos [--quick]`: the kill/fault run and the hostile-input probes."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from bench.chaos import __doc__ as package_doc
from bench.chaos.admin import run_admin
from bench.chaos.at_rest import run_at_rest
from bench.chaos.edge import run_edge
from bench.chaos.hostile import run_hostile
from bench.chaos.plan import ChaosConfig
from bench.chaos.report import render
from bench.chaos.rounds import run_chaos

REPO = Path(__file__).resolve().parent.parent.parent
# --quick: (events, kill rounds, fuzz examples, duplicate-id requests, flood requests,
# racing writes).
QUICK_SIZES = (300, 4, 200, 1000, 500, 300)
SLOW_CLIENTS_EACH = 10


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The knobs of a run; `--quick` overrides the sizes."""
    description = (package_doc or "").split("\n")[0]
    parser = argparse.ArgumentParser(prog="python -m bench.chaos", description=description)
    defaults = ChaosConfig()
    parser.add_argument("--events", type=int, default=defaults.events)
    parser.add_argument("--rounds", type=int, default=defaults.kill_rounds)
    parser.add_argument("--rate", type=float, default=defaults.send_rate_per_second)
    parser.add_argument("--fault-rate", type=float, default=defaults.fault_rate)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--fuzz", type=int, default=2000, help="hypothesis examples")
    parser.add_argument("--duplicates", type=int, default=10_000, help="duplicate-id requests")
    parser.add_argument("--flood", type=int, default=2000, help="bad-signature requests")
    parser.add_argument(
        "--idle", type=int, default=1100, help="idle connections (0: skip that probe)"
    )
    parser.add_argument(
        "--race-writes", type=int, default=2000, help="file sink writes per racing target"
    )
    parser.add_argument("--workdir", type=Path, default=defaults.workdir)
    parser.add_argument("--output", type=Path, default=REPO / "RELIABILITY.md")
    parser.add_argument(
        "--quick", action="store_true", help="300 events, 4 rounds; print, write no file"
    )
    args = parser.parse_args(argv)
    if args.quick:
        (args.events, args.rounds, args.fuzz, args.duplicates, args.flood, args.race_writes) = (
            QUICK_SIZES
        )
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    config = ChaosConfig(
        events=args.events,
        kill_rounds=args.rounds,
        send_rate_per_second=args.rate,
        fault_rate=args.fault_rate,
        seed=args.seed,
        workdir=args.workdir / "chaos",
    )
    outcome = asyncio.run(run_chaos(config))
    print(f"chaos: lost {outcome.lost}, problems {len(outcome.problems)}", flush=True)
    hostile = run_hostile(
        args.workdir / "hostile",
        fuzz_examples=args.fuzz,
        duplicate_requests=args.duplicates,
        slow_clients_each=SLOW_CLIENTS_EACH,
    )
    hostile.edge = run_edge(
        args.workdir / "edge", flood_requests=args.flood, idle_connections=args.idle
    )
    hostile.problems += hostile.edge.problems
    hostile.admin = run_admin(args.workdir / "admin")
    hostile.problems += hostile.admin.problems
    hostile.at_rest = run_at_rest(args.workdir / "at-rest", race_writes=args.race_writes)
    hostile.problems += hostile.at_rest.problems
    report = render(config, outcome, hostile, "python -m bench.chaos")
    if args.quick:
        print(report)
    else:
        args.output.write_text(report)
        print(f"wrote {args.output}")
    problems = outcome.problems + hostile.problems
    for problem in problems:
        print("PROBLEM:", problem, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
