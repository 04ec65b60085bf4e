"""The reliability suite: the crash, fault and hostile-input runs of bench/chaos/, small.

The long version, which writes RELIABILITY.md, is `python -m bench.chaos`.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from bench.chaos.hostile import SyncRelay
from tests.helpers import HOSTILE_READ_TIMEOUT_SECONDS


@pytest.fixture(scope="module")
def hostile_relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SyncRelay]:
    """One `pulse-relay serve` subprocess shared by a module's hostile-input tests."""
    relay = SyncRelay(tmp_path_factory.mktemp("hostile"), read_timeout=HOSTILE_READ_TIMEOUT_SECONDS)
    try:
        yield relay
    finally:
        relay.stop()
