"""The control API on a real port: every endpoint, its filters, and its answers to bad input."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import pytest

from pulse_relay import __version__
from pulse_relay.app import Relay
from tests.helpers import StartRelay, call, make_body, signed, wait_for
from tests.rawhttp import close, read_answer, request_bytes

DEAD_SINK = {
    "type": "http",
    "name": "down",
    "url": "http://127.0.0.1:9/",
    "max_attempts": 1,
    "events": ["job.failed"],
}


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest) -> str:
    """Every endpoint runs once per store backend."""
    return str(request.param)


@pytest.fixture
def store(backend: str, request: pytest.FixtureRequest) -> dict[str, str]:
    """The relay's store section for `backend`."""
    return {"url": request.getfixturevalue("postgres_url")} if backend == "postgresql" else {}


@pytest.fixture
async def relay(store: dict[str, str], start_relay: StartRelay, tmp_path: Path) -> Relay:
    """A relay with a file sink for every job event and a dead-end HTTP sink for job.failed,
    its store on `backend`. The store comes first: its database outlives the relay."""
    return await start_relay(
        sinks=[{"type": "file", "name": "files", "directory": str(tmp_path / "out")}, DEAD_SINK],
        pulse={"fetch_on": []},
        store=store,
    )


async def post_webhook(relay: Relay, webhook_id: str, **body: Any) -> None:
    payload = make_body(**body)
    headers = signed(payload, webhook_id=webhook_id)
    status, _ = await call("POST", relay.webhook_url, data=payload, headers=headers)
    assert status == 202


async def settled(relay: Relay, *event_ids: str) -> None:
    """Wait until no delivery of these events is pending."""

    async def done() -> bool:
        views = [await relay.store.get_event(event_id) for event_id in event_ids]
        return all(
            v is not None and all(d.state != "pending" for d in v.deliveries.values())
            for v in views
        )

    await wait_for(done)


def api(relay: Relay, path: str) -> str:
    return relay.admin_url + "/api" + path


async def test_listing_filters_and_cursor_paging(relay: Relay) -> None:
    await post_webhook(relay, "msg_1", event_type="job.completed", job_id="job-a")
    await post_webhook(relay, "msg_2", event_type="job.failed", job_id="job-b", note="needle")
    await post_webhook(relay, "msg_3", event_type="job.created", job_id="job-a")
    await settled(relay, "msg_1", "msg_2", "msg_3")

    async def ids(query: str) -> list[str]:
        status, body = await call("GET", api(relay, "/events?" + query))
        assert status == 200, body
        return [item["id"] for item in body["events"]]

    assert await ids("") == ["msg_3", "msg_2", "msg_1"]
    assert await ids("type=job.failed") == ["msg_2"]
    assert await ids("job_id=job-a") == ["msg_3", "msg_1"]
    assert await ids("source=webhook") == ["msg_3", "msg_2", "msg_1"]
    assert await ids("source=poll") == []
    assert await ids("q=NEEDLE") == ["msg_2"]
    assert await ids("q=%25") == []  # LIKE wildcards are literal
    assert await ids("state=dead") == ["msg_2"]
    assert await ids("state=dead&sink=files") == []
    assert await ids("sink=down") == ["msg_2"]
    assert await ids("state=accepted&limit=1") == ["msg_3"]

    seen: list[str] = []
    cursor = ""
    while True:
        status, page = await call("GET", api(relay, f"/events?limit=2{cursor}"))
        assert status == 200 and len(page["events"]) <= 2
        seen += [item["id"] for item in page["events"]]
        if page["next"] is None:
            break
        cursor = "&before=" + page["next"]
    assert seen == ["msg_3", "msg_2", "msg_1"]


async def test_list_items_are_what_events_json_prints(relay: Relay) -> None:
    from pulse_relay.serialize import event_document

    await post_webhook(relay, "msg_doc")
    await settled(relay, "msg_doc")
    _, body = await call("GET", api(relay, "/events"))
    (view,) = await relay.store.list_events()
    assert body["events"] == [event_document(view)]


