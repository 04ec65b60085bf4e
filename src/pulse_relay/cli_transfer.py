"""`pulse-relay export` and `pulse-relay import` (docs/cli.md): NDJSON out of a store, and
back into any store. The work is `pulse_relay.transfer`'s; this is the command line."""

from __future__ import annotations

import os
import sys
from typing import IO, TYPE_CHECKING

import click

from pulse_relay.cli_context import CommandContext, fail, with_store

if TYPE_CHECKING:
    from pulse_relay.store import StoreBackend
    from pulse_relay.transfer import ImportCounts


@click.command("export")
@click.option("--type", "event_type", help="Only events of this type.")
@click.option(
    "--state",
    help="accepted | invalid | repeat, or a delivery state: pending | delivered | dead.",
)
@click.option("--since", help="Only events received at or after: ISO 8601 or Unix seconds.")
@click.option("--until", help="Only events received at or before: ISO 8601 or Unix seconds.")
@click.pass_obj
def export_command(
    obj: CommandContext,
    event_type: str | None,
    state: str | None,
    since: str | None,
    until: str | None,
) -> None:
    """Write every event, as `show --json` prints it, one JSON document a line (NDJSON)."""
    from pulse_relay.store.filters import FilterError
    from pulse_relay.transfer import export_documents, export_line, parse_export_filters

    values = {"type": event_type, "state": state, "since": since, "until": until}
    try:
        filters = parse_export_filters(values)
    except FilterError as error:
        fail(f"--{error.name}: {error.problem}")
    settings = obj.settings()
    out = sys.stdout

    async def action(store: StoreBackend) -> None:
        async for document in export_documents(store, filters):
            out.write(export_line(document))

    try:
        with_store(settings, action)
        out.flush()
    except BrokenPipeError:
        # The reader stopped (`| head`): no traceback, and no flush at exit to fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), out.fileno())
        sys.exit(1)


@click.command("import")
@click.argument("file", type=click.File("rb"))
@click.option("--strict", is_flag=True, help="Stop at the first line that is not an event.")
@click.pass_obj
def import_command(obj: CommandContext, file: IO[bytes], strict: bool) -> None:
    """Load an export (FILE, or - for stdin) into the configured store; ids present are
    skipped. Exits 1 if any line was refused."""
    import time

    from pulse_relay.transfer import ImportCounts, Refusal, import_lines

    settings = obj.settings()

    async def action(store: StoreBackend) -> ImportCounts:
        counts = ImportCounts()
        async for item in import_lines(store, file, now=time.time(), strict=strict):
            if isinstance(item, Refusal):
                click.echo(f"pulse-relay: line {item.line_number}: {item.reason}", err=True)
            else:
                counts = item
        return counts

    counts = with_store(settings, action, create=True)
    click.echo(summary(counts, stopped=strict and counts.refused > 0))
    if counts.refused:
        sys.exit(1)


def summary(counts: ImportCounts, *, stopped: bool) -> str:
    """The last line of an import."""
    line = (
        f"imported {counts.imported}, skipped {counts.skipped} (already present), "
        f"refused {counts.refused}"
    )
    return line + (" (stopped at the first refused line: --strict)" if stopped else "")
