"""RELIABILITY.md, rendered from the figures of one run: measured values only."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import Any

from bench.chaos.at_rest import (
    LONE_SURROGATE_BURST,
    NAMED_SECRETS,
    STALE_BODY_SECONDS,
    WITHHELD,
    AtRestFigures,
)
from bench.chaos.hostile import HostileFigures
from bench.chaos.outcome import Outcome
from bench.chaos.parties import LEASE_SECONDS
from bench.chaos.plan import (
    EVENT_MIX,
    LARGE_RESULT_TYPE,
    MAX_TRANSIENT_PER_EVENT,
    PERMANENT,
    SINKS,
    ChaosConfig,
)
from bench.chaos.rounds import PHASE_WAIT_SECONDS
from bench.chaos.senders import RETRY_PAUSE_SECONDS
from bench.common import percentile

Row = tuple[str, str]
# What the other clients' latency is held to while slow clients hang on.
OTHER_CLIENTS_TARGET_MS = 100.0

INTRO = (
    "pulse-relay promises that a `2xx` means the event will reach every matching sink.\n"
    "This file is the evidence: the relay is killed with `SIGKILL` again and again\n"
    "while signed events pour in, faults are injected on every side, hostile input is\n"
    "thrown at it, and every event is accounted for at the end. It is produced by one\n"
    "command, from a fresh checkout:"
)
# The method, one bullet per part; `{name}` fields are filled from the run (`_facts`).
METHOD: tuple[tuple[str, str], ...] = (
    (
        "Set-up.",
        "The Pulse emulator and an HTTP receiver run in the test process; the relay runs as "
        "`pulse-relay serve` in a subprocess with three sinks: a jsonl file, the HTTP "
        "receiver and a command (`/bin/sh` script writing one file per run). "
        "`delivery.lease_seconds = {lease}`, so a restart takes up the work a killed "
        "process had claimed within {lease} s.",
    ),
    (
        "Events.",
        "{mix}; {large_rate} of `{large_type}` events have a large result served through a "
        "single-use URL. Every event is for its own job.",
    ),
    (
        "Kills.",
        "Each round waits a random time, then until the chosen moment is happening — a POST "
        "in flight (*ingest*), a `GET /job` in flight (*fetch*), a sink call in flight "
        "(*delivery*), a large-result download in flight (*download*) — and sends `SIGKILL`. "
        "`PRAGMA integrity_check` runs on the store while the relay is down, then the relay "
        "is started again. *timer* counts rounds whose moment did not occur within "
        "{phase_wait} s (killed anyway).",
    ),
    (
        "Senders.",
        "A POST that fails (connection refused or reset, 503) is retried after "
        "{pause} s with probability {retry_probability}, as Svix would; otherwise the event "
        "is given up. Given-up events must be absent everywhere or delivered everywhere — "
        "never stored without their deliveries.",
    ),
    (
        "Transient faults",
        "({faults}): the emulator answers 500, 429 with `Retry-After: 1`, hangs past "
        "`pulse.timeout_seconds`, resets the connection or truncates the JSON, on `GET /job` "
        "and on downloads; the receiver answers 500, 429 with `Retry-After`, hangs past the "
        "sink timeout, resets, or trickles a 2xx body; the command exits 1 or hangs past its "
        "timeout. Rate {fault_rate} per party per attempt, at most {max_transient} per event "
        "and party: each must end `delivered`.",
    ),
    (
        "Permanent faults",
        "({permanent}): each must end `dead`, with a reason, on the sinks it concerns — and "
        "`delivered` on the others. No other outcome is accepted.",
    ),
    (
        "Counting.",
        "Deliveries are identified by the envelope `id`: jsonl lines, POST bodies the "
        "receiver answered 2xx, complete envelopes the command saved. *lost* counts "
        "acknowledged events that some sink it matches never received. Duplicates "
        "(at-least-once delivery) come from work in flight at a kill and from sink calls "
        "that succeeded after the relay's timeout (the receiver's slow 2xx bodies).",
    ),
    (
        "Hostile input",
        "(separate relays, `read_timeout_seconds = {read_timeout}`): hypothesis generates "
        "arbitrary headers and bodies and forged requests (other secret, stale timestamp, "
        "body or id changed after signing, malformed signature lists); none may be accepted "
        "or stored, none may get a 5xx other than 503, the process must survive. Slow "
        "clients trickle headers or bodies byte by byte while other clients send signed "
        "events. Random ids with {duplicate_rate} duplicates must store exactly the distinct "
        "ones. The store on a small tmpfs is filled up: the relay must answer 503, then "
        "accept again once space returns, losing nothing.",
    ),
    (
        "The public edge",
        "(issue 13; a relay logging at info, `read_timeout_seconds = {read_timeout}`, "
        "bodies up to 64 KiB): every ingress finding of the review is replayed with the real "
        "bytes on a raw socket — compressed and corrupt bodies, a malformed signature entry "
        "beside a good one, `Expect: 100-continue` with a refusal due, a repeated "
        "`webhook-id`, a chunk that breaks mid-body, a client that disconnects mid-body, "
        "{flood} bad signatures from 8 senders at once, {idle} idle connections against "
        "systemd's default soft file limit and then the unit's `LimitNOFILE`, and the "
        "README's nginx recipe in front of a relay. Each row gives the answer measured now.",
    ),
    (
        "At rest and on the way out",
        "(a relay started under umask 022 with `PULSE_API_KEY`, `PULSE_WEBHOOK_SECRET`, "
        "`CREDENTIALS_DIRECTORY` and a variable of its own in its environment, a json and "
        "a jsonl file sink and a command that dumps its environment): the modes of the store, "
        "its WAL and SHM, the files and the directories it created; what the command saw; a "
        "signed event whose type is 200 KB, and one whose type holds ESC, CR and LF, then "
        "`events` and `show`; {burst} signed events at once, one with a `\\ud800` escape "
        "in its type, and one with it in a payload field; `prune --older-than 0` and the "
        "captured requests sent again, also against an `hmac-sha256-hex` relay, with and "
        "without an id header; there, the captured bodies are also sent under new ids, "
        "before and after pruning, and a body whose own `timestamp` is stale. The file "
        "sink writes to a json and a jsonl target, and below a sub-directory, while a thread "
        "swaps symlinks and hard links to a file outside in at the target or the "
        "sub-directory; a hard link of an outside file is placed at the target. "
        "`check-config` reads URLs with user-info and query tokens, a plain-http API, "
        "secret-named command variables and HTTP headers, and a config file holding the API "
        "key and a TLS key, both mode 0644.",
    ),
)


# Checked by the test suite on every run, not measured by the chaos run; kept in the
# report so that it lists every attack tried.
PASS_THROUGH_INTRO = (
    "Not measured by the run above: the tests named here check each row on every test run, "
    "against a stand-in Pulse API on 127.0.0.1 (`tests/test_proxy.py`, "
    "`tests/test_proxy_e2e.py`)."
)
PASS_THROUGH_ROWS: tuple[tuple[str, str], ...] = (
    (
        "110 requests hanging upstream (default `proxy.concurrency` 16), then a signed webhook",
        "16 forwarded and held, 94 answered `503 busy` with `Retry-After: 1` at once; the "
        "webhook's job fetched and delivered to the sinks within the test's 5 s bound "
        "(`test_a_webhooks_job_is_delivered_promptly_while_110_proxied_requests_hang`)",
    ),
    (
        "one request beyond `proxy.concurrency`",
        "`503 busy` in under a second, never queued, never forwarded "
        "(`test_beyond_proxy_concurrency_a_request_is_answered_503_busy_at_once`)",
    ),
    (
        "the caller disconnects while its request hangs upstream",
        "the upstream request is cancelled within 1 s and its slot freed "
        "(`test_a_caller_that_leaves_has_its_upstream_request_cancelled_within_a_second`)",
    ),
    (
        "`Cookie` (the login cookie), `Authorization: Bearer`, `X-Pulse-Relay`, "
        "`X-Pulse-Relay-Meta-*`",
        "none reaches Pulse; `x-api-key` does "
        "(`test_admin_credentials_and_relay_headers_never_reach_the_upstream`)",
    ),
    (
        "a CORS preflight (`OPTIONS`, `Origin`, `Access-Control-Request-*`)",
        "`204` with `Allow` and no `Access-Control-*`, never forwarded "
        "(`test_a_cors_preflight_is_answered_by_the_relay_and_grants_nothing`)",
    ),
    (
        "upstream `text/html` with `Set-Cookie: pulse_relay_session=…` and "
        "`Access-Control-Allow-Origin` / `-Credentials`",
        "the body passes, both headers are dropped, `X-Content-Type-Options: nosniff` and "
        "`Content-Security-Policy: sandbox` are added — on the relay's own 400, 401, 413, "
        "502, 503 and 504 too "
        "(`test_upstream_cookies_and_cors_grants_are_dropped_and_every_answer_is_sandboxed`, "
        "`test_the_relays_own_answers_on_the_pass_through_are_sandboxed`)",
    ),
    (
        "`x-api-key` on `/api/…`, `/`, `/pulse`, `/pulse/../api/events`, "
        "`/pulse/%2e%2e/api/events` with an admin token set",
        "401, a redirect to the login form or 404; nothing else is served "
        "(`test_an_api_key_opens_the_pass_through_and_nothing_else`)",
    ),
)
ADMIN_SECTION = "The admin listener under attack"
ADMIN_INTRO = (
    "Measured by `bench/chaos/admin.py`, part of the command above: issue 20's findings, "
    "replayed with "
    "the real bytes on a raw socket against the admin listener of a relay with no admin "
    "token (the default set-up), then of one with a token (`read_timeout_seconds = "
    "{read_timeout}`). Each row gives the answer measured now."
)


def render(config: ChaosConfig, outcome: Outcome, hostile: HostileFigures, command: str) -> str:
    """RELIABILITY.md for one run."""
    rows = chaos_rows(outcome) + hostile_rows(hostile, outcome)
    facts = _facts(config, outcome, hostile)
    lines = ["# Reliability", "", INTRO, "", "```sh", command, "```", ""]
    lines += [f"Result: **{verdict(outcome.problems + hostile.problems)}**", ""]
    lines += markdown_table(("figure", "value"), rows)
    lines += ["", _run_summary(config, outcome, hostile), ""]
    lines += ["## What happens in the run", ""]
    lines += [f"- **{name}** {text.format(**facts)}" for name, text in METHOD]
    lines += ["", "## The pass-through under attack", "", PASS_THROUGH_INTRO, ""]
    lines += markdown_table(("attack on `/pulse/`", "result"), PASS_THROUGH_ROWS)
    if hostile.admin is not None:
        lines += ["", f"## {ADMIN_SECTION}", "", ADMIN_INTRO.format(**facts), ""]
        lines += markdown_table(("attack", "answer measured"), hostile.admin.rows)
    lines += ["", "## Versions", ""]
    lines += _versions(hostile)
    return "\n".join(lines) + "\n"


def markdown_table(header: tuple[str, ...], rows: Iterable[tuple[str, ...]]) -> list[str]:
    """A Markdown table, one line per row."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def verdict(problems: list[str]) -> str:
    """The result line: every figure as the contract says, or the first 50 problems."""
    if not problems:
        return "every figure as the contract says"
    return "PROBLEMS:\n\n" + "\n".join(f"- {problem}" for problem in problems[:50])


