"""The `pulse-relay` command line: argument parsing and output formatting only."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click

from pulse_relay import __version__
from pulse_relay.app import open_store, serve
from pulse_relay.config import ConfigError, Settings, load_settings, redacted_settings
from pulse_relay.logs import configure_logging
from pulse_relay.store import EventView, Store, StoreUnavailableError, StoreVersionError

T = TypeVar("T")


class _Context:
    def __init__(self, config_path: Path | None) -> None:
        self.config_path = config_path

    def settings(self, overrides: dict[str, Any] | None = None) -> Settings:
        try:
            return load_settings(self.config_path, overrides=overrides)
        except ConfigError as error:
            fail(f"configuration error:\n{error}")


def fail(message: str) -> NoReturn:
    """Print `message` to stderr and exit 1 (a user or configuration error)."""
    click.echo(f"pulse-relay: {message}", err=True)
    sys.exit(1)


def _with_store(settings: Settings, action: Callable[[Store], Awaitable[T]]) -> T:
    """Run `action` against the configured store, which must already exist."""
    path = settings.store.path
    if not path.exists():
        fail(f"no store at {path} (start `pulse-relay serve` with this configuration first)")

    async def run() -> T:
        async with open_store(settings) as store:
            return await action(store)

    try:
        return asyncio.run(run())
    except (StoreUnavailableError, StoreVersionError) as error:
        fail(str(error))


def _iso(unix_seconds: float | None) -> str | None:
    if unix_seconds is None:
        return None
    return datetime.fromtimestamp(unix_seconds, tz=UTC).isoformat(timespec="milliseconds")


def _event_document(view: EventView) -> dict[str, Any]:
    document: dict[str, Any] = {
        "id": view.id,
        "received_at": _iso(view.received_at),
        "source": view.source,
        "type": view.type,
        "job_id": view.job_id,
        "state": view.state,
        "error": view.error,
        "fetch": {"state": view.fetch_state, "error": view.fetch_error},
        "deliveries": {
            sink: {**state, "next_attempt_at": _iso(state["next_attempt_at"])}
            for sink, state in view.deliveries.items()
        },
    }
    if view.body is not None:
        document["headers"] = view.headers
        try:
            document["payload"] = json.loads(view.body)
        except ValueError:
            document["payload_text"] = view.body.decode("utf-8", errors="replace")
        document["job"] = view.job
        document["result_url"] = view.result_url
        document["attempts"] = [
            {**asdict(attempt), "started_at": _iso(attempt.started_at)} for attempt in view.attempts
        ]
    return document


def _summary_state(view: EventView) -> str:
    if view.state != "accepted":
        return view.state
    states = {d["state"] for d in view.deliveries.values()}
    if view.fetch_state == "pending" and "pending" in states:
        return "fetching"
    for state in ("dead", "pending"):
        if state in states:
            return state
    return "delivered" if states else "no sinks"


def _table(rows: list[list[str]], headers: list[str]) -> str:
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)
    ]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return "\n".join(lines)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="pulse-relay")
@click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path, dir_okay=False),
    envvar="PULSE_RELAY_CONFIG",
    help="TOML configuration file (also PULSE_RELAY_CONFIG).",
)
@click.pass_context
def cli(ctx: click.Context, config_path: Path | None) -> None:
    """Receive, verify, store and relay Pulse webhooks."""
    ctx.obj = _Context(config_path)


@cli.command("serve")
@click.option("--host", help="Address to bind (overrides server.host).")
@click.option("--port", type=int, help="Port to bind (overrides server.port).")
@click.pass_obj
def serve_command(obj: _Context, host: str | None, port: int | None) -> None:
    """Run the daemon in the foreground; logs go to stderr."""
    overrides: dict[str, Any] = {}
    if host is not None:
        overrides["server.host"] = host
    if port is not None:
        overrides["server.port"] = port
    settings = obj.settings(overrides)
    configure_logging(format=settings.log.format, level=settings.log.level)
    try:
        asyncio.run(serve(settings))
    except OSError as error:
        fail(f"cannot start: {error}")
    except (StoreUnavailableError, StoreVersionError) as error:
        fail(str(error))


@cli.command("check-config")
@click.pass_obj
def check_config(obj: _Context) -> None:
    """Validate the configuration and print it with secrets redacted."""
    settings = obj.settings()
    click.echo(json.dumps(redacted_settings(settings), indent=2))
    where = obj.config_path or "defaults and environment"
    click.echo(f"configuration OK ({where})", err=True)


@cli.command("events")
@click.option("--type", "event_type", help="Only events of this type.")
@click.option(
    "--state",
    help="accepted | invalid | repeat, or a delivery state: pending | delivered | dead.",
)
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="JSON lines on stdout.")
@click.pass_obj
def events_command(
    obj: _Context, event_type: str | None, state: str | None, limit: int, as_json: bool
) -> None:
    """List stored events, newest first, with each sink's delivery state."""
    settings = obj.settings()

    async def action(store: Store) -> list[EventView]:
        return await store.list_events(event_type=event_type, state=state, limit=limit)

    views = _with_store(settings, action)
    if as_json:
        for view in views:
            click.echo(json.dumps(_event_document(view)))
        return
    rows = [
        [
            view.id,
            _iso(view.received_at) or "",
            view.source,
            view.type or "-",
            view.job_id or "-",
            _summary_state(view),
            " ".join(f"{sink}:{d['state']}" for sink, d in view.deliveries.items()) or "-",
        ]
        for view in views
    ]
    click.echo(_table(rows, ["ID", "RECEIVED", "SOURCE", "TYPE", "JOB", "STATE", "SINKS"]))


