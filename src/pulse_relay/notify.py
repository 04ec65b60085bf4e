"""systemd's notification protocol (sd_notify), written by hand: one datagram per message.

`NOTIFY_SOCKET` names a unix datagram socket (a path, or an abstract name
starting with "@"); each message is newline-separated `KEY=VALUE` lines. Without
`NOTIFY_SOCKET` (not started by systemd with `Type=notify`) every call is a no-op.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Awaitable, Callable, Mapping

from pulse_relay.logs import get_logger

log = get_logger("pulse_relay.notify")

ENV_NOTIFY_SOCKET = "NOTIFY_SOCKET"
ENV_WATCHDOG_USEC = "WATCHDOG_USEC"
ENV_WATCHDOG_PID = "WATCHDOG_PID"


class Notifier:
    """Sends sd_notify messages to the service manager, if there is one."""

    def __init__(self, address: str | None) -> None:
        self._address: str | None = None
        if address and (address.startswith("/") or address.startswith("@")):
            # An abstract socket name is written with "@" and sent with a leading NUL.
            self._address = "\0" + address[1:] if address.startswith("@") else address

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> Notifier:
        """A notifier for `$NOTIFY_SOCKET` (a no-op one when it is unset)."""
        env = os.environ if environ is None else environ
        return cls(env.get(ENV_NOTIFY_SOCKET))

    @property
    def is_enabled(self) -> bool:
        """True when a service manager listens."""
        return self._address is not None

    def send(self, **fields: str | int) -> bool:
        """Send one message; True if it was sent. Failures are logged, never raised."""
        if self._address is None:
            return False
        message = "\n".join(f"{key.upper()}={value}" for key, value in fields.items())
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto(message.encode(), self._address)
        except OSError as error:
            log.warning("sd_notify failed", error=str(error))
            return False
        return True

    def ready(self, status: str = "ready") -> bool:
        """READY=1: start-up is complete."""
        return self.send(ready=1, status=status)

    def reloading(self) -> bool:
        """RELOADING=1 with the monotonic timestamp systemd expects alongside it."""
        return self.send(
            reloading=1, monotonic_usec=time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        )

    def stopping(self, status: str = "stopping") -> bool:
        """STOPPING=1: shutdown has begun."""
        return self.send(stopping=1, status=status)

    def watchdog(self) -> bool:
        """WATCHDOG=1: the service is alive."""
        return self.send(watchdog=1)


def watchdog_interval_seconds(environ: Mapping[str, str] | None = None) -> float | None:
    """Seconds between two WATCHDOG=1 pings (half of `$WATCHDOG_USEC`); None when not asked.

    `$WATCHDOG_PID`, when set, must be this process: a child that inherited the
    variables must not keep its parent alive.
    """
    env = os.environ if environ is None else environ
    usec = env.get(ENV_WATCHDOG_USEC, "")
    pid = env.get(ENV_WATCHDOG_PID, "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    if pid and (not pid.isdigit() or int(pid) != os.getpid()):
        return None
    return int(usec) / 1_000_000 / 2


LivenessCheck = Callable[[], Awaitable[list[str]]]


async def run_watchdog(
    notifier: Notifier, *, interval_seconds: float, check: LivenessCheck
) -> None:
    """Ping WATCHDOG=1 every `interval_seconds`, but only after `check` finds nothing wrong.

    The ping is earned, not scheduled: `check` runs on the event loop and goes
    through the store's writer, so a blocked loop or a stuck store stops the
    pings and systemd restarts the service.
    """
    while True:
        problems = await check()
        if problems:
            log.error("watchdog withheld: relay not alive", reasons=problems)
        else:
            notifier.watchdog()
        await asyncio.sleep(interval_seconds)
