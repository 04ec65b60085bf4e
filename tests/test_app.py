"""The composition root's pure parts: routing events to sinks, choosing the verifier."""

from __future__ import annotations

from pulse_relay.app import build_router, build_verifier
from pulse_relay.signature import HexHmacVerifier, NoneVerifier, StandardVerifier
from tests.conftest import SECRET, MakeSettings


def test_events_are_routed_by_each_enabled_sinks_globs(make_settings: MakeSettings) -> None:
    settings = make_settings(
        sinks=[
            {"type": "file", "name": "all-jobs", "directory": "out"},
            {"type": "file", "name": "done", "directory": "out", "events": ["job.completed"]},
            {"type": "file", "name": "credits", "directory": "out", "events": ["credits.*"]},
            {"type": "file", "name": "off", "directory": "out", "enabled": False},
        ]
    )
    route = build_router(settings)
    assert route("job.completed") == ["all-jobs", "done"]
    assert route("job.failed") == ["all-jobs"]
    assert route("credits.low_balance") == ["credits"]
    assert route("Job.completed") == []


def test_the_verifier_follows_the_scheme_and_no_secret_means_polling_only(
    make_settings: MakeSettings,
) -> None:
    assert isinstance(build_verifier(make_settings()), StandardVerifier)
    assert build_verifier(make_settings(verify={"secrets": []})) is None
    assert isinstance(build_verifier(make_settings(verify={"scheme": "none"})), NoneVerifier)
    hex_settings = make_settings(verify={"scheme": "hmac-sha256-hex", "secrets": [SECRET]})
    assert isinstance(build_verifier(hex_settings), HexHmacVerifier)
