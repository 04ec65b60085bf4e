"""One chaos run: send, SIGKILL and restart round after round, drain, check."""

from __future__ import annotations

import asyncio
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench.chaos.outcome import Outcome, check, integrity, pending_work, read_command_sink
from bench.chaos.parties import (
    ChaosEmulator,
    ChaosReceiver,
    ChaosRelay,
    script_emulator,
    write_relay_config,
)
from bench.chaos.plan import ChaosConfig, PlannedEvent, make_plan
from bench.chaos.senders import Senders, SendLog
from bench.common import free_port

# The moments a kill aims for, taken in turn.
PHASES = ("ingest", "fetch", "delivery", "download")
# How long a round waits for its moment before it kills anyway (counted as "timer").
PHASE_WAIT_SECONDS = 5.0
# A round first waits a random time in this range, in seconds.
ROUND_PAUSE_SECONDS = (0.2, 1.0)


@dataclass
class _Run:
    """The parties of one run, once started."""

    workdir: Path
    plan: list[PlannedEvent]
    emulator: ChaosEmulator
    receiver: ChaosReceiver
    relay: ChaosRelay
    sent: SendLog
    queued_faults: dict[str, list[str]]

    @property
    def store(self) -> Path:
        return self.workdir / "relay.db"

    def busy(self, phase: str) -> bool:
        """True while the moment `phase` is happening."""
        if phase == "ingest":
            return self.sent.in_flight > 0
        if phase == "fetch":
            return self.emulator.in_flight > 0
        if phase == "delivery":
            return self.receiver.in_flight > 0 or any((self.workdir / "cmd" / "run").iterdir())
        return self.emulator.downloads_in_flight > 0


async def run_chaos(config: ChaosConfig, *, say: Callable[[str], None] = print) -> Outcome:
    """Send, kill and restart, drain, check; returns the figures (problems listed, not raised)."""
    started = time.monotonic()
    rng = random.Random(config.seed)
    if config.workdir.exists():
        shutil.rmtree(config.workdir)
    config.workdir.mkdir(parents=True)
    outcome = Outcome()
    run = await _start_parties(config, make_plan(config, rng))
    try:
        await run.relay.start()
        senders = Senders(run.relay.url, run.emulator, config, rng, run.sent)
        sending = asyncio.create_task(senders.run(run.plan))
        for round_number in range(config.kill_rounds):
            await _kill_round(run, config, rng, round_number, outcome, say)
        await sending
        await _drain(run, config, outcome)
    finally:
        await run.relay.kill()
        await run.receiver.stop()
        await run.emulator.stop()
    for kinds in run.queued_faults.values():
        outcome.faults.update(kinds)
    outcome.faults.update(run.receiver.faults)
    outcome.faults.update(read_command_sink(run.workdir)[2])
    check(run.plan, run.sent, run.workdir, run.receiver, outcome)
    outcome.total_seconds = time.monotonic() - started
    return outcome


async def _start_parties(config: ChaosConfig, plan: list[PlannedEvent]) -> _Run:
    emulator = ChaosEmulator()
    receiver = ChaosReceiver(fault_rate=config.fault_rate, rng=random.Random(config.seed + 1))
    await emulator.start()
    await receiver.start()
    queued = script_emulator(emulator, plan, config, random.Random(config.seed + 2))
    port = free_port()
    relay_config = write_relay_config(
        config.workdir, port, emulator.base_url, receiver.url, round(config.fault_rate * 1000)
    )
    relay = ChaosRelay(relay_config, port, config.workdir / "relay.log")
    return _Run(config.workdir, plan, emulator, receiver, relay, SendLog(), queued)


async def _kill_round(
    run: _Run,
    config: ChaosConfig,
    rng: random.Random,
    round_number: int,
    outcome: Outcome,
    say: Callable[[str], None],
) -> None:
    """Wait for this round's share of the sending and its moment, SIGKILL, check, restart."""
    wanted = PHASES[round_number % len(PHASES)]
    # Spread the kills over the whole sending period, whatever its real pace.
    share = (round_number + 1) / (config.kill_rounds + 1)
    while not run.sent.done and run.sent.settled < share * len(run.plan):
        await asyncio.sleep(0.05)
    await asyncio.sleep(rng.uniform(*ROUND_PAUSE_SECONDS))
    seen = await wait_for_phase(lambda: run.busy(wanted), timeout_seconds=PHASE_WAIT_SECONDS)
    outcome.kill_phases[wanted if seen else "timer"] += 1
    await run.relay.kill()
    outcome.kill_rounds += 1
    outcome.integrity_after_kills[integrity(run.store)] += 1
    await run.relay.start()
    moment = wanted if seen else f"timer ({wanted} not seen)"
    say(
        f"kill {round_number + 1}/{config.kill_rounds} during {moment}; "
        f"acked {len(run.sent.acked)}/{len(run.plan)}"
    )


async def _drain(run: _Run, config: ChaosConfig, outcome: Outcome) -> None:
    """Wait until no work is pending (or the drain timeout), then stop the relay with SIGTERM."""
    began = time.monotonic()
    deadline = began + config.drain_timeout_seconds
    while pending_work(run.store) and time.monotonic() < deadline:
        await asyncio.sleep(0.25)
    outcome.drain_seconds = time.monotonic() - began
    left = pending_work(run.store)
    if left:
        outcome.problems.append(f"{left} items still pending after the drain timeout")
    code = await run.relay.terminate()
    if code != 0:
        outcome.problems.append(f"relay exited {code} on SIGTERM")


async def wait_for_phase(is_busy: Callable[[], bool], *, timeout_seconds: float) -> bool:
    """True as soon as `is_busy()` holds (polled every 2 ms), False at the deadline."""
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        if is_busy():
            return True
        await asyncio.sleep(0.002)
    return False