async def test_one_event_has_headers_payload_envelopes_and_attempts(relay: Relay) -> None:
    event_id = "msg_odd/id?%#"
    await post_webhook(relay, event_id, job_id="job-e")
    await settled(relay, event_id)
    status, event = await call("GET", api(relay, "/events/" + quote(event_id, safe="")))
    assert status == 200, event
    assert event["id"] == event_id
    assert event["headers"]["webhook-id"] == event_id
    assert event["payload"]["data"]["job_id"] == "job-e"
    envelope = event["envelopes"]["files"]
    assert (envelope["id"], envelope["job_id"], envelope["source"]) == (
        event_id,
        "job-e",
        "webhook",
    )
    assert envelope["event"] == event["payload"]
    (attempt,) = event["attempts"]
    assert (attempt["sink"], attempt["outcome"], attempt["attempt"]) == ("files", "delivered", 1)


async def test_events_holding_lone_surrogates_are_answered_with_replacements(
    relay: Relay,
) -> None:
    # `\ud800` escapes in a payload field and in a type; a header that is not UTF-8 is
    # kept as a lone surrogate. The file sink delivers the first; the second is invalid.
    port = urlsplit(relay.webhook_url).port
    for event_id, body, status in [
        ("msg_field", b'{"type": "job.completed", "data": {"job_id": "j", "n": "\\ud800"}}', 202),
        ("msg_type", b'{"type": "job.\\udfff", "data": {"job_id": "j"}}', 200),
    ]:
        headers = {**signed(body, webhook_id=event_id), "User-Agent": "caf\xe9"}
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(request_bytes(body, headers))
        assert (await read_answer(reader)).status == status
        await close(writer)
    await settled(relay, "msg_field")

    status, event = await call("GET", api(relay, "/events/msg_field"))
    assert status == 200, event
    assert event["headers"]["user-agent"] == "caf\ufffd"
    assert event["payload"]["data"]["n"] == "\ufffd"
    assert event["envelopes"]["files"]["event"]["data"]["n"] == "\ufffd"
    assert event["deliveries"]["files"]["state"] == "delivered"
    status, event = await call("GET", api(relay, "/events/msg_type"))
    assert status == 200, event
    assert (event["state"], event["type"], event["payload"]["type"]) == (
        "invalid",
        None,
        "job.\ufffd",
    )


async def test_replay_one_makes_a_new_attempt(relay: Relay) -> None:
    await post_webhook(relay, "msg_r", job_id="job-r")
    await settled(relay, "msg_r")
    status, answer = await call("POST", api(relay, "/events/msg_r/replay"), json_body={})
    assert status == 403  # neither the token nor the X-Pulse-Relay header
    headers = {"X-Pulse-Relay": "1"}
    status, answer = await call(
        "POST", api(relay, "/events/msg_r/replay"), headers=headers, json_body={"sinks": ["files"]}
    )
    assert (status, answer["queued"], answer["sinks"]) == (202, 1, ["files"])

    async def two_attempts() -> bool:
        view = await relay.store.get_event("msg_r")
        return (
            view is not None
            and len(view.attempts) == 2
            and view.deliveries["files"].state != "pending"
        )

    await wait_for(two_attempts)
    _, event = await call("GET", api(relay, "/events/msg_r"))
    assert event["envelopes"]["files"]["source"] == "replay"


async def test_replay_one_refuses_what_cannot_be_replayed(relay: Relay) -> None:
    headers = {"X-Pulse-Relay": "1"}
    await post_webhook(relay, "msg_ok")
    await settled(relay, "msg_ok")
    status, body = await call(
        "POST", api(relay, "/events/msg_ok/replay"), headers=headers, json_body={"sinks": ["nope"]}
    )
    assert status == 400 and body["detail"].startswith("sinks:")
    for bad in ({"sinks": []}, {"sinks": "files"}, {"sinks": [1]}):
        status, body = await call(
            "POST", api(relay, "/events/msg_ok/replay"), headers=headers, json_body=bad
        )
        assert status == 400 and body["detail"].startswith("sinks:"), bad
    status, body = await call(
        "POST", api(relay, "/events/msg_ok/replay"), headers=headers, data=b"{not json"
    )
    assert status == 400 and body["detail"].startswith("body:")
    status, body = await call("POST", api(relay, "/events/msg_nope/replay"), headers=headers)
    assert status == 404 and body["error"] == "not_found"
    # An invalid event has no delivery to replay.
    payload = b"[1, 2]"
    await call("POST", relay.webhook_url, data=payload, headers=signed(payload, webhook_id="m_inv"))
    status, body = await call("POST", api(relay, "/events/m_inv/replay"), headers=headers)
    assert status == 409 and "no delivery" in body["detail"]
    # A pruned event is remembered as such.
    assert await relay.store.prune(received_before=time.time() + 60) == 2
    status, body = await call("POST", api(relay, "/events/msg_ok/replay"), headers=headers)
    assert status == 409 and "pruned" in body["detail"]
    status, body = await call("GET", api(relay, "/events/msg_ok"))
    assert status == 404 and "pruned" in body["detail"]


