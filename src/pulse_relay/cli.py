"""The `pulse-relay` command line: argument parsing and output formatting only.

Modules are imported inside the commands that use them: `--help` or `events`
then start without loading aiohttp, the daemon or the admin side (a third of a
second on a small machine, paid by every invocation in scripts).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from pulse_relay import __version__
from pulse_relay.cli_context import CommandContext, fail, problem_line, with_service, with_store
from pulse_relay.cli_transfer import export_command, import_command

if TYPE_CHECKING:
    from pulse_relay.config import Settings
    from pulse_relay.store import EventView, StoreBackend


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
    ctx.obj = CommandContext(config_path)


@cli.command("serve")
@click.option("--host", help="Address to bind (overrides server.host).")
@click.option("--port", type=int, help="Port to bind (overrides server.port).")
@click.pass_obj
def serve_command(obj: CommandContext, host: str | None, port: int | None) -> None:
    """Run the daemon in the foreground; logs go to stderr."""
    import asyncio

    from pulse_relay.config import ConfigError, admin_exposure_problem, load_settings
    from pulse_relay.daemon import serve
    from pulse_relay.logs import configure_logging, get_logger
    from pulse_relay.preflight import exposed_secret_files
    from pulse_relay.store import StoreUnavailableError, StoreVersionError

    overrides: dict[str, Any] = {}
    if host is not None:
        overrides["server.host"] = host
    if port is not None:
        overrides["server.port"] = port
    settings, origins = obj.settings_with_origins(overrides)
    exposed = admin_exposure_problem(settings)
    if exposed is not None:
        # Refused here too (the relay refuses it whoever starts it) to name the origin.
        fail(f"configuration error:\n{problem_line(exposed, origins(('admin', 'host')))}")
    configure_logging(format=settings.log.format, level=settings.log.level)
    for warning in exposed_secret_files(settings, obj.config_path):
        get_logger("pulse_relay.cli").warning("secret open to others", detail=warning)

    def reload_settings() -> Settings:
        return load_settings(obj.config_path, overrides=overrides)

    try:
        asyncio.run(serve(settings, reload_settings=reload_settings))
    except ConfigError as error:
        fail(f"configuration error:\n{error}")
    except OSError as error:
        fail(f"cannot start: {error}")
    except (StoreUnavailableError, StoreVersionError) as error:
        fail(str(error))


@cli.command("check-config")
@click.pass_obj
def check_config(obj: CommandContext) -> None:
    """Validate the configuration and print it with secrets redacted.

    Also checks this host: the store's folder and file sink directories are
    writable, command sink programs exist and are executable, the TLS certificate
    and key can be read and belong together, and a PostgreSQL store is reachable
    and its schema is not newer than this release.
    """
    import asyncio
    import os

    from pulse_relay.config import mode_warnings, settings_warnings
    from pulse_relay.preflight import HostProblem, check_host, exposed_secret_files
    from pulse_relay.redaction import redacted_settings
    from pulse_relay.store.postgres import postgres_problem

    settings, origins = obj.settings_with_origins()
    problems = check_host(settings)
    postgres_url = settings.store.postgres_url
    if postgres_url is not None:
        # Connectivity and the schema version: a read, never a migration.
        unusable = asyncio.run(postgres_problem(postgres_url))
        if unusable is not None:
            problems.append(HostProblem(("store", "url"), f"store.url: {unusable}"))
    if problems:
        lines = [problem_line(problem.text, origins(problem.key)) for problem in problems]
        fail("configuration error:\n" + "\n".join(lines))
    click.echo(json.dumps(redacted_settings(settings), indent=2))
    warnings = [
        *mode_warnings(settings),
        *settings_warnings(settings),
        *exposed_secret_files(settings, obj.config_path),
    ]
    for warning in warnings:
        click.echo(f"warning: {warning}", err=True)
    where = obj.config_path or "defaults and environment"
    click.echo(
        f"configuration OK ({where}); relative paths resolve against {os.getcwd()}", err=True
    )


# The command line's name for each listing filter, where it is not --NAME.
_FILTER_OPTIONS = {"job_id": "--job-id", "q": "--search"}


@cli.command("events")
@click.option("--type", "event_type", help="Only events of this type.")
@click.option(
    "--state",
    help="accepted | invalid | repeat, or a delivery state: pending | delivered | dead.",
)
@click.option("--sink", help="Only events with a delivery to this sink.")
@click.option("--job-id", help="Only events of this job.")
@click.option("--source", help="webhook | poll.")
@click.option("--search", help="Text in the id, type, job id or body.")
@click.option("--limit", default="50", show_default=True, help="1 to 500.")
@click.option("--json", "as_json", is_flag=True, help="JSON lines on stdout.")
@click.pass_obj
def events_command(
    obj: CommandContext,
    event_type: str | None,
    state: str | None,
    sink: str | None,
    job_id: str | None,
    source: str | None,
    search: str | None,
    limit: str,
    as_json: bool,
) -> None:
    """List stored events, newest first, with each sink's delivery state."""
    from pulse_relay.cli_format import events_table
    from pulse_relay.serialize import event_document
    from pulse_relay.store.filters import FilterError, parse_event_filters

    values = {
        "type": event_type,
        "state": state,
        "sink": sink,
        "job_id": job_id,
        "source": source,
        "q": search,
        "limit": limit,
    }
    try:
        # The API's own rule: the same input is refused the same way by both.
        filters = parse_event_filters(values)
    except FilterError as error:
        fail(f"{_FILTER_OPTIONS.get(error.name, '--' + error.name)}: {error.problem}")
    settings = obj.settings()
    views = _listed_now(settings, filters.query(), filters.limit)
    if views is None:

        async def action(store: StoreBackend) -> list[EventView]:
            return await store.list_events(**filters.query(), limit=filters.limit)

        views = with_store(settings, action)
    if as_json:
        for view in views:
            click.echo(json.dumps(event_document(view)))
        return
    click.echo(events_table(views))


