"""Tokens at the HTTP edge, without a broker: the real middleware stack of the streams
API (errors, origin guard, tokens) over a security state the test builds, and the
route table that the middleware and the OpenAPI document share."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from streams import api, auth, openapi
from streams.core.errors import ActorMismatch
from streams.core.security import ROLES, Identity, SecurityState, Token
from streams.settings import Settings

NOW_MS = 1_800_000_000_000
HOUR_MS = 3_600_000
JSON_TYPE = {"Content-Type": "application/json"}


def issue(actor: str, role: str, **changes: Any) -> tuple[str, Token]:
    token, token_id, digest = auth.new_token()
    record = Token(token_id, actor, role, digest, 0, NOW_MS - HOUR_MS, "admin")
    return token, replace(record, **changes)


def security_of(*records: Token) -> SecurityState:
    return SecurityState(
        seq=len(records),
        last_hash="0" * 64,
        tokens={t.token_id: t for t in records},
        rules={},
        receipts={},
    )


# One token per role, plus a revoked and an expired one.
TOKENS = {role: issue(f"{role}-1", role) for role in ROLES}
REVOKED = issue("gone", "admin", revoked_at=NOW_MS - 1, revoked_by="admin", reason="left")
EXPIRED = issue("late", "admin", expires_at=NOW_MS - 1)
STATE = security_of(*(t for _, t in TOKENS.values()), REVOKED[1], EXPIRED[1])

# A route of each role, as the API registers them (method, path, request path).
ROUTES = {
    "reader": ("GET", "/v1/models/{model}/refs", "/v1/models/churn/refs"),
    "committer": ("PUT", "/v1/models/{model}/aliases/{alias}", "/v1/models/churn/aliases/prod"),
    "admin": ("POST", "/v1/tokens", "/v1/tokens"),
}


async def echo(request: web.Request) -> web.Response:
    """A handler that shows who the middleware let in."""
    return web.json_response(asdict(auth.identity_of(request)))


def served(
    security: Callable[[], SecurityState | None],
    check: Callable[[TestClient[web.Request, web.Application]], Awaitable[None]],
    tmp_path: Path,
) -> None:
    """Run ``check`` against an app with the streams API's own middlewares."""
    settings = Settings.namespaced("auth", data_dir=tmp_path / "s", artifacts=str(tmp_path / "a"))
    middlewares = api.middlewares(settings, security)
    # The real stack, with a fixed clock for the token middleware (expiry is tested).
    middlewares[2] = auth.require_tokens(
        security, auth.ROUTE_ROLES, auth.OPEN_PATHS, clock=lambda: NOW_MS / 1000
    )
    app = web.Application(middlewares=middlewares)
    for method, path, _ in ROUTES.values():
        app.router.add_route(method, path, echo)
    app.router.add_get("/healthz", lambda request: web.json_response({"ready": True}))
    app.router.add_get("/v1/openapi.json", lambda request: web.json_response({}))
    app.router.add_get("/v1/unlisted", echo)

    async def run() -> None:
        async with TestClient(TestServer(app, host="127.0.0.1")) as client:
            await check(client)

    asyncio.run(run())


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def answer(
    client: TestClient[web.Request, web.Application],
    method: str,
    path: str,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], dict[str, Any]]:
    sent = {**JSON_TYPE, **(headers or {})} if method != "GET" else (headers or {})
    data = b"{}" if method != "GET" else None
    async with client.request(method, path, headers=sent, data=data) as response:
        assert response.content_type == "application/json"
        return response.status, dict(response.headers), json.loads(await response.read())


GARBAGE = {
    "missing": None,
    "empty": "",
    "no scheme": TOKENS["admin"][0],
    "basic": "Basic YWRtaW46YWRtaW4=",
    "bearer nothing": "Bearer ",
    "not a token": "Bearer hello",
    "too long": "Bearer " + TOKENS["admin"][0] + "x" * 200,
    "token with a tail": "Bearer " + TOKENS["admin"][0] + "x",
    "unknown": "Bearer " + issue("nobody", "admin")[0],
    # The right id, the last secret character changed (to one it certainly is not).
    "forged secret": "Bearer "
    + TOKENS["admin"][0][:-1]
    + ("B" if TOKENS["admin"][0].endswith("A") else "A"),
    "revoked": "Bearer " + REVOKED[0],
    "expired": "Bearer " + EXPIRED[0],
}


