"""Who may use the admin listener: token, login cookie, the CSRF header and the Origin rule."""

from __future__ import annotations

from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from pulse_relay.admin.auth import COOKIE_NAME, AdminAuth, check_request, set_login_cookie
from pulse_relay.admin.errors import Forbidden, Unauthorized
from pulse_relay.app import Relay
from tests.helpers import StartRelay, call

TOKEN = "admin-token-for-tests"
WATCH = {"job_id": "job-auth", "metadata": {"k": "v"}}


@pytest.fixture
async def guarded(start_relay: StartRelay) -> Relay:
    return await start_relay(admin={"token": TOKEN})


@pytest.fixture
async def open_relay(start_relay: StartRelay) -> Relay:
    return await start_relay()


def cookie(relay: Relay) -> str:
    return f"{COOKIE_NAME}={relay.admin_auth.cookie_value()}"


BEARER = {"Authorization": f"Bearer {TOKEN}"}
HEADER = {"X-Pulse-Relay": "1"}


@pytest.mark.parametrize(
    ("name", "headers", "status"),
    [
        ("nothing", {}, 401),
        ("bearer", BEARER, 200),
        ("bearer, lower-case scheme", {"Authorization": f"bearer {TOKEN}"}, 200),
        ("wrong bearer", {"Authorization": "Bearer nope"}, 401),
        ("token without the scheme", {"Authorization": TOKEN}, 401),
        ("the CSRF header is no credential", HEADER, 401),
        ("the raw token as cookie", {"Cookie": f"{COOKIE_NAME}={TOKEN}"}, 401),
    ],
)
async def test_reading_the_api_needs_the_token(
    guarded: Relay, name: str, headers: dict[str, str], status: int
) -> None:
    answer, body = await call("GET", guarded.admin_url + "/api/events", headers=headers)
    assert answer == status, name
    if status == 401:
        assert body["error"] == "unauthorized" and "token" in body["detail"]


async def test_the_login_cookie_reads_but_never_writes_alone(guarded: Relay) -> None:
    url = guarded.admin_url + "/api/watches"
    with_cookie = {"Cookie": cookie(guarded)}
    assert (await call("GET", url, headers=with_cookie))[0] == 200
    status, body = await call("POST", url, headers=with_cookie, json_body=WATCH)
    assert status == 403 and body["error"] == "forbidden" and "X-Pulse-Relay" in body["detail"]
    status, _ = await call("POST", url, headers={**with_cookie, **HEADER}, json_body=WATCH)
    assert status == 201
    # The header without a credential is not enough either.
    assert (await call("POST", url, headers=HEADER, json_body=WATCH))[0] == 401
    assert (await call("POST", url, headers=BEARER, json_body=WATCH))[0] == 201
    delete = guarded.admin_url + "/api/watches/job-auth"
    assert (await call("DELETE", delete, headers=with_cookie))[0] == 403
    assert (await call("DELETE", delete, headers=BEARER))[0] == 204


async def test_a_foreign_origin_is_refused_even_with_the_token(guarded: Relay) -> None:
    url = guarded.admin_url + "/api/watches"
    own = guarded.admin_url
    for origin in ("https://evil.example", "null", own.replace("127.0.0.1", "localhost")):
        headers = {**BEARER, **HEADER, "Origin": origin}
        status, body = await call("POST", url, headers=headers, json_body=WATCH)
        assert (status, body["error"]) == (403, "forbidden"), origin
    status, _ = await call("POST", url, headers={**BEARER, "Origin": own}, json_body=WATCH)
    assert status == 201


async def test_probes_need_nothing(guarded: Relay) -> None:
    for path in ("/healthz", "/readyz", "/metrics"):
        assert (await call("GET", guarded.admin_url + path))[0] == 200, path


async def test_ui_pages_send_the_unauthenticated_to_the_login_form(guarded: Relay) -> None:
    status, _ = await call("GET", guarded.admin_url + "/")
    assert status == 303
    assert (await call("GET", guarded.admin_url + "/", headers={"Cookie": cookie(guarded)}))[
        0
    ] == 200
    assert (await call("GET", guarded.admin_url + "/", headers=BEARER))[0] == 200


