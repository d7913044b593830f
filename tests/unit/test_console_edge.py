"""The console's edge without a broker: its pages and assets, sign-in by token and by
login code, the session cookie standing for the token, CSRF on cookie writes, sign-out,
and the origin guard, through the streams app's own middlewares (``web_middlewares``)
over the console's and the API's real routes."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any

import pytest
from aiohttp import DummyCookieJar, web
from aiohttp.test_utils import TestClient, TestServer

from streams import auth
from streams.app import api_of, web_middlewares
from streams.artifacts import LocalStore
from streams.bootstrap import bootstrap
from streams.console.routes import CONTENT_SECURITY_POLICY, Console, load_assets
from streams.console.sessions import Sessions
from streams.core.security import SecurityState
from streams.projection import MemoryProjection
from streams.settings import Settings
from tests.unit.test_auth import issue, security_of

Client = TestClient[web.Request, web.Application]
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}
READER = issue("rita", "reader")
COMMITTER = issue("carl", "committer")
JSON_TYPE = {"Content-Type": "application/json"}
# A write route that needs no broker: a login code (any role may ask for one).
WRITE = "/v1/ui/login-codes"


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@dataclass
class World:
    client: Client
    clock: Clock
    sessions: Sessions
    states: list[SecurityState]

    async def sign_in(self, body: dict[str, str], **headers: str) -> tuple[int, Any, SimpleCookie]:
        async with self.client.post(
            "/ui/session", json=body, headers={**JSON_TYPE, **headers}
        ) as response:
            cookie = SimpleCookie(response.headers.get("Set-Cookie", ""))
            return response.status, await response.json(), cookie

    async def signed_in(self, token: str = COMMITTER[0]) -> tuple[dict[str, str], str]:
        """A session for ``token``: the Cookie header that names it, and its CSRF token."""
        status, body, cookie = await self.sign_in({"token": token})
        assert status == 200, body
        return {"Cookie": f"modelvc_session={cookie['modelvc_session'].value}"}, body["csrf"]

    async def call(
        self, method: str, path: str, headers: dict[str, str] | None = None, body: Any = None
    ) -> tuple[int, Any, Any]:
        sent = dict(headers or {})
        if body is not None:
            sent.update(JSON_TYPE)
        async with self.client.request(
            method, path, headers=sent, json=body, allow_redirects=False
        ) as response:
            answer = await response.json() if response.content_type == "application/json" else None
            return response.status, answer, response.headers


def served(
    tmp_path: Path,
    check: Callable[[World], Awaitable[None]],
    assets: Path | None = None,
    **bounds: int,
) -> None:
    """Run ``check`` against the console and the API behind the app's own middlewares
    (``bounds``: the session store's, as :class:`Sessions` takes them)."""

    async def run() -> None:
        async with world(tmp_path, assets, **bounds) as w:
            await check(w)

    asyncio.run(run())


@asynccontextmanager
async def world(tmp_path: Path, assets: Path | None, **bounds: int) -> AsyncIterator[World]:
    settings = Settings.namespaced("ui", data_dir=tmp_path / "s", artifacts=str(tmp_path / "a"))
    states = [security_of(READER[1], COMMITTER[1])]

    def security() -> SecurityState:
        return states[-1]

    clock = Clock()
    sessions = Sessions(clock, **bounds)
    app = web.Application(middlewares=web_middlewares(settings, security, sessions))
    store = LocalStore(tmp_path / "a")
    handlers = api_of(bootstrap(settings, projection=MemoryProjection(), store=store))
    app.router.add_routes(handlers.routes())
    console = Console(security, sessions, None if assets is None else load_assets(assets))
    app.router.add_routes(console.routes())
    # No cookie jar: each request names its cookie itself, so none is sent by accident.
    client = TestClient(TestServer(app, host="127.0.0.1"), cookie_jar=DummyCookieJar())
    await client.start_server()
    try:
        yield World(client, clock, sessions, states)
    finally:
        await client.close()
        await handlers.close()


def assert_console_headers(headers: Any) -> None:
    for name, value in SECURITY_HEADERS.items():
        assert headers.get(name) == value, name


# -- pages and assets ------------------------------------------------------------------
@pytest.fixture
def assets(tmp_path: Path) -> Path:
    folder = tmp_path / "static"
    folder.mkdir()
    (folder / "index.html").write_text("<!doctype html><title>c</title>")
    (folder / "app.js").write_text("export {};")
    (folder / "style.css").write_text("body{}")
    (folder / "favicon.svg").write_text("<svg xmlns='http://www.w3.org/2000/svg'/>")
    # Not served: other kinds of files, names the pattern refuses.
    (folder / "notes.md").write_text("x")
    (folder / "App.js").write_text("x")
    return folder


def test_the_console_page_and_assets_are_served_with_their_headers(
    tmp_path: Path, assets: Path
) -> None:
    async def check(w: World) -> None:
        status, _, headers = await w.call("GET", "/ui")
        assert status == 308 and headers["Location"] == "/ui/"
        assert_console_headers(headers)
        kinds = {
            "/ui/": "text/html; charset=utf-8",
            "/ui/static/app.js": "text/javascript; charset=utf-8",
            "/ui/static/style.css": "text/css; charset=utf-8",
            "/ui/static/favicon.svg": "image/svg+xml",
        }
        for path, kind in kinds.items():
            async with w.client.get(path) as response:
                assert response.status == 200, path
                assert response.headers["Content-Type"] == kind
                assert response.headers["Cache-Control"] == "no-cache"
                assert_console_headers(response.headers)
                etag = response.headers["ETag"]
                assert re.fullmatch(r'"[0-9a-f]{32}"', etag)  # strong
                name = path.rpartition("/")[2] or "index.html"
                assert await response.read() == (assets / name).read_bytes()
            async with w.client.get(path, headers={"If-None-Match": etag}) as again:
                assert again.status == 304 and again.headers["ETag"] == etag
                assert await again.read() == b""

    served(tmp_path, check, assets)


@pytest.mark.parametrize(
    "name", ["nothing.js", "App.js", "notes.md", "index.html", "app.js.map", "x" * 41 + ".js"]
)
def test_an_unknown_asset_is_404_with_the_console_headers(
    name: str, tmp_path: Path, assets: Path
) -> None:
    async def check(w: World) -> None:
        status, body, headers = await w.call("GET", f"/ui/static/{name}")
        assert status == 404 and body["error"] == "not_found", body
        assert_console_headers(headers)

    served(tmp_path, check, assets)


def test_the_packaged_page_is_served_and_the_api_gets_no_console_headers(
    tmp_path: Path,
) -> None:
    async def check(w: World) -> None:
        async with w.client.get("/ui/") as response:
            assert response.status == 200
            assert b"<html" in (await response.read()).lower()
        _, _, headers = await w.call("GET", "/healthz")
        assert "Content-Security-Policy" not in headers

    served(tmp_path, check)


def test_a_package_without_its_page_is_refused_at_start_up(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match=r"index\.html is missing"):
        load_assets(tmp_path)


# -- signing in ----------------------------------------------------------------------
def test_signing_in_with_a_token_sets_an_httponly_strict_cookie(tmp_path: Path) -> None:
    async def check(w: World) -> None:
        status, body, cookie = await w.sign_in({"token": COMMITTER[0]})
        assert status == 200, body
        assert body["actor"] == "carl" and body["role"] == "committer"
        assert auth.SESSION_ID.fullmatch(body["csrf"])
        assert body["expires_ms"] == int(w.clock.now * 1000) + 12 * 3_600_000
        morsel = cookie["modelvc_session"]
        assert auth.SESSION_ID.fullmatch(morsel.value) and morsel.value != body["csrf"]
        assert morsel["httponly"] and morsel["samesite"] == "Strict"
        assert morsel["path"] == "/" and morsel["max-age"] == "43200"
        assert not morsel["secure"]  # plain http here
        assert COMMITTER[0] not in morsel.value  # the cookie holds the session id only
        # Behind a TLS proxy (the Origin says https), the cookie is never sent in the clear.
        port = w.client.port
        _, _, secure = await w.sign_in({"token": COMMITTER[0]}, Origin=f"https://127.0.0.1:{port}")
        assert secure["modelvc_session"]["secure"]

    served(tmp_path, check)


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"token": "mvc_0123456789abcdef_" + "A" * 43}, 401),  # unknown
        ({"token": "hello"}, 401),
        ({"code": "c" * 43}, 401),  # never issued
        ({"code": "../../etc"}, 401),
        ({"token": READER[0], "code": "c" * 43}, 422),  # one or the other
        ({}, 422),
        ({"token": 7}, 422),
        ({"token": "x" * 300}, 422),
    ],
)
def test_a_bad_sign_in_opens_no_session(body: dict[str, Any], status: int, tmp_path: Path) -> None:
    async def check(w: World) -> None:
        answered, answer, cookie = await w.sign_in(body)
        assert answered == status, answer
        if status == 401:
            assert answer["error"] == "unauthenticated", answer
        assert "modelvc_session" not in cookie and w.sessions.open_sessions == 0

    served(tmp_path, check)


