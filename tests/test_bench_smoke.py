"""The benchmark suite runs: a tiny end-to-end scenario and the report. No timing is checked."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if not (ROOT / "bench" / "scenarios.py").exists():
    pytest.skip("bench/ is not in this checkout", allow_module_level=True)
sys.path.insert(0, str(ROOT))

from bench import report, scenarios  # noqa: E402


@pytest.mark.skipif(sys.platform != "linux", reason="the bench watches renames with inotify")
def test_end_to_end_scenario_runs_and_the_report_renders(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sizes = dataclasses.replace(scenarios.Sizes.quick(), e2e_events=20, e2e_rate=50.0)
    result = scenarios.end_to_end(sizes)
    assert result["files"] == 20
    assert [row["scenario"] for row in result["rows"]] == ["end-to-end"]

    monkeypatch.setattr(report, "RESULTS_DIR", tmp_path / "results")
    report.save("e2e", result, command="pytest")
    output = tmp_path / "BENCHMARKS.md"
    report.write(output)
    text = output.read_text()
    assert "| end-to-end |" in text
    others = [name for name in report.ORDER if name != "e2e"]
    assert f"Not run yet: {', '.join(others)}." in text


def test_the_fan_out_floor_fetches_every_job_and_feeds_every_sink(tmp_path: Path) -> None:
    from bench import common

    emulator, base_url = common.emulator_process(tmp_path, "fan-", 12)
    receiver, http_port = common.baseline_process(tmp_path)
    with emulator, receiver:
        floor = scenarios._fanout_floor(tmp_path, base_url, http_port, 12)
    assert floor > 0
    # One renamed file per event, no temporary file left behind.
    assert sorted(p.name for p in (tmp_path / "floor").iterdir()) == sorted(
        f"{n}.json" for n in range(12)
    )
    written = json.loads((tmp_path / "floor" / "7.json").read_bytes())
    assert written["job"]["job_id"] == "fan-7"