def chaos_rows(outcome: Outcome) -> list[Row]:
    """The figures of the kill-and-fault run."""
    rows = [
        ("events sent (distinct webhook ids)", f"{outcome.events_planned:,}"),
        ("POST attempts (with sender retries)", f"{sum(outcome.http_statuses.values()):,}"),
        ("acknowledged (2xx)", f"{outcome.acknowledged:,}"),
        (
            "never acknowledged: absent / delivered",
            f"{outcome.abandoned_absent} / {outcome.abandoned_delivered}",
        ),
    ]
    rows += [
        (
            f"delivered to `{sink}` (+ dead as planned)",
            f"{outcome.delivered[sink]:,} (+ {outcome.dead_expected[sink]})",
        )
        for sink in SINKS
    ]
    rows += [
        ("**lost**", f"**{outcome.lost}**"),
        (
            "duplicate deliveries " + " / ".join(SINKS),
            " / ".join(str(outcome.duplicates[sink]) for sink in SINKS),
        ),
        ("command runs cut short by a kill (redone in full)", str(outcome.command_cut_short)),
        (
            "kill rounds (SIGKILL) by moment",
            f"{outcome.kill_rounds}: {_counts(outcome.kill_phases, ' ')}",
        ),
        (
            "`integrity_check` after each kill / at the end",
            f"{dict(outcome.integrity_after_kills)} / {outcome.integrity_final}",
        ),
        ("transient faults injected", f"{sum(outcome.faults.values()):,}"),
        ("permanent faults (acknowledged events)", f"{sum(outcome.permanent.values())}"),
    ]
    return rows