def test_a_login_code_signs_in_as_its_tokens_caller_once(tmp_path: Path) -> None:
    async def check(w: World) -> None:
        bearer = {"Authorization": f"Bearer {READER[0]}"}
        status, code, headers = await w.call("POST", WRITE, bearer, {})
        assert status == 201, code
        assert headers["Cache-Control"] == "no-store"
        assert code["expires_ms"] == int(w.clock.now * 1000) + 60_000
        status, body, cookie = await w.sign_in({"code": code["code"]})
        assert status == 200 and (body["actor"], body["role"]) == ("rita", "reader"), body
        assert "modelvc_session" in cookie
        status, again, _ = await w.sign_in({"code": code["code"]})
        assert status == 401 and again["error"] == "unauthenticated", again
        assert "modelvc ui" in again["message"]
        # A code left for longer than its minute is spent too.
        _, late, _ = await w.call("POST", WRITE, bearer, {})
        w.clock.now += 61
        assert (await w.sign_in({"code": late["code"]}))[0] == 401

    served(tmp_path, check)


def test_a_flood_of_sign_ins_closes_only_the_flooders_own_sessions(tmp_path: Path) -> None:
    async def check(w: World) -> None:
        cookie, csrf = await w.signed_in(COMMITTER[0])
        for _ in range(5):
            await w.signed_in(READER[0])
        status, session, _ = await w.call("GET", "/ui/session", cookie)
        assert status == 200 and session["csrf"] == csrf, session
        assert w.sessions.open_sessions == 1 + 3  # the reader's own limit

    served(tmp_path, check, max_sessions=10, max_sessions_per_token=3)