@pytest.mark.parametrize("case", sorted(GARBAGE))
def test_no_valid_token_is_401_json_with_a_bearer_challenge(case: str, tmp_path: Path) -> None:
    header = GARBAGE[case]

    async def check(client: TestClient[web.Request, web.Application]) -> None:
        headers = {} if header is None else {"Authorization": header}
        status, answered, body = await answer(client, "GET", "/v1/models/churn/refs", headers)
        assert status == 401, body
        assert answered["WWW-Authenticate"].startswith("Bearer")
        assert body["error"] == "unauthenticated" and body["needed"] == "reader", body
        assert body["role"] is None and body["actor"] is None
        assert "modelvc token create" in body["message"]
        assert TOKENS["admin"][0] not in json.dumps(body)  # a token is never echoed

    served(lambda: STATE, check, tmp_path)


def test_before_any_token_is_issued_nobody_gets_in(tmp_path: Path) -> None:
    async def check(client: TestClient[web.Request, web.Application]) -> None:
        status, _, body = await answer(
            client, "GET", "/v1/models/churn/refs", bearer(TOKENS["admin"][0])
        )
        assert status == 401 and body["error"] == "unauthenticated", body

    served(lambda: None, check, tmp_path)


CELLS = [(route, role) for route in ROUTES for role in ROLES]


@pytest.mark.parametrize(("route", "role"), CELLS)
def test_each_role_passes_exactly_the_routes_at_or_below_it(
    route: str, role: str, tmp_path: Path
) -> None:
    method, _, path = ROUTES[route]
    token, record = TOKENS[role]

    async def check(client: TestClient[web.Request, web.Application]) -> None:
        status, _, body = await answer(client, method, path, bearer(token))
        if ROLES.index(role) >= ROLES.index(route):
            assert status == 200, body
            assert body == {
                "actor": record.actor,
                "role": role,
                "token_id": record.token_id,
                "expires_at": 0,
            }
            return
        assert status == 403, body
        assert body["error"] == "forbidden"
        assert (body["needed"], body["role"], body["actor"]) == (route, role, record.actor)
        # Says which role is missing and how to get it, in the CLI's real syntax.
        assert f"modelvc token create {record.actor} --role {route}" in body["message"]

    served(lambda: STATE, check, tmp_path)


def test_open_paths_need_no_token_and_unlisted_routes_need_admin(tmp_path: Path) -> None:
    async def check(client: TestClient[web.Request, web.Application]) -> None:
        for path in ("/healthz", "/v1/openapi.json"):
            assert (await answer(client, "GET", path))[0] == 200, path
        status, _, body = await answer(client, "GET", "/v1/unlisted", bearer(TOKENS["releaser"][0]))
        assert status == 403 and body["needed"] == "admin", body
        status, _, body = await answer(client, "GET", "/v1/unlisted", bearer(TOKENS["admin"][0]))
        assert status == 200 and body["role"] == "admin", body
        # An unknown route is 404 before any token is asked for (the guard comes first).
        assert (await answer(client, "GET", "/v1/nothing-here"))[0] == 404

    served(lambda: STATE, check, tmp_path)


def test_a_revoked_token_stops_working_as_soon_as_the_state_says_so(tmp_path: Path) -> None:
    token, record = TOKENS["reader"]
    states = [STATE]

    async def check(client: TestClient[web.Request, web.Application]) -> None:
        assert (await answer(client, "GET", "/v1/models/churn/refs", bearer(token)))[0] == 200
        revoked = replace(record, revoked_at=NOW_MS, revoked_by="admin", reason="rotated")
        states.append(security_of(revoked))
        assert (await answer(client, "GET", "/v1/models/churn/refs", bearer(token)))[0] == 401

    served(lambda: states[-1], check, tmp_path)


