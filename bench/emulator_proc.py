"""The Pulse API emulator in its own process, with jobs `{prefix}{n}` for n < count.

Run as `python -m bench.emulator_proc PORT API_KEY PREFIX COUNT`.
"""

from __future__ import annotations

import asyncio
import sys

from pulse_relay.emulator import PulseEmulator


async def _serve(port: int, api_key: str, prefix: str, count: int) -> None:
    emulator = PulseEmulator(api_key=api_key)
    for number in range(count):
        emulator.add_job(f"{prefix}{number}")
    # The emulator records every request for tests; a benchmark sends too many to keep.
    emulator._requests = _Discard()
    await emulator.start("127.0.0.1", port)
    try:
        await asyncio.Event().wait()
    finally:
        await emulator.stop()


class _Discard(list):  # type: ignore[type-arg]
    def append(self, _item: object) -> None:
        return None


def main() -> None:
    port, api_key, prefix, count = sys.argv[1:5]
    asyncio.run(_serve(int(port), api_key, prefix, int(count)))


if __name__ == "__main__":
    main()
