"""The command line: how long a store-reading command takes to start and answer."""

from __future__ import annotations

import os
import resource
import subprocess
import time
from typing import Any

from bench import common
from bench.common import median
from bench.measure import Sizes, row

# -- CLI start ---------------------------------------------------------------------------------

# The most `events` may cost over its floor (bench/cli_floor.py `both`): issue 24's target.
MAX_EVENTS_OVER_FLOOR = 1.10


def _children_cpu_seconds() -> float:
    """User and system CPU time of every child waited for so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def cli_start(sizes: Sizes) -> dict[str, Any]:
    """Wall time of `pulse-relay --help` and `events`, next to `python -c pass` and the
    floor under `events` (bench/cli_floor.py), interleaved. `events` ÷ floor is taken
    in CPU time too (user + system, each child's): starting is CPU work, and on a shared
    machine the wall time adds whatever else ran meanwhile, which a ratio of two
    commands timed apart does not cancel.

    Every command runs with its modules byte-compiled, as `pip install` leaves an
    installed package and as a first run leaves them: a bytecode cache of the run's own
    (PYTHONPYCACHEPREFIX), filled by an untimed first pass. `events` is also timed
    compiling the project's modules on every run (PYTHONDONTWRITEBYTECODE, no cache for
    an editable install's sources), the cost a checkout with that setting pays."""
    with common.workdir("cli") as workdir:
        config = workdir / "relay.toml"
        # A deployed configuration carries the webhook secret, which reading it checks.
        config.write_text(
            f'[verify]\nsecrets = ["{common.SECRET}"]\n[store]\npath = "{workdir / "relay.db"}"\n'
        )
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
            # The lower bound under `events` with what it cannot shed: the relay's own
            # settings (its validators and parsed types) and click, then the same read.
            "floor: relay settings": [
                common.PYTHON,
                "-m",
                "bench.cli_floor",
                "relay",
                str(config),
            ],
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
        cpu_times: dict[str, list[float]] = {name: [] for name in commands}
        for _ in range(sizes.cli_runs):
            for name, argv in commands.items():
                started, cpu_started = time.perf_counter(), _children_cpu_seconds()
                run(name, argv)
                times[name].append(time.perf_counter() - started)
                cpu_times[name].append(_children_cpu_seconds() - cpu_started)
    medians = {name: median(values) for name, values in times.items()}
    cpu_medians = {name: median(values) for name, values in cpu_times.items()}
    floor = medians["python -c pass"]
    rows = [
        row(
            f"CLI start: `{name}`",
            f"{medians[name]:.3f} s ({medians[name] / floor:.1f} times `python -c pass`, "
            f"{floor:.3f} s)",
            "< 0.25 s",
            medians[name] < 0.25,
        )
        for name in ("--help", "events")
    ]
    rows.append(
        row(
            "CLI start: floor under `events`",
            f"{medians['floor']:.3f} s: pydantic-settings with the same sections "
            f"{medians['floor: settings']:.3f} s, sqlite3 read-only "
            f"{medians['floor: sqlite3']:.3f} s; with the relay's own settings and click "
            f"{medians['floor: relay settings']:.3f} s; "
            f"`events` compiling its modules on every run "
            f"{medians['events, compiled every run']:.3f} s",
            "report",
            None,
        )
    )
    ratio = cpu_medians["events"] / cpu_medians["floor"]
    bound = cpu_medians["floor: relay settings"] / cpu_medians["floor"]
    rows.append(
        row(
            "CLI start: `events` ÷ floor",
            f"{ratio:.2f} in CPU time ({cpu_medians['events']:.3f} s ÷ "
            f"{cpu_medians['floor']:.3f} s; {medians['events'] / medians['floor']:.2f} in wall "
            f"time); lower bound with the relay's own settings and click {bound:.2f}",
            f"≤ {MAX_EVENTS_OVER_FLOOR:.2f}",
            ratio <= MAX_EVENTS_OVER_FLOOR,
        )
    )
    return {
        "rows": rows,
        "medians_seconds": medians,
        "cpu_medians_seconds": cpu_medians,
        "runs": sizes.cli_runs,
    }
