"""The reference in docs/ keeps up with the code: every configuration key, command,
option and metric the code has is documented (the pages may run ahead of the code,
never behind it)."""

from __future__ import annotations

import re
from pathlib import Path

import click
import pytest
from prometheus_client.metrics import MetricWrapperBase

from pulse_relay.cli import cli
from pulse_relay.metrics import Metrics
from tests.helpers import settings_keys

DOCS = Path(__file__).resolve().parent.parent / "docs"
REPO = DOCS.parent
PAGES = (
    "README.md",
    "ingress.md",
    "envelope.md",
    "configuration.md",
    "cli.md",
    "api.md",
    "metrics.md",
)


def page(name: str) -> str:
    return (DOCS / name).read_text(encoding="utf-8")


# --- configuration.md ------------------------------------------------------------------------


def documented_key(key: str) -> str:
    """How configuration.md writes a key: `server.port`, and a sink's as `sinks[].url`."""
    section, _, rest = key.partition(".")
    return f"`sinks[].{rest}`" if section == "sinks" else f"`{key}`"


@pytest.mark.parametrize("key", settings_keys())
def test_every_setting_is_in_configuration_page(key: str) -> None:
    # A table row starts with the key: a mention in another key's prose does not count.
    rows = [line for line in page("configuration.md").splitlines() if line.startswith("| `")]
    assert any(row.startswith(f"| {documented_key(key)} |") for row in rows), (
        f"{key} is not documented in docs/configuration.md"
    )


def test_every_environment_variable_named_is_the_keys_own() -> None:
    """The environment column follows one rule for every key: PULSE_RELAY_<SECTION>__<KEY>."""
    text = page("configuration.md")
    rows = re.findall(r"^\| `([a-z_]+)\.([a-z_]+)` \|.*?\| `(PULSE_RELAY_[A-Z_]+)`", text, re.M)
    assert len(rows) > 40
    for section, name, variable in rows:
        assert variable == f"PULSE_RELAY_{section.upper()}__{name.upper()}"


# --- cli.md ----------------------------------------------------------------------------------


def command_sections() -> dict[str, str]:
    """cli.md's text under each `### \\`command\\`` heading, by command name."""
    parts = re.split(r"^### `([a-z-]+)`$", page("cli.md"), flags=re.M)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def mentions(text: str, option: str) -> bool:
    """Whether `text` shows `option` as code, alone or with its value (`--config PATH`)."""
    return re.search(rf"`{re.escape(option)}[` ]", text) is not None


def test_cli_page_has_a_section_per_command_and_no_other() -> None:
    assert set(command_sections()) == set(cli.commands)


@pytest.mark.parametrize("name", sorted(cli.commands))
def test_every_option_of_a_command_is_in_its_section(name: str) -> None:
    section = command_sections().get(name, "")
    for param in cli.commands[name].params:
        if isinstance(param, click.Option):
            for option in [*param.opts, *param.secondary_opts]:
                assert mentions(section, option), f"{name} {option} is not in docs/cli.md"


def test_every_global_option_is_on_the_cli_page() -> None:
    head = page("cli.md").partition("## Commands")[0]
    options = [o for p in cli.params if isinstance(p, click.Option) for o in p.opts]
    options += cli.context_settings["help_option_names"]
    for option in options:
        assert mentions(head, option), f"{option} is not in docs/cli.md"


# --- metrics.md ------------------------------------------------------------------------------


def exported_metrics() -> dict[str, tuple[str, ...]]:
    """Every metric's exposed name (counters with `_total`) and its label names."""
    metrics = Metrics()
    exported: dict[str, tuple[str, ...]] = {}
    for metric in vars(metrics).values():
        if isinstance(metric, MetricWrapperBase):
            (family,) = metric.describe()
            name = family.name + ("_total" if family.type == "counter" else "")
            exported[name] = tuple(metric._labelnames)
    return exported


def test_the_metrics_walk_finds_every_registered_family() -> None:
    registered = {family.name for family in Metrics().registry.collect()}
    assert {name.removesuffix("_total") for name in exported_metrics()} == registered


@pytest.mark.parametrize("name", sorted(exported_metrics()))
def test_every_metric_is_in_metrics_page_with_its_labels(name: str) -> None:
    rows = [line for line in page("metrics.md").splitlines() if line.startswith(f"| `{name}` |")]
    assert len(rows) == 1, f"{name} has no row of its own in docs/metrics.md"
    label_cell = rows[0].split("|")[3]
    documented = set(re.findall(r"`([a-z_]+)`", label_cell))
    assert documented == set(exported_metrics()[name]), name


# --- every page ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", PAGES)
def test_links_between_pages_resolve(name: str) -> None:
    for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", page(name)):
        assert (DOCS / target).resolve().exists(), f"{name} links to missing {target}"


def test_every_docs_page_cited_in_the_code_exists() -> None:
    cited: set[str] = set()
    for folder in ("src", "tests", "bench"):
        for path in (REPO / folder).rglob("*.py"):
            cited |= set(re.findall(r"docs/([a-z_-]+\.md)", path.read_text(encoding="utf-8")))
    assert cited, "no citation found: the pattern is wrong"
    assert cited <= set(PAGES), cited - set(PAGES)