def hostile_rows(hostile: HostileFigures, outcome: Outcome) -> list[Row]:
    """The figures of the hostile-input probes (the 5xx count includes the chaos run's)."""
    fuzz_5xx = sum(
        n for status, n in hostile.fuzz_statuses.items() if status >= 500 and status != 503
    )
    rows = [
        ("hostile requests tried (fuzz)", f"{hostile.fuzz_examples:,}"),
        ("fuzz answers", _counts(hostile.fuzz_statuses, ": ", sep=", ")),
        ("forged events stored", str(hostile.fuzz_stored)),
        ("5xx other than 503 (chaos + fuzz)", str(outcome.five_xx_other_than_503 + fuzz_5xx)),
    ]
    rows += _slow_client_rows(hostile)
    dup = hostile.duplicates
    if dup is not None:
        rows.append(
            (
                f"random ids, {hostile.duplicate_rate:.0%} duplicates: sent / distinct / stored",
                f"{dup.requests:,} / {dup.unique_ids:,} / {dup.stored:,} "
                f"(answers {dict(sorted(dup.statuses.items()))})",
            )
        )
    disk = hostile.disk
    if disk is None:
        rows.append(("disk full", "not run: cannot mount a tmpfs here (needs CAP_SYS_ADMIN)"))
    else:
        rows.append(
            (
                f"disk full ({disk.method}): 503s / then accepted / lost",
                f"{disk.unavailable} / {disk.acked_after} / {disk.lost} "
                f"(integrity {disk.integrity}; /readyz while full: {disk.readyz_while_full})",
            )
        )
    if hostile.edge is not None:
        rows += hostile.edge.rows
    if hostile.at_rest is not None:
        rows += at_rest_rows(hostile.at_rest)
    return rows


