"""Reliability proof: kill `pulse-relay serve` at chosen moments, inject faults, count every event.

    python -m bench.chaos            # long: 24 kill rounds, 10 000 events; writes RELIABILITY.md
    python -m bench.chaos --quick    # a short version of the same run, printed, no file written

One run: a Pulse emulator and an HTTP receiver run in this process, the relay runs
as a subprocess with a jsonl file sink, an HTTP sink and a command sink (`parties`).
Several concurrent senders POST signed events while the relay is SIGKILLed — at a
moment chosen to fall during ingest, a job fetch, a sink delivery or a large-result
download — and restarted, round after round (`rounds`). The emulator, the receiver
and the command inject transient faults (500, 429 with Retry-After, timeouts,
connection resets, truncated JSON, slow bodies, failing and hanging commands) at a
configured rate, and some events carry a permanent fault (`plan`). Then the relay
drains and every event is accounted for: `outcome.Outcome` says what is counted and
`outcome.check` the contract each count is held to. The hostile-input part (fuzzing,
slow clients, duplicate ids, disk full) is `hostile`; what the relay leaves on disk and
hands on (file modes, links swapped in under the file sink, the command's environment,
long types, replays after pruning, terminal output) is `at_rest`; `report` renders
RELIABILITY.md from the figures. tests/reliability/ runs them all, smaller.
"""