def test_a_full_store_refuses_a_sign_in_with_503_and_keeps_every_session(
    tmp_path: Path,
) -> None:
    async def check(w: World) -> None:
        cookies = [(await w.signed_in(COMMITTER[0]))[0], (await w.signed_in(READER[0]))[0]]
        for body in ({"token": READER[0]}, {"token": COMMITTER[0]}):
            status, refused, cookie = await w.sign_in(body)
            assert status == 503 and refused["error"] == "sessions_full", refused
            assert "retry later" in refused["message"] and "sign out" in refused["message"]
            assert "modelvc_session" not in cookie
        for cookie in cookies:
            assert (await w.call("GET", "/ui/session", cookie))[0] == 200
        # Codes too: the store is full of other callers' codes, so the next is refused.
        bearer = {"Authorization": f"Bearer {READER[0]}"}
        assert (await w.call("POST", WRITE, bearer, {}))[0] == 201
        status, refused, _ = await w.call(
            "POST", WRITE, {"Authorization": f"Bearer {COMMITTER[0]}"}, {}
        )
        assert status == 503 and refused["error"] == "codes_full", refused
        assert "modelvc ui" in refused["message"]

    served(tmp_path, check, max_sessions=2, max_codes=1)


# -- the cookie in place of the token -----------------------------------------------------
def test_the_cookie_authenticates_a_get_and_the_session_can_be_read_again(
    tmp_path: Path,
) -> None:
    async def check(w: World) -> None:
        cookie, csrf = await w.signed_in()
        status, body, _ = await w.call("GET", "/v1/whoami", cookie)
        assert status == 200 and body["actor"] == "carl", body
        status, session, headers = await w.call("GET", "/ui/session", cookie)
        assert status == 200 and session["csrf"] == csrf and session["actor"] == "carl"
        assert headers["Cache-Control"] == "no-store"
        assert_console_headers(headers)
        # Without a cookie: the API's 401, which the page answers with its sign-in form.
        status, body, _ = await w.call("GET", "/ui/session")
        assert status == 401 and body["error"] == "unauthenticated", body
        status, body, _ = await w.call("GET", "/v1/whoami")
        assert status == 401, body

    served(tmp_path, check)


def test_a_cookie_write_needs_the_sessions_csrf_token(tmp_path: Path) -> None:
    async def check(w: World) -> None:
        cookie, csrf = await w.signed_in()
        _, other_csrf = await w.signed_in()
        for sent in ({}, {"X-CSRF-Token": "wrong"}, {"X-CSRF-Token": other_csrf}):
            status, body, _ = await w.call("POST", WRITE, {**cookie, **sent}, {})
            assert status == 403 and body["error"] == "csrf", (sent, body)
            assert "X-CSRF-Token" in body["message"]
        status, body, _ = await w.call("DELETE", "/ui/session", cookie)
        assert status == 403 and body["error"] == "csrf", body
        status, body, _ = await w.call("POST", WRITE, {**cookie, "X-CSRF-Token": csrf}, {})
        assert status == 201 and auth.SESSION_ID.fullmatch(body["code"]), body

    served(tmp_path, check)