async def test_without_a_token_reads_are_open_and_writes_need_the_header(
    open_relay: Relay,
) -> None:
    url = open_relay.admin_url + "/api/watches"
    assert (await call("GET", url))[0] == 200
    assert (await call("GET", open_relay.admin_url + "/"))[0] == 200
    status, body = await call("POST", url, json_body=WATCH)
    assert (status, body["error"]) == (403, "forbidden")
    assert (await call("POST", url, headers=HEADER, json_body=WATCH))[0] == 201
    foreign = {**HEADER, "Origin": "http://attacker.example:8788"}
    assert (await call("POST", url, headers=foreign, json_body=WATCH))[0] == 403
    assert (await call("DELETE", url + "/job-auth"))[0] == 403
    assert (await call("DELETE", url + "/job-auth", headers=HEADER))[0] == 204


def mocked(method: str, path: str, headers: dict[str, str] | None = None) -> web.Request:
    return make_mocked_request(method, path, headers={"Host": "127.0.0.1:8788", **(headers or {})})


def test_pass_through_rules() -> None:
    guarded, open_auth = AdminAuth(TOKEN), AdminAuth("")
    # The caller's own Pulse key: no admin token and no CSRF header needed.
    for auth in (guarded, open_auth):
        check_request(auth, mocked("POST", "/pulse/extract", {"x-api-key": "k"}))
        check_request(auth, mocked("GET", "/pulse/job/j", {"x-api-key": "k"}))
    # It opens the pass-through only.
    for path in ("/api/events", "/api/watches", "/pulse", "/pulsex/job/j"):
        with pytest.raises((Unauthorized, web.HTTPSeeOther)):
            check_request(guarded, mocked("GET", path, {"x-api-key": "k"}))
    # Without it: the token when one is configured (never forwarded), else as any request.
    with pytest.raises(Unauthorized):
        check_request(guarded, mocked("GET", "/pulse/job/j"))
    check_request(open_auth, mocked("GET", "/pulse/job/j"))
    with pytest.raises(Forbidden):
        check_request(open_auth, mocked("POST", "/pulse/extract"))


def test_login_form_post_needs_no_header_but_a_same_origin() -> None:
    auth = AdminAuth(TOKEN)
    check_request(auth, mocked("POST", "/login"))
    check_request(auth, mocked("POST", "/login", {"Origin": "http://127.0.0.1:8788"}))
    with pytest.raises(Forbidden):
        check_request(auth, mocked("POST", "/login", {"Origin": "http://evil.example"}))


def test_behind_a_tls_proxy_the_forwarded_origin_counts() -> None:
    auth = AdminAuth(TOKEN)
    forwarded = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "relay.example"}
    headers = {**forwarded, **HEADER, "Origin": "https://relay.example"}
    check_request(auth, mocked("POST", "/api/watches", {**headers, **BEARER}))
    with pytest.raises(Forbidden):
        check_request(
            auth,
            mocked("POST", "/api/watches", {**HEADER, **BEARER, "Origin": "https://relay.example"}),
        )
    response = web.Response()
    set_login_cookie(response, auth, mocked("POST", "/login", forwarded))
    assert response.cookies[COOKIE_NAME]["secure"]


def test_the_login_cookie_is_http_only_strict_and_not_the_token() -> None:
    auth = AdminAuth(TOKEN)
    response = web.Response()
    set_login_cookie(response, auth, mocked("POST", "/login"))
    morsel = response.cookies[COOKIE_NAME]
    assert morsel.value == auth.cookie_value() and TOKEN not in morsel.value
    assert morsel["httponly"] and morsel["samesite"] == "Strict" and morsel["path"] == "/"
    # Per process: another relay's cookie is worthless here.
    assert AdminAuth(TOKEN).cookie_value() != auth.cookie_value()
    assert auth.is_token(TOKEN) and not auth.is_token(TOKEN + "x")
    assert not AdminAuth("").is_token("")


def test_token_from_a_file_and_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pulse_relay.config import load_settings
    from pulse_relay.redaction import redacted_settings

    token_file = tmp_path / "admin-token"
    token_file.write_text(TOKEN + "\n")
    settings = load_settings(overrides={"admin.token_file": str(token_file)})
    assert settings.admin.token.get_secret_value() == TOKEN
    assert redacted_settings(settings)["admin"]["token"] == "**********"
    monkeypatch.setenv("PULSE_RELAY_ADMIN__TOKEN", "from-env")
    assert load_settings().admin.token.get_secret_value() == "from-env"