def at_rest_rows(figures: AtRestFigures) -> list[Row]:
    """The figures of the probes of what the relay leaves on disk and hands on."""
    race = figures.race_outcomes
    replays = figures.replay_after_prune
    return [
        (
            "modes after a run under umask 022: store + WAL + SHM / sink files / directories "
            "the relay created",
            " / ".join(", ".join(modes) for modes in figures.modes.values()),
        ),
        (
            f"file sink, links swapped in during {figures.race_writes:,} writes: "
            "written / refused (dead) / retried / envelopes outside",
            f"{race['written']:,} / {race['refused (dead)']:,} / {race['retried']:,} / "
            f"{figures.race_outside}",
        ),
        ("file sink, a hard link placed at the target", _hard_link_answer(figures)),
        (
            f"command sink: the relay's {', '.join(WITHHELD)} seen by the child",
            f"{len(figures.env_leaked)} (it got {', '.join(figures.env_seen)})",
        ),
        (
            "a 200 KB event type: answer / command runs / longest log line",
            f"{figures.huge_type_answer} / {figures.huge_type_command_runs} / "
            f"{figures.longest_log_line_bytes} bytes",
        ),
        (
            "replayed after `prune --older-than 0`: standard / hmac-sha256-hex",
            f"{replays.get('standard', '-')} / {replays.get('hmac-sha256-hex', '-')}",
        ),
        (
            "hmac-sha256-hex: the captured bodies under new ids, before / after "
            "`prune --older-than 0`",
            " / ".join(figures.hex_new_id),
        ),
        (
            f"hmac-sha256-hex: a body whose `timestamp` is {STALE_BODY_SECONDS // 60} minutes old",
            figures.hex_stale_timestamp,
        ),
        (
            "ESC, CR, LF in a signed type: raw control characters printed by `events`, `show`",
            str(figures.raw_controls_printed),
        ),
        (
            f"`\\ud800` in the type of one of {LONE_SURROGATE_BURST} signed webhooks sent at "
            "once: answers / in a payload field: sent to the sinks as",
            ", ".join(
                f"{answer} x{count}"
                for answer, count in sorted(figures.lone_surrogate_type_answers.items())
            )
            + f" / {figures.lone_surrogate_field_sent}",
        ),
        (
            "`check-config`: URL user-info and query values printed / plain-http API warned",
            f"{figures.url_secrets_printed} / {'yes' if figures.base_url_warned else 'no'}",
        ),
        (
            f"`check-config`: values of {', '.join(NAMED_SECRETS)} printed",
            str(figures.named_secrets_printed),
        ),
        (
            "`check-config`: mode 0644 files holding a secret warned about",
            ", ".join(figures.mode_warned) or "none",
        ),
    ]