def test_a_bearer_write_needs_no_csrf_token_cookie_or_not(tmp_path: Path) -> None:
    async def check(w: World) -> None:
        cookie, _ = await w.signed_in(READER[0])
        bearer = {"Authorization": f"Bearer {COMMITTER[0]}"}
        for headers in (bearer, {**bearer, **cookie}):
            status, body, _ = await w.call("POST", WRITE, headers, {})
            assert status == 201, body
        # The header wins over the cookie: the caller is the token's.
        status, body, _ = await w.call("GET", "/v1/whoami", {**bearer, **cookie})
        assert status == 200 and body["actor"] == "carl", body

    served(tmp_path, check)


def test_an_expired_session_is_refused_and_its_cookie_cleared(tmp_path: Path) -> None:
    async def check(w: World) -> None:
        cookie, _ = await w.signed_in()
        w.clock.now += 12 * 3600
        for path in ("/v1/whoami", "/ui/session"):
            status, body, headers = await w.call("GET", path, cookie)
            assert status == 401 and body["error"] == "unauthenticated", body
            assert "sign in again" in body["message"]
            cleared = SimpleCookie(headers["Set-Cookie"])["modelvc_session"]
            assert cleared.value == "" and cleared["max-age"] == "0"

    served(tmp_path, check)


def test_a_revoked_token_ends_its_sessions_at_the_next_request(tmp_path: Path) -> None:
    async def check(w: World) -> None:
        cookie, _ = await w.signed_in(COMMITTER[0])
        assert (await w.call("GET", "/v1/whoami", cookie))[0] == 200
        revoked = replace(COMMITTER[1], revoked_at=1, revoked_by="admin", reason="left")
        w.states.append(security_of(READER[1], revoked))
        status, body, _ = await w.call("GET", "/v1/whoami", cookie)
        assert status == 401 and "revoked" in body["message"], body
        assert w.sessions.open_sessions == 0

    served(tmp_path, check)


def test_signing_out_ends_the_session_and_clears_the_cookie(tmp_path: Path) -> None:
    async def check(w: World) -> None:
        cookie, csrf = await w.signed_in()
        status, _, headers = await w.call("DELETE", "/ui/session", {**cookie, "X-CSRF-Token": csrf})
        assert status == 204
        cleared = SimpleCookie(headers["Set-Cookie"])["modelvc_session"]
        assert cleared.value == "" and cleared["max-age"] == "0"
        assert (await w.call("GET", "/v1/whoami", cookie))[0] == 401

    served(tmp_path, check)


def test_a_readers_cookie_still_meets_the_role_of_each_route(tmp_path: Path) -> None:
    async def check(w: World) -> None:
        cookie, csrf = await w.signed_in(READER[0])
        status, body, _ = await w.call(
            "PUT", "/v1/models/churn/aliases/prod", {**cookie, "X-CSRF-Token": csrf}, {"ref": "x"}
        )
        assert status == 403 and body["error"] == "forbidden" and body["needed"] == "committer"

    served(tmp_path, check)


# -- strangers ---------------------------------------------------------------------------
def test_foreign_origins_and_hosts_are_refused(tmp_path: Path) -> None:
    async def check(w: World) -> None:
        evil = {"Origin": "http://evil.example"}
        status, body, _ = await w.sign_in({"token": COMMITTER[0]}, **evil)
        assert status == 403 and body["error"] == "foreign_origin", body
        cookie, csrf = await w.signed_in()
        status, body, _ = await w.call("POST", WRITE, {**cookie, "X-CSRF-Token": csrf, **evil}, {})
        assert status == 403 and body["error"] == "foreign_origin", body
        # A DNS-rebound name reaching this loopback-only server: a web page, not a user.
        status, body, headers = await w.call("GET", "/ui/", {"Host": "evil.example"})
        assert status == 403 and body["error"] == "foreign_host", body
        assert_console_headers(headers)
        # A sign-in as a form or a blob (no preflight from another site) is refused.
        async with w.client.post(
            "/ui/session", data=b'{"token": "x"}', headers={"Content-Type": "text/plain"}
        ) as response:
            assert response.status == 415

    served(tmp_path, check)