async def test_replay_matching_queues_every_dead_delivery(relay: Relay) -> None:
    headers = {"X-Pulse-Relay": "1"}
    await post_webhook(relay, "msg_d1", event_type="job.failed", job_id="job-d1")
    await post_webhook(relay, "msg_d2", event_type="job.failed", job_id="job-d2")
    await settled(relay, "msg_d1", "msg_d2")
    status, answer = await call(
        "POST", api(relay, "/replay"), headers=headers, json_body={"state": "dead", "sink": "down"}
    )
    assert (status, answer["queued"]) == (202, 2)
    await settled(relay, "msg_d1", "msg_d2")
    status, answer = await call("POST", api(relay, "/replay"), headers=headers)
    assert (status, answer["queued"]) == (202, 2)  # state defaults to dead
    for bad, param in (({"state": "delivered"}, "state"), ({"sink": "nope"}, "sink")):
        status, body = await call("POST", api(relay, "/replay"), headers=headers, json_body=bad)
        assert status == 400 and body["detail"].startswith(param + ":"), bad


async def test_watches_are_added_listed_and_removed(relay: Relay) -> None:
    headers = {"X-Pulse-Relay": "1"}
    status, watch = await call(
        "POST",
        api(relay, "/watches"),
        headers=headers,
        json_body={"job_id": "job-w", "metadata": {"user": "u-1", "n": 2}},
    )
    assert status == 201, watch
    assert (watch["job_id"], watch["state"], watch["origin"]) == ("job-w", "active", "api")
    assert watch["metadata"] == {"user": "u-1", "n": 2}
    status, listing = await call("GET", api(relay, "/watches"))
    assert status == 200 and [w["job_id"] for w in listing["watches"]] == ["job-w"]
    for bad, param in (
        ({"job_id": "../etc"}, "job_id"),
        ({"job_id": 7}, "job_id"),
        ({}, "job_id"),
        ({"job_id": "job-x", "metadata": ["a"]}, "metadata"),
    ):
        status, body = await call("POST", api(relay, "/watches"), headers=headers, json_body=bad)
        assert status == 400 and body["detail"].startswith(param + ":"), bad
    status, _ = await call("DELETE", api(relay, "/watches/job-w"), headers=headers)
    assert status == 204
    status, body = await call("DELETE", api(relay, "/watches/job-w"), headers=headers)
    assert status == 404 and body["error"] == "not_found"
    status, body = await call("DELETE", api(relay, "/watches/bad%20id"), headers=headers)
    assert status == 400 and body["detail"].startswith("job_id:")


async def test_send_test_goes_through_the_real_ingress(relay: Relay) -> None:
    status, answer = await call(
        "POST",
        api(relay, "/send-test"),
        headers={"X-Pulse-Relay": "1"},
        json_body={"type": "job.completed", "job_id": "job-t"},
    )
    assert status == 202, answer
    assert answer["status"] == 202 and answer["answer"]["status"] == "accepted"
    _, listing = await call("GET", api(relay, "/events?job_id=job-t"))
    assert [item["id"] for item in listing["events"]] == [answer["id"]]
    status, body = await call(
        "POST",
        api(relay, "/send-test"),
        headers={"X-Pulse-Relay": "1"},
        json_body={"job_id": "a b"},
    )
    assert status == 400 and body["detail"].startswith("job_id:")


async def test_send_test_in_polling_only_mode_is_a_conflict(start_relay: StartRelay) -> None:
    relay = await start_relay(verify={"secrets": []})
    status, body = await call("POST", api(relay, "/send-test"), headers={"X-Pulse-Relay": "1"})
    assert status == 409 and "polling-only" in body["detail"]