def _hard_link_answer(figures: AtRestFigures) -> str:
    answers = {answer.partition(": ")[2] for answer in figures.hard_link.values()}
    formats = ", ".join(figures.hard_link)
    if len(answers) == 1 and all(a.startswith("Permanent") for a in figures.hard_link.values()):
        return f"dead at once ({formats}): {answers.pop()}; the outside file untouched"
    return "; ".join(f"{kind}: {answer}" for kind, answer in figures.hard_link.items())


def _slow_client_rows(hostile: HostileFigures) -> list[Row]:
    slow = hostile.slow
    if slow is None:
        return []
    latencies = slow.other_latencies_ms
    p99 = percentile(latencies, 0.99)
    met = "met" if p99 < OTHER_CLIENTS_TARGET_MS else "**not met**"
    return [
        (
            "slow clients: headers trickled → closed after",
            f"{len(slow.header_cutoff_seconds)} x max {max(slow.header_cutoff_seconds):.2f} s "
            f"({dict(slow.header_answers)})",
        ),
        (
            "slow clients: body trickled → answered after",
            f"{len(slow.body_cutoff_seconds)} x max {max(slow.body_cutoff_seconds):.2f} s "
            f"({dict(slow.body_statuses)})",
        ),
        (
            "other clients meanwhile: answers, p50 / p99 / max",
            f"{dict(slow.other_statuses)}, {percentile(latencies, 0.5):.1f} / {p99:.1f} / "
            f"{max(latencies):.1f} ms (p99 target < {OTHER_CLIENTS_TARGET_MS:.0f} ms: {met})",
        ),
    ]


def _counts(counts: Mapping[Any, int], joiner: str, *, sep: str = ", ") -> str:
    """`key{joiner}count` for each key, sorted."""
    return sep.join(f"{key}{joiner}{n}" for key, n in sorted(counts.items()))


def _run_summary(config: ChaosConfig, outcome: Outcome, hostile: HostileFigures) -> str:
    return (
        f"Run of {time.strftime('%Y-%m-%d', time.gmtime())}: {config.events:,} events from "
        f"{config.senders} concurrent senders at about {config.send_rate_per_second:.0f}/s, "
        f"seed {config.seed}; chaos part {outcome.total_seconds:.0f} s, of which "
        f"{outcome.drain_seconds:.0f} s draining after the last send; hostile part "
        f"{hostile.total_seconds:.0f} s."
    )


def _facts(config: ChaosConfig, outcome: Outcome, hostile: HostileFigures) -> dict[str, str]:
    """The values the method text quotes, from the run and the harness's own constants."""
    mix = ", ".join(f"{share:.0%} `{event_type}`" for event_type, share in EVENT_MIX)
    return {
        "lease": f"{LEASE_SECONDS:g}",
        "mix": mix,
        "large_rate": f"{config.large_rate:.0%}",
        "large_type": LARGE_RESULT_TYPE,
        "phase_wait": f"{PHASE_WAIT_SECONDS:g}",
        "pause": "-".join(f"{seconds:g}" for seconds in RETRY_PAUSE_SECONDS),
        "retry_probability": f"{config.sender_retry_probability:g}",
        "faults": _counts(outcome.faults, " "),
        "fault_rate": f"{config.fault_rate:.0%}",
        "max_transient": str(MAX_TRANSIENT_PER_EVENT),
        "permanent": ", ".join(
            f"{kind} {n} ({PERMANENT[kind]})" for kind, n in sorted(outcome.permanent.items())
        ),
        "read_timeout": f"{hostile.read_timeout_seconds:g}",
        "duplicate_rate": f"{hostile.duplicate_rate:.0%}",
        "flood": f"{hostile.edge.flood_requests:,}" if hostile.edge else "no",
        "idle": f"{hostile.edge.idle_connections:,}" if hostile.edge else "no",
        "burst": str(LONE_SURROGATE_BURST),
    }


def _versions(hostile: HostileFigures) -> list[str]:
    defaults = ChaosConfig()
    duplicates = hostile.duplicates.requests if hostile.duplicates else 0
    return [
        "- **CI (every change):** `python -m pytest tests/reliability` runs the same code with",
        "  smaller sizes.",
        f"- **Long:** the command above (defaults: {defaults.kill_rounds} kill rounds,",
        f"  {defaults.events:,} events; this run: {hostile.fuzz_examples:,} fuzz examples,",
        f"  {duplicates:,} duplicate-id requests). `python -m bench.chaos --help`",
        "  lists the knobs; the exit status is 1 when any figure breaks the contract.",
    ]
