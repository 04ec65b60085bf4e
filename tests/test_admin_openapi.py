"""schemathesis against the served /api/openapi.json of a real `serve`: no 5xx, every answer
matches its schema. Bounded: a few dozen examples per operation."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

from pulse_relay.admin.openapi import openapi_document
from tests.helpers import Served, free_port, make_body, signed, write_config

TOKEN = "schemathesis-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
EXAMPLES_PER_OPERATION = 25


def post(url: str, body: bytes, headers: dict[str, str]) -> int:
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    with urllib.request.urlopen(request, timeout=10) as answer:
        return int(answer.status)


@pytest.fixture(scope="module")
def admin_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real `serve` with a token, a file sink and a few stored events; its admin URL."""
    tmp_path = tmp_path_factory.mktemp("schemathesis")
    port, admin_port = free_port(), free_port()
    config = write_config(tmp_path, port, admin_port=admin_port)
    config.write_text(
        config.read_text().replace(
            f"port = {admin_port}", f'port = {admin_port}\ntoken = "{TOKEN}"'
        )
        + "[pulse]\nfetch_on = []\n"
    )
    served = Served(config, tmp_path / "serve.log")
    try:
        served.wait_listening(admin_port)
        for n, event_type in enumerate(("job.completed", "job.failed", "job.created")):
            body = make_body(event_type, job_id=f"job-{n}")
            headers = signed(body, webhook_id=f"msg_seed_{n}")
            assert post(f"http://127.0.0.1:{port}/webhooks/pulse", body, headers) == 202
        yield f"http://127.0.0.1:{admin_port}"
    finally:
        assert served.terminate() == 0, served.log()
        assert "admin request failed" not in served.log(), served.log()


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_every_answer_matches_the_document(admin_url: str, mode: GenerationMode) -> None:
    api = schemathesis.openapi.from_url(admin_url + "/api/openapi.json", headers=AUTH)
    # The stream never ends; tests/test_admin_stream.py covers it.
    operations = [result.ok() for result in api.exclude(path="/api/stream").get_all_operations()]
    assert {operation.label for operation in operations} >= {
        "GET /api/events",
        "GET /api/events/{event_id}",
        "GET /api/export",
        "POST /api/events/{event_id}/replay",
        "POST /api/replay",
        "GET /api/watches",
        "POST /api/watches",
        "DELETE /api/watches/{job_id}",
        "POST /api/send-test",
        "GET /api/stats",
        "GET /readyz",
    }
    exercised: set[str] = set()
    for operation in operations:

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(
            max_examples=EXAMPLES_PER_OPERATION,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def check(case: schemathesis.Case) -> None:
            case.call_and_validate(
                headers=AUTH, checks=[not_a_server_error, response_schema_conformance], timeout=10
            )

        try:
            check()
        except Unsatisfiable:
            # Negative mode: nothing of this operation's input can be made invalid.
            assert mode == GenerationMode.NEGATIVE, operation.label
            continue
        exercised.add(operation.label)
    if mode == GenerationMode.NEGATIVE:
        assert {"GET /api/events", "POST /api/watches", "POST /api/send-test"} <= exercised
    else:
        assert exercised == {operation.label for operation in operations}


def test_the_served_document_is_the_declared_one(admin_url: str) -> None:
    request = urllib.request.Request(admin_url + "/api/openapi.json", headers=AUTH)
    with urllib.request.urlopen(request, timeout=10) as answer:
        served = json.load(answer)
    assert served["openapi"] == "3.1.0"
    assert served == json.loads(json.dumps(openapi_document(served["info"]["version"])))
    documented = {(path, method) for path, item in served["paths"].items() for method in item}
    assert ("/api/events/{event_id}/replay", "post") in documented
    assert len(documented) == 15
