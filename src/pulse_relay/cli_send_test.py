"""`pulse-relay send-test`: sign a test event and POST it to the relay (docs/cli.md).

Kept apart from `cli.py`, which parses the arguments, so `--help` stays light.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import aiohttp
import click

from pulse_relay.cli_context import fail
from pulse_relay.ingress.ed25519 import decode_private_key
from pulse_relay.testevent import build_test_event, post_test_event

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from pulse_relay.config import Settings


def send_test(
    settings: Settings,
    *,
    url: str | None,
    event_type: str,
    job_id: str | None,
    secret: str | None,
    private_key_file: Path | None,
) -> None:
    """POST a signed test event to `url` (default: this configuration's own endpoint), print
    the answer, and exit 1 unless it is 2xx."""
    target = url or _own_url(settings)
    private_key = None if private_key_file is None else read_private_key(private_key_file)
    try:
        event = build_test_event(
            settings, event_type=event_type, job_id=job_id, secret=secret, private_key=private_key
        )
    except ValueError as error:
        # With a key given, what is wrong is the scheme, which no option mends.
        hint = "" if private_key is not None else "; give --secret or --private-key-file"
        fail(f"{error}{hint}")
    try:
        status, answer = asyncio.run(post_test_event(target, event, is_own_listener=url is None))
    except (aiohttp.ClientError, OSError, TimeoutError) as error:
        fail(f"cannot reach {target}: {error or type(error).__name__} (is serve running?)")
    click.echo(f"{status} {answer}")
    if not 200 <= status < 300:
        sys.exit(1)


def read_private_key(path: Path) -> Ed25519PrivateKey:
    """The `whsk_` key held in the file at `path`; exits naming the file when it cannot."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        fail(f"--private-key-file: cannot read {path}: {error.strerror or error}")
    except UnicodeDecodeError:
        fail(f"--private-key-file: {path} is not UTF-8 text")
    try:
        return decode_private_key(text)
    except ValueError as error:
        # The message never quotes the key.
        fail(f"--private-key-file: {path}: {error}")


def _own_url(settings: Settings) -> str:
    from pulse_relay.wiring import ingress_url

    return ingress_url(settings) + settings.server.path