async def test_stats_count_states_and_the_backlog(relay: Relay, backend: str) -> None:
    await post_webhook(relay, "msg_s1")
    await post_webhook(relay, "msg_s2", event_type="job.failed")
    await settled(relay, "msg_s1", "msg_s2")
    status, stats = await call("GET", api(relay, "/stats"))
    assert status == 200
    assert stats["events"] == {"accepted": 2, "invalid": 0, "repeat": 0}
    assert stats["deliveries"] == {"pending": 0, "delivered": 2, "dead": 1}
    assert stats["pending"] == {"down": 0, "files": 0}
    assert stats["oldest_pending_seconds"] is None
    assert stats["version"] == __version__
    assert stats["store_backend"] == backend


async def test_bad_filters_name_the_parameter(relay: Relay) -> None:
    for query, param in (
        ("limit=0", "limit"),
        ("limit=501", "limit"),
        ("limit=ten", "limit"),
        ("state=lost", "state"),
        ("source=carrier-pigeon", "source"),
        ("before=bm90IGEgY3Vyc29y", "before"),
        ("before=%%%", "before"),
        ("q=" + "x" * 300, "q"),
    ):
        status, body = await call("GET", api(relay, "/events?" + query))
        assert status == 400, query
        assert (body["error"], body["detail"].split(":")[0]) == ("bad_request", param), body


async def test_watch_metadata_with_a_lone_surrogate_is_listed_with_a_replacement(
    relay: Relay,
) -> None:
    headers = {"X-Pulse-Relay": "1", "Content-Type": "application/json"}
    body = b'{"job_id": "job-w", "metadata": {"note": "caf\\udfff"}}'
    status, answer = await call("POST", api(relay, "/watches"), headers=headers, data=body)
    assert status == 201, answer
    status, answer = await call("GET", api(relay, "/watches"))
    assert status == 200, answer
    assert [w["metadata"] for w in answer["watches"]] == [{"note": "caf\ufffd"}]
    status, page = await call("GET", relay.admin_url + "/watches")
    assert status == 200, page
    assert "caf\ufffd" in page


async def test_unknown_routes_and_methods_answer_json(relay: Relay) -> None:
    status, body = await call("GET", api(relay, "/nowhere"))
    assert (status, body["error"]) == (404, "not_found")
    status, body = await call("PUT", api(relay, "/watches"), headers={"X-Pulse-Relay": "1"})
    assert status == 405 and set(body) == {"error", "detail"}
    status, body = await call("GET", api(relay, "/events/msg_nope"))
    assert (status, body["error"]) == (404, "not_found") and "msg_nope" in body["detail"]


async def test_a_closed_store_answers_503(relay: Relay) -> None:
    # Nothing else may read the store behind the test's back once it is closed.
    assert relay.dispatcher is not None and relay.poller is not None
    await relay.dispatcher.stop(grace_seconds=0)
    await relay.poller.stop()
    await relay.store.close()
    for path in ("/events", "/events/x", "/stats", "/watches"):
        status, body = await call("GET", api(relay, path))
        assert (status, body["error"]) == (503, "unavailable"), path


def comparable(document: Any) -> Any:
    """`document` with what differs between two runs masked: times (the signing time in
    the stored headers too: the two runs may fall in different seconds), durations, the
    backend name; attempts in a fixed order (two sinks' attempts race)."""
    if isinstance(document, dict):
        return {
            key: "*"
            if key.endswith("_at")
            or key in ("duration_ms", "store_backend", "webhook-timestamp", "svix-timestamp")
            else comparable(value)
            for key, value in document.items()
        }
    if isinstance(document, list):
        items = [comparable(item) for item in document]
        if all(isinstance(item, dict) and "sink" in item for item in items):
            items.sort(key=lambda item: (str(item["sink"]), str(item.get("attempt"))))
        return items
    return document


