"""What the relay leaves on disk and hands on, probed for real (bench/chaos/at_rest.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.chaos.at_rest import WITHHELD, run_at_rest


@pytest.mark.timeout(300)
def test_files_links_environment_types_replays_and_output_hold_up(tmp_path: Path) -> None:
    figures = run_at_rest(tmp_path / "at-rest", race_writes=200)
    assert figures.problems == []
    assert figures.modes == {
        "store, WAL, SHM": ["0600"],
        "sink files": ["0600"],
        "directories the relay created": ["0700"],
    }
    assert figures.race_writes == 800
    assert figures.race_outside == 0
    assert sum(figures.race_outcomes.values()) == 800
    assert all(answer.startswith("PermanentSinkError") for answer in figures.hard_link.values())
    assert not set(WITHHELD) & set(figures.env_seen)
    assert "PULSE_EVENT_ID" in figures.env_seen
    assert (figures.huge_type_answer, figures.huge_type_command_runs) == ("200 invalid", 0)
    assert figures.longest_log_line_bytes < 4096
    assert figures.replay_after_prune == {
        "standard": "3 pruned; 200 duplicate x1",
        "hmac-sha256-hex": "2 pruned; 200 duplicate x2",
    }
    assert figures.raw_controls_printed == 0
    assert figures.lone_surrogate_type_answers == {"200 invalid": 1, "202 accepted": 39}
    assert figures.lone_surrogate_field_sent == "U+FFFD"

    assert figures.hex_new_id == ["200 duplicate x2", "200 duplicate x2"]
    assert figures.hex_stale_timestamp == "401 unauthorized"
    assert (figures.url_secrets_printed, figures.base_url_warned) == (0, True)
    assert figures.named_secrets_printed == 0
    assert figures.mode_warned == ["config file", "TLS key"]
