"""The scenarios by name, in the report's order. Each returns a JSON-able dict: rows for
the table plus raw figures."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bench import pg_scenarios
from bench.cli_scenarios import cli_start
from bench.delivery_scenarios import command_path, end_to_end, fan_out
from bench.ingest_scenarios import ingest
from bench.measure import Sizes
from bench.store_scenarios import memory, scale

SCENARIOS: dict[str, Callable[[Sizes], dict[str, Any]]] = {
    "ingest": ingest,
    "e2e": end_to_end,
    "fanout": fan_out,
    "memory": memory,
    "scale": scale,
    "command": command_path,
    "cli": cli_start,
    **pg_scenarios.SCENARIOS,
}