def _listed_now(settings: Settings, query: dict[str, Any], limit: int) -> list[EventView] | None:
    """The listing read straight from a SQLite file (store/sqlite/reader.py): no event
    loop, writer or migration for a command that writes nothing; None when the store
    proper must answer (PostgreSQL, no file yet, a schema to migrate or refuse)."""
    path = settings.store.sqlite_file
    if path is None or not path.exists():
        return None
    from pulse_relay.store.sqlite.reader import list_events_now

    busy_timeout_seconds = settings.store.busy_timeout_seconds
    return list_events_now(path, busy_timeout_seconds=busy_timeout_seconds, limit=limit, **query)


@cli.command("show")
@click.argument("event_id")
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
@click.pass_obj
def show_command(obj: CommandContext, event_id: str, as_json: bool) -> None:
    """Show one event: headers, payload, job, and every attempt."""
    from pulse_relay.admin import service
    from pulse_relay.cli_format import event_text
    from pulse_relay.serialize import event_document

    settings = obj.settings()

    async def action(store: StoreBackend) -> EventView:
        return await service.require_event(store, event_id)

    view = with_service(settings, action)
    document = event_document(view)
    if as_json:
        click.echo(json.dumps(document, indent=2))
        return
    for line in event_text(view, document):
        click.echo(line)


@cli.command("replay")
@click.argument("event_ids", nargs=-1)
@click.option("--dead", "dead_only", is_flag=True, help="Replay every dead delivery.")
@click.option("--sink", help="Only deliveries to this sink.")
@click.option(
    "--envelope",
    "envelope_file",
    metavar="FILE",
    help="Send this JSON envelope instead, this once (- for stdin; one event id).",
)
@click.pass_obj
def replay_command(
    obj: CommandContext,
    event_ids: tuple[str, ...],
    dead_only: bool,
    sink: str | None,
    envelope_file: str | None,
) -> None:
    """Deliver events again (envelope source "replay"); the running daemon picks them up."""
    if not event_ids and not dead_only:
        raise click.UsageError("give event ids, or --dead")
    if event_ids and dead_only:
        raise click.UsageError("give event ids or --dead, not both")
    if envelope_file is not None and len(set(event_ids)) != 1:
        raise click.UsageError("--envelope replays one event: give one event id")
    from pulse_relay.cli_replay import read_envelope, replay

    settings = obj.settings()
    envelope = None if envelope_file is None else read_envelope(envelope_file)
    count = replay(settings, event_ids, dead_only=dead_only, sink=sink, envelope=envelope)
    click.echo(f"{count} deliver{'y' if count == 1 else 'ies'} queued for replay")