@cli.command("show")
@click.argument("event_id")
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
@click.pass_obj
def show_command(obj: _Context, event_id: str, as_json: bool) -> None:
    """Show one event: headers, payload, job, and every attempt."""
    settings = obj.settings()

    async def action(store: Store) -> EventView | None:
        return await store.get_event(event_id)

    view = _with_store(settings, action)
    if view is None:
        fail(f"no event with id {event_id!r}")
    document = _event_document(view)
    if as_json:
        click.echo(json.dumps(document, indent=2))
        return
    for key in ("id", "received_at", "source", "type", "job_id", "state", "error"):
        click.echo(f"{key + ':':<13}{document[key] if document[key] is not None else '-'}")
    click.echo(
        f"{'fetch:':<13}{view.fetch_state}" + (f" ({view.fetch_error})" if view.fetch_error else "")
    )
    click.echo("headers:")
    for name, value in (view.headers or {}).items():
        click.echo(f"  {name}: {value}")
    click.echo("payload:")
    click.echo(_indent(json.dumps(document.get("payload", document.get("payload_text")), indent=2)))
    click.echo("job:")
    click.echo(_indent(json.dumps(view.job, indent=2)))
    click.echo("deliveries:")
    for sink, state in view.deliveries.items():
        extra = f" - {state['last_error']}" if state["last_error"] else ""
        click.echo(f"  {sink}: {state['state']} after {state['attempts']} attempt(s){extra}")
    click.echo("attempts:")
    for attempt in view.attempts:
        what = attempt.sink or "job fetch"
        code = f" [{attempt.status_code}]" if attempt.status_code is not None else ""
        error = f" {attempt.error}" if attempt.error else ""
        click.echo(
            f"  {_iso(attempt.started_at)} {what} #{attempt.attempt} {attempt.outcome}{code}"
            f" {attempt.duration_ms:.1f} ms{error}"
        )


@cli.command("replay")
@click.argument("event_ids", nargs=-1)
@click.option("--dead", "dead_only", is_flag=True, help="Replay every dead delivery.")
@click.option("--sink", help="Only deliveries to this sink.")
@click.pass_obj
def replay_command(
    obj: _Context, event_ids: tuple[str, ...], dead_only: bool, sink: str | None
) -> None:
    """Deliver events again (envelope source "replay"); the running daemon picks them up."""
    if not event_ids and not dead_only:
        raise click.UsageError("give event ids, or --dead")
    if event_ids and dead_only:
        raise click.UsageError("give event ids or --dead, not both")
    settings = obj.settings()
    known = {s.name for s in settings.sinks}
    if sink is not None and sink not in known:
        fail(f"no sink named {sink!r} in the configuration (known: {', '.join(sorted(known))})")

    async def action(store: Store) -> tuple[int, list[str]]:
        missing = [i for i in event_ids if await store.get_event(i) is None]
        if missing:
            return 0, missing
        return await store.replay(event_ids, sink=sink, dead_only=dead_only), []

    count, missing = _with_store(settings, action)
    if missing:
        fail(f"no event with id {', '.join(repr(m) for m in missing)}")
    click.echo(f"{count} deliver{'y' if count == 1 else 'ies'} queued for replay")


def _indent(text: str) -> str:
    return "\n".join("  " + line for line in text.splitlines())


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="pulse-relay")