async def test_both_backends_answer_the_same_documents(
    postgres_url: str, start_relay: StartRelay, tmp_path: Path
) -> None:
    answers: list[dict[str, Any]] = []
    for name, store in (("sqlite", {}), ("postgresql", {"url": postgres_url})):
        relay = await start_relay(
            sinks=[{"type": "file", "name": "files", "directory": str(tmp_path / name)}, DEAD_SINK],
            pulse={"fetch_on": []},
            store=store,
        )
        for n, event_type in enumerate(("job.completed", "job.failed", "job.created")):
            await post_webhook(relay, f"msg_{n}", event_type=event_type, ratio=1.5, note="é")
        await post_webhook(relay, "msg_repeat", event_type="job.created")
        payload = b"[1, 2]"
        headers = signed(payload, webhook_id="msg_invalid")
        await call("POST", relay.webhook_url, data=payload, headers=headers)
        await settled(relay, "msg_0", "msg_1", "msg_2")
        paths = ("/events", "/events/msg_1", "/events/msg_invalid", "/events?state=repeat")
        answers.append(
            {path: (await call("GET", api(relay, path)))[1] for path in (*paths, "/stats")}
        )
    sqlite, postgresql = (comparable(answer) for answer in answers)
    assert [item["id"] for item in sqlite["/events?state=repeat"]["events"]] == ["msg_repeat"]
    assert len(sqlite["/events/msg_1"]["attempts"]) == 2
    assert postgresql == sqlite


async def test_an_edited_replay_reaches_the_sink_and_is_kept_with_its_attempt(
    relay: Relay, tmp_path: Path
) -> None:
    await post_webhook(relay, "msg_e", job_id="job-e")
    await settled(relay, "msg_e")
    _, before = await call("GET", api(relay, "/events/msg_e"))
    edited = {**before["envelopes"]["files"], "job": {"status": "fixed"}, "note": "caf\ud800"}
    status, answer = await call(
        "POST",
        api(relay, "/events/msg_e/replay"),
        headers={"X-Pulse-Relay": "1"},
        json_body={"sinks": ["files"], "envelope": edited},
    )
    assert (status, answer) == (202, {"id": "msg_e", "queued": 1, "sinks": ["files"]})

    async def replayed() -> bool:
        view = await relay.store.get_event("msg_e")
        return view is not None and len(view.attempts) == 2

    await wait_for(replayed)
    await settled(relay, "msg_e")
    sent = {**edited, "note": "caf\ufffd"}  # lone surrogates are replaced, as always
    (written,) = (tmp_path / "out").iterdir()
    assert json.loads(written.read_bytes()) == sent
    _, event = await call("GET", api(relay, "/events/msg_e"))
    first, second = event["attempts"]
    assert (first["edited"], first["edited_envelope"]) == (False, None)
    assert (second["edited"], second["edited_envelope"]) == (True, sent)
    assert event["envelopes"]["files"] == sent
    # The stored event never changes.
    assert (event["payload"], event["job"]) == (before["payload"], before["job"])


# The test client's own warning about posting a megabyte from memory.
@pytest.mark.filterwarnings("ignore:Sending a large body:ResourceWarning")
async def test_an_edited_envelope_must_be_an_object_of_at_most_one_mebibyte(
    relay: Relay,
) -> None:
    await post_webhook(relay, "msg_b")
    await settled(relay, "msg_b")
    url = api(relay, "/events/msg_b/replay")
    headers = {"X-Pulse-Relay": "1"}
    for bad in ([1], "{}", None, 3):
        status, body = await call("POST", url, headers=headers, json_body={"envelope": bad})
        assert (status, body["error"]) == (400, "bad_request"), bad
        assert body["detail"].startswith("envelope:"), body
    # 1 MiB as the sinks receive it (compact UTF-8 JSON), whatever the request's escapes.
    filler = "é" * ((1024 * 1024 - len('{"x":""}')) // 2)
    status, body = await call("POST", url, headers=headers, json_body={"envelope": {"x": filler}})
    assert status == 202, body
    over = {"x": filler + "ab"}
    status, body = await call("POST", url, headers=headers, json_body={"envelope": over})
    assert status == 400 and body["detail"].startswith("envelope:") and "1 MiB" in body["detail"]
    view = await relay.store.get_event("msg_b")
    assert view is not None and view.deliveries["files"].edited_envelope == {"x": filler}
    # A body the API reads whole: room for any 1 MiB envelope's escapes, and no more.
    huge = b'{"envelope": {"x": "%s"}}' % (b"y" * 4 * 1024 * 1024)
    status, body = await call("POST", url, headers=headers, data=huge)
    assert (status, body["error"]) == (413, "request_entity_too_large")