def _parse_meta(values: tuple[str, ...]) -> dict[str, str]:
    metadata: dict[str, str] = {}
    for item in values:
        key, equals, value = item.partition("=")
        if not equals or not key.strip():
            raise click.BadParameter(f"{item!r} is not KEY=VALUE", param_hint="--meta")
        metadata[key.strip()] = value
    return metadata


@cli.command("watch")
@click.argument("job_ids", nargs=-1)
@click.option("--meta", multiple=True, metavar="KEY=VALUE", help="Metadata for the envelope.")
@click.option("--list", "as_list", is_flag=True, help="List watched jobs instead.")
@click.option("--json", "as_json", is_flag=True, help="With --list: JSON lines on stdout.")
@click.pass_obj
def watch_command(
    obj: CommandContext,
    job_ids: tuple[str, ...],
    meta: tuple[str, ...],
    as_list: bool,
    as_json: bool,
) -> None:
    """Poll jobs until they finish, then deliver them like webhooks (source "poll")."""
    if as_list:
        if job_ids or meta:
            raise click.UsageError("--list takes no job ids or --meta")
        _list_watches(obj, as_json)
        return
    if not job_ids:
        raise click.UsageError("give at least one job id (or --list)")
    from pulse_relay.admin import service

    metadata = _parse_meta(meta)
    settings = obj.settings()

    async def action(store: StoreBackend) -> list[dict[str, Any]]:
        return await service.add_watches(
            store,
            job_ids,
            metadata,
            interval_seconds=settings.poll.interval_seconds,
            origin="watch",
        )

    for watch in with_service(settings, action, create=True):
        click.echo(f"watching {watch['job_id']}")


def _list_watches(obj: CommandContext, as_json: bool) -> None:
    from pulse_relay.admin import service
    from pulse_relay.cli_format import watches_table

    settings = obj.settings()

    async def action(store: StoreBackend) -> list[dict[str, Any]]:
        return list((await service.list_watches(store))["watches"])

    watches = with_service(settings, action)
    if as_json:
        for watch in watches:
            click.echo(json.dumps(watch))
        return
    click.echo(watches_table(watches))


@cli.command("unwatch")
@click.argument("job_ids", nargs=-1, required=True)
@click.pass_obj
def unwatch_command(obj: CommandContext, job_ids: tuple[str, ...]) -> None:
    """Stop polling jobs."""
    from pulse_relay.admin import service

    settings = obj.settings()

    async def action(store: StoreBackend) -> int:
        return await service.remove_watches(store, job_ids)

    removed = with_service(settings, action)
    click.echo(f"{removed} of {len(job_ids)} job(s) no longer watched")


@cli.command("send-test")
@click.option("--url", help="Where to POST (default: this configuration's own endpoint).")
@click.option("--type", "event_type", default="job.completed", show_default=True)
@click.option("--job-id", help="Job id in the payload (default: a new test-… id).")
@click.option("--secret", help="Sign with this secret instead of the configured one.")
@click.option(
    "--private-key-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Add a v1a (ed25519) signature made with the whsk_ key in this file.",
)
@click.pass_obj
def send_test_command(
    obj: CommandContext,
    url: str | None,
    event_type: str,
    job_id: str | None,
    secret: str | None,
    private_key_file: Path | None,
) -> None:
    """Sign a test event with the configured secret and POST it to the relay."""
    from pulse_relay.cli_send_test import send_test

    send_test(
        obj.settings(),
        url=url,
        event_type=event_type,
        job_id=job_id,
        secret=secret,
        private_key_file=private_key_file,
    )