def test_the_worker_table_guards_predict_and_leaves_health_and_metrics_open() -> None:
    assert auth.needed_role(auth.WORKER_ROUTE_ROLES, "/v1/models/{model}/predict", "POST") == (
        "reader"
    )
    # Probes and server metadata stay open, as KServe/Triton probes expect (OIP v2).
    assert {
        "/healthz",
        "/metrics",
        "/v2",
        "/v2/health/live",
        "/v2/health/ready",
    } == auth.WORKER_OPEN_PATHS
    assert auth.needed_role(auth.WORKER_ROUTE_ROLES, "/v2/models/{model}/infer", "POST") == (
        "reader"
    )
    assert auth.needed_role(auth.ROUTE_ROLES, "/v1/models", "HEAD") == "reader"  # as GET


def test_a_claimed_actor_must_be_the_tokens_own() -> None:
    alice = Identity("alice", "committer", "0" * 16, 0)
    auth.check_actor(alice, None, None)
    auth.check_actor(alice, "alice", "alice")  # repeating it is fine
    for claims in (("bob", None), (None, "bob"), ("alice", "bob"), (["alice"], None)):
        with pytest.raises(ActorMismatch) as raised:
            auth.check_actor(alice, *claims)
        assert raised.value.details["actor"] == "alice"
        assert "modelvc whoami" in raised.value.message


def test_new_tokens_have_the_documented_form_and_only_their_hash_is_sent() -> None:
    token, token_id, digest = auth.new_token()
    other = auth.new_token()
    assert token.startswith(f"mvc_{token_id}_") and len(token) == 64
    assert token != other[0] and token_id != other[1]
    assert token not in digest and len(digest) == 64


def test_the_openapi_document_states_each_routes_role_from_the_one_table() -> None:
    document = openapi.document()
    assert document["components"]["securitySchemes"]["bearerAuth"] == {
        **document["components"]["securitySchemes"]["bearerAuth"],
        "type": "http",
        "scheme": "bearer",
    }
    guarded = set()
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            if path in auth.OPEN_PATHS:
                assert operation["security"] == [], path
                continue
            guarded.add((path, method))
            assert operation["security"] == [{"bearerAuth": []}], path
            assert {"401", "403"} <= set(operation["responses"]), path
            needed = auth.ROUTE_ROLES[(path, method)]
            assert f"role {needed}" in operation["description"]
    assert guarded == set(auth.ROUTE_ROLES)


@pytest.mark.parametrize("name", ["Authorization", "X-Modelvc-Actor"])
def test_a_repeated_identity_header_is_400(name: str, tmp_path: Path) -> None:
    token = TOKENS["admin"][0]
    value = f"Bearer {token}" if name.lower() == "authorization" else "admin-1"

    async def check(client: TestClient[web.Request, web.Application]) -> None:
        once = [("Authorization", f"Bearer {token}")]
        if name == "X-Modelvc-Actor":
            once.append((name, value))
        async with client.get("/v1/models/churn/refs", headers=once) as response:
            assert response.status == 200
        # Both copies agree, and it is still refused: proxies differ on which one wins.
        async with client.get("/v1/models/churn/refs", headers=[*once, (name, value)]) as response:
            body = json.loads(await response.read())
        assert response.status == 400, body
        assert body["error"] == "bad_request" and "send exactly one" in body["message"], body

    served(lambda: STATE, check, tmp_path)


@pytest.mark.parametrize("model", ["~security", "~keys.9", "~keys.0", "-x", "a b", ".x"])
def test_a_model_route_refuses_what_is_not_a_model_name_before_anything_else(
    model: str, tmp_path: Path
) -> None:
    async def check(client: TestClient[web.Request, web.Application]) -> None:
        for method, path in (
            ("PUT", f"/v1/models/{model}/aliases/prod"),
            ("GET", f"/v1/models/{model}/refs"),
        ):
            status, _, body = await answer(client, method, path, bearer(TOKENS["admin"][0]))
            # 422 from the edge: the echo handler (a command's submit) is never reached.
            assert status == 422, (method, body)
            assert body["error"] == "invalid" and body["field"] == "model", body
            assert "1-128 letters, digits, '.', '_' or '-'" in body["message"], body

    served(lambda: STATE, check, tmp_path)