def _probe_url(settings: Settings, check_ready: bool) -> str:
    """The admin listener's /healthz or /readyz; the ingress's /healthz without an admin side."""
    from pulse_relay.wiring import ingress_url, local_url

    admin = settings.admin
    if admin.enabled:
        return local_url(admin.host, admin.port) + ("/readyz" if check_ready else "/healthz")
    if check_ready:
        fail("/readyz is served by the admin listener, and admin.enabled is false")
    return ingress_url(settings) + "/healthz"


@cli.command("prune")
@click.option(
    "--older-than",
    "older_than_days",
    type=click.FloatRange(min=0),
    help="Age limit in days; 0 prunes every finished event (default: store.retention_days).",
)
@click.pass_obj
def prune_command(obj: CommandContext, older_than_days: float | None) -> None:
    """Delete finished events older than the limit; pending and dead ones are kept.

    The ids of pruned events stay known for store.dedupe_days: a replayed
    request is still answered duplicate.
    """
    from pulse_relay.wiring import PruneOutcome, prune_store

    settings = obj.settings()
    days = older_than_days if older_than_days is not None else settings.store.retention_days

    async def action(store: StoreBackend) -> PruneOutcome:
        return await prune_store(
            store,
            now=time.time(),
            older_than_days=days,
            dedupe_days=settings.store.dedupe_days,
        )

    outcome = with_store(settings, action)
    deleted = outcome.events
    click.echo(f"{deleted} event{'' if deleted == 1 else 's'} older than {days:g} days pruned")


@cli.command("healthcheck")
@click.option("--url", help="URL to probe (default: /healthz of the admin listener configured).")
@click.option("--ready", "check_ready", is_flag=True, help="Probe /readyz instead of /healthz.")
@click.option(
    "--timeout",
    "timeout_seconds",
    type=click.FloatRange(min=0, min_open=True),
    default=5.0,
    show_default=True,
    help="Seconds to wait for the answer.",
)
@click.pass_obj
def healthcheck_command(
    obj: CommandContext, url: str | None, check_ready: bool, timeout_seconds: float
) -> None:
    """Exit 0 if the running relay answers 200, else 1 (for container HEALTHCHECKs)."""
    import asyncio

    import aiohttp

    from pulse_relay.probe import probe

    target = _probe_url(obj.settings(), check_ready) if url is None else url
    try:
        status, answer = asyncio.run(probe(target, timeout_seconds, is_own_listener=url is None))
    except (aiohttp.ClientError, OSError, TimeoutError) as error:
        fail(f"unhealthy: cannot reach {target}: {error or type(error).__name__}")
    if status != 200:
        fail(f"unhealthy: {target} answered {status} {answer}")
    click.echo(f"healthy: {target} answered {status}")


@cli.command("demo")
@click.option(
    "--keep",
    type=click.Path(path_type=Path, file_okay=False),
    help="Run in this folder and keep it (default: a temporary folder, removed after).",
)
def demo_command(keep: Path | None) -> None:
    """Run the whole pipeline against a built-in Pulse emulator; needs no account or network."""
    import asyncio

    from pulse_relay.demo import run_demo
    from pulse_relay.logs import configure_logging

    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
    configure_logging(format="console", level="error")
    ok = asyncio.run(run_demo(sys.stdout, workdir=keep))
    sys.exit(0 if ok else 1)


@cli.command("emulator")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=8789, show_default=True)
@click.option("--api-key", default="emulator-key", show_default=True)
def emulator_command(host: str, port: int, api_key: str) -> None:
    """Serve the built-in Pulse API emulator (jobs demo-completed, demo-progress, ...)."""
    import asyncio

    from pulse_relay.emulator import run_emulator
    from pulse_relay.logs import configure_logging

    configure_logging(format="auto", level="info")
    try:
        asyncio.run(run_emulator(host, port, api_key))
    except KeyboardInterrupt:
        pass
    except OSError as error:
        fail(f"cannot start the emulator: {error}")


cli.add_command(export_command)
cli.add_command(import_command)


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="pulse-relay")
