"""Issue 10: who may do what, on a real stack. Each role can do exactly what its row of
the table says (a test per cell), a protected alias stays put for a committer, the
event's actor is the token's, and revoked or expired tokens are refused."""

from __future__ import annotations

import json
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from modelvc.stack import Stack
from streams.core.security import ROLES, at_least
from streams.core.signatures import key_id_of
from tests.conftest import train_model
from tests.integration.test_http_hygiene import admin_ready, send
from tests.integration.test_workers import wait_for

pytestmark = pytest.mark.broker

Answer = tuple[int, dict[str, str], Any]


@dataclass
class World:
    """The module's stack, an uploaded artifact, and one token per role."""

    stack: Stack
    digest: str
    tokens: dict[str, str]  # role -> token
    actors: dict[str, str]  # role -> the token's actor
    artifact: bytes = b""  # the model file behind ``digest``

    def call(self, token: str | None, method: str, path: str, body: Any = None) -> Answer:
        """``body`` is sent as JSON, or as an upload when it is bytes."""
        headers = {} if token is None else {"Authorization": f"Bearer {token}"}
        data = None
        if isinstance(body, bytes):
            data, headers["Content-Type"] = body, "application/octet-stream"
        elif body is not None:
            data, headers["Content-Type"] = json.dumps(body).encode(), "application/json"
        return send(self.stack.url, method, path, data, headers)

    def admin(self, method: str, path: str, body: Any = None) -> Any:
        status, _, answer = self.call(self.stack.token, method, path, body)
        assert status in (200, 201), (method, path, answer)
        return answer

    def issue(self, actor: str, role: str, expires_at: int | None = None) -> dict[str, Any]:
        body = {"actor": actor, "role": role, "expires_at": expires_at}
        return dict(self.admin("POST", "/v1/tokens", body))

    def model(self, name: str, commits: int = 1, branches: tuple[str, ...] = ()) -> str:
        """A fresh model with ``commits`` on main and each of ``branches`` one commit ahead."""
        self.admin("POST", "/v1/models", {"name": name})
        for n in range(commits):
            self.commit(name, "main", f"main {n}")
        for branch in branches:
            self.admin("POST", f"/v1/models/{name}/branches", {"name": branch})
            self.commit(name, branch, f"{branch} 1")
        return name

    def commit(self, model: str, branch: str, message: str) -> Any:
        body = {"artifact_sha256": self.digest, "message": message, "branch": branch}
        return self.admin("POST", f"/v1/models/{model}/commits", body)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, bootstrap: str) -> Iterator[World]:
    home = tmp_path_factory.mktemp("roles") / "home"
    model_file = train_model(tmp_path_factory.mktemp("model") / "model.txt")
    stack = Stack.up(home, bootstrap=bootstrap, namespace=f"t{uuid.uuid4().hex[:10]}")
    try:
        world = World(stack, "", {}, {}, model_file.read_bytes())
        admin_ready(stack)
        status, _, uploaded = world.call(stack.token, "POST", "/v1/artifacts", world.artifact)
        assert status == 201, uploaded
        world.digest = uploaded["sha256"]
        for role in ROLES:
            issued = world.issue(f"{role}-bob", role)
            world.tokens[role], world.actors[role] = issued["token"], issued["actor"]
        # For every model: production and the release branch need a releaser.
        for kind, name in (("alias", "production"), ("branch", "release")):
            world.admin("PUT", f"/v1/protections/{kind}/{name}", {"role": "releaser"})
        yield world
    finally:
        stack.down()


# -- the role table: one test per (role, action) ----------------------------------------
# Each action prepares what it needs as admin on a model of its own, then acts with
# the role's token. (least role, prepare(world, model) -> model, act(model) -> request)
Request = tuple[str, str, Any]
Prepare = Callable[[World, str], str]
Act = Callable[[World, str, str], Request]


def _merge(into: str) -> Act:
    return lambda w, m, role: (
        "POST",
        f"/v1/models/{m}/merges",
        {"source": "src", "into": into, "strategy": "theirs"},
    )


def _commit(branch: str) -> Act:
    return lambda w, m, role: (
        "POST",
        f"/v1/models/{m}/commits",
        {"artifact_sha256": w.digest, "message": "by role", "branch": branch},
    )


def _rollback(branch: str) -> Act:
    body = {"branch": branch, "to": f"{branch}~1", "reason": "roles test"}
    return lambda w, m, role: ("POST", f"/v1/models/{m}/rollbacks", body)


def _alias(alias: str) -> Act:
    return lambda w, m, role: ("PUT", f"/v1/models/{m}/aliases/{alias}", {"ref": "main"})


def throwaway_key() -> str:
    """A writer key nobody holds the private half of (it signs nothing)."""
    public = Ed25519PrivateKey.generate().public_key()
    return public.public_bytes(Encoding.Raw, PublicFormat.Raw).hex()


def _added_key(w: World, m: str) -> str:
    """A throwaway writer key on every partition's ring; its id."""
    public_key = throwaway_key()
    w.admin("POST", "/v1/writer-keys", {"public_key": public_key, "note": m})
    return key_id_of(public_key)


def _protected(w: World, m: str) -> str:
    """Model ``m``'s branch ``m`` protected (the model need not exist); ``m``."""
    w.admin("PUT", f"/v1/protections/branch/{m}", {"model": m})
    return m


def _retire(w: World, key_id: str) -> None:
    """Retire a throwaway key, so the rings hold only the stack's own key again."""
    keys = w.admin("GET", "/v1/writer-keys")["partitions"]
    if any(key_id in ring["active"] for ring in keys.values()):
        w.admin("DELETE", f"/v1/writer-keys/{key_id}?reason=roles-test")


TABLE: dict[str, tuple[str, Prepare, Act]] = {
    "query": (
        "reader",
        lambda w, m: w.model(m),
        lambda w, m, r: ("GET", f"/v1/models/{m}/refs", None),
    ),
    "create": (
        "committer",
        lambda w, m: m,
        lambda w, m, r: ("POST", "/v1/models", {"name": m}),
    ),
    "commit": ("committer", lambda w, m: w.model(m), _commit("main")),
    "branch": (
        "committer",
        lambda w, m: w.model(m),
        lambda w, m, r: ("POST", f"/v1/models/{m}/branches", {"name": "topic"}),
    ),
    "merge": ("committer", lambda w, m: w.model(m, branches=("src",)), _merge("main")),
    "rollback": ("committer", lambda w, m: w.model(m, commits=2), _rollback("main")),
    "move alias": ("committer", lambda w, m: w.model(m), _alias("staging")),
    "commit protected": (
        "releaser",
        lambda w, m: w.model(m, branches=("release",)),
        _commit("release"),
    ),
    "merge into protected": (
        "releaser",
        lambda w, m: w.model(m, branches=("release", "src")),
        _merge("release"),
    ),
    "rollback protected": (
        "releaser",
        lambda w, m: w.model(m, branches=("release",)),
        _rollback("release"),
    ),
    "move protected alias": ("releaser", lambda w, m: w.model(m), _alias("production")),
    "token create": (
        "admin",
        lambda w, m: m,
        lambda w, m, r: ("POST", "/v1/tokens", {"actor": m, "role": "reader"}),
    ),
    "protect": (
        "admin",
        lambda w, m: m,
        lambda w, m, r: ("PUT", f"/v1/protections/alias/{m}", {"model": m, "role": "releaser"}),
    ),
    "upload artifact": (
        "committer",
        lambda w, m: m,
        lambda w, m, r: ("POST", "/v1/artifacts", w.artifact),
    ),
    "create protected-named branch": (
        "releaser",
        lambda w, m: w.model(m),
        lambda w, m, r: ("POST", f"/v1/models/{m}/branches", {"name": "release"}),
    ),
    "delete protected branch": (
        "admin",
        lambda w, m: w.model(m, branches=("release",)),
        lambda w, m, r: ("DELETE", f"/v1/models/{m}/branches/release", None),
    ),
    "protections list": (
        "reader",
        lambda w, m: m,
        lambda w, m, r: ("GET", "/v1/protections", None),
    ),
    "unprotect": (
        "admin",
        _protected,
        lambda w, m, r: ("DELETE", f"/v1/protections/branch/{m}?model={m}", None),
    ),
    "token list": ("admin", lambda w, m: m, lambda w, m, r: ("GET", "/v1/tokens", None)),
    "token revoke": (
        "admin",
        lambda w, m: str(w.issue(m, "reader")["token_id"]),
        lambda w, m, r: ("DELETE", f"/v1/tokens/{m}?reason=roles-test", None),
    ),
    "writer-key add": (
        "admin",
        lambda w, m: throwaway_key(),
        lambda w, m, r: ("POST", "/v1/writer-keys", {"public_key": m, "note": "roles test"}),
    ),
    "writer-key retire": (
        "admin",
        _added_key,
        lambda w, m, r: ("DELETE", f"/v1/writer-keys/{m}?reason=roles-test", None),
    ),
}
# The role the edge asks for when it is not the cell's (the writer asks the rest).
EDGE_ROLE = {"delete protected branch": "committer"}
# What a cell leaves behind that the module's other tests must not see.
CLEANUP: dict[str, Callable[[World, str], None]] = {
    "writer-key add": lambda w, public_key: _retire(w, key_id_of(public_key)),
    "writer-key retire": _retire,
}


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("action", list(TABLE))
def test_each_role_can_do_exactly_its_row_of_the_table(
    world: World, action: str, role: str
) -> None:
    needed, prepare, act = TABLE[action]
    model = prepare(world, f"{action.replace(' ', '-')}-{role}")
    method, path, body = act(world, model, role)
    try:
        status, _, answer = world.call(world.tokens[role], method, path, body)
    finally:
        if action in CLEANUP:
            CLEANUP[action](world, model)
    if at_least(role, needed):
        assert status in (200, 201), (action, role, answer)
        return
    assert status == 403, (action, role, answer)
    assert answer["error"] == "forbidden", answer
    # Below the route's own role the edge refuses (it names that role); above it, the
    # writer refuses by the protecting rule (and names the rule's role).
    edge = EDGE_ROLE.get(action, "committer" if needed == "releaser" else needed)
    missing = needed if at_least(role, edge) else edge
    assert (answer["needed"], answer["role"], answer["actor"]) == (
        missing,
        role,
        world.actors[role],
    )
    assert f"modelvc token create {world.actors[role]} --role {missing}" in answer["message"]


# -- authentication -----------------------------------------------------------------
def test_a_request_without_a_token_is_401_and_the_open_routes_stay_open(world: World) -> None:
    status, headers, answer = world.call(None, "GET", "/v1/models")
    assert status == 401 and answer["error"] == "unauthenticated", answer
    assert headers["www-authenticate"].startswith("Bearer")
    assert answer["needed"] == "reader"
    status, _, answer = world.call("mvc_" + "0" * 16 + "_" + "A" * 43, "GET", "/v1/models")
    assert status == 401, answer
    assert world.call(None, "GET", "/healthz")[0] == 200
    assert world.call(None, "GET", "/v1/openapi.json")[0] == 200


def test_whoami_is_the_token_and_the_list_never_shows_a_secret(world: World) -> None:
    status, _, me = world.call(world.tokens["committer"], "GET", "/v1/whoami")
    assert status == 200 and me["actor"] == "committer-bob" and me["role"] == "committer", me
    listed = world.admin("GET", "/v1/tokens")["tokens"]
    mine = next(t for t in listed if t["token_id"] == me["token_id"])
    assert (
        mine["state"] == "active" and mine["issued_by"] == world.admin("GET", "/v1/whoami")["actor"]
    )
    text = json.dumps(listed)
    assert all(token not in text for token in world.tokens.values())
    assert "sha256" not in text


def test_revoked_and_expired_tokens_are_refused(world: World) -> None:
    revoked = world.issue("leaver", "committer")
    assert world.call(revoked["token"], "GET", "/v1/whoami")[0] == 200
    path = f"/v1/tokens/{revoked['token_id']}?reason=left"
    status, _, answer = world.call(world.stack.token, "DELETE", path)
    assert status == 201, answer
    status, _, answer = world.call(revoked["token"], "GET", "/v1/whoami")
    assert status == 401 and "revoked" in answer["message"], answer

    soon = int(time.time() * 1000) + 3_000
    expiring = world.issue("brief", "reader", expires_at=soon)
    assert expiring["expires_at"] == soon
    wait_for(
        lambda: world.call(expiring["token"], "GET", "/v1/whoami")[0] == 401,
        timeout=30,
        what="the token to expire",
    )
    listed = {t["token_id"]: t["state"] for t in world.admin("GET", "/v1/tokens")["tokens"]}
    assert listed[revoked["token_id"]] == "revoked"
    assert listed[expiring["token_id"]] == "expired"


# -- protection and actors ------------------------------------------------------------
def test_a_protected_alias_cannot_be_moved_by_a_committer(world: World) -> None:
    model = world.model("guarded", commits=2)
    world.admin("PUT", f"/v1/models/{model}/aliases/production", {"ref": "main~1"})
    before = world.admin("GET", f"/v1/models/{model}/refs")["aliases"]["production"]
    committer = world.tokens["committer"]
    status, _, answer = world.call(
        committer, "PUT", f"/v1/models/{model}/aliases/production", {"ref": "main"}
    )
    assert status == 403 and answer["needed"] == "releaser", answer
    assert world.admin("GET", f"/v1/models/{model}/refs")["aliases"]["production"] == before
    # The rule is listed, and a releaser may move it.
    rules = world.admin("GET", "/v1/protections")["rules"]
    assert {"kind": "alias", "model": "", "name": "production", "role": "releaser"} in rules
    releaser = world.tokens["releaser"]
    path = f"/v1/models/{model}/aliases/production"
    assert world.call(releaser, "PUT", path, {"ref": "main"})[0] == 201


def test_the_events_actor_is_the_tokens_identity_and_other_claims_are_refused(
    world: World,
) -> None:
    model = world.model("authored")
    token = world.tokens["releaser"]
    commit = {"artifact_sha256": world.digest, "message": "mine", "branch": "main"}
    path = f"/v1/models/{model}/commits"
    # Another actor claimed in the body, or in the header (the issue's report): refused.
    status, _, answer = world.call(token, "POST", path, {**commit, "actor": "release-manager"})
    assert status == 403 and answer["error"] == "actor_mismatch", answer
    headers = {
        "Authorization": f"Bearer {token}",
        "Content-Type": "application/json",
        "X-Modelvc-Actor": "release-manager",
    }
    alias = f"/v1/models/{model}/aliases/production"
    status, _, answer = send(world.stack.url, "PUT", alias, b'{"ref": "main"}', headers)
    assert status == 403 and answer["error"] == "actor_mismatch", answer
    # Repeating the token's own actor is fine; no claim at all is the usual case.
    status, _, answer = world.call(token, "POST", path, {**commit, "actor": "releaser-bob"})
    assert status == 201, answer
    head = answer["head"]
    assert world.call(token, "PUT", alias, {"ref": head})[0] == 201
    assert world.admin("GET", f"/v1/models/{model}/commits/{head}")["author"] == "releaser-bob"
    moves = world.admin("GET", f"/v1/models/{model}/log")["ref_moves"]
    moved = [m for m in moves if m["name"] == "production"]
    assert [m["actor"] for m in moved] == ["releaser-bob"], moves


def test_a_worker_predicts_for_a_reader_token_only(world: World) -> None:
    world.stack.add_worker()
    url = world.stack.worker_url()
    wait_for(lambda: send(url, "GET", "/healthz")[0] == 200, timeout=60, what="worker ready")
    body = json.dumps({"features": {"x": 1.0}}).encode()
    path = "/v1/models/nothing-here/predict"
    status, headers, answer = send(url, "POST", path, body, {"Content-Type": "application/json"})
    assert status == 401 and answer["error"] == "unauthenticated", answer
    assert headers["www-authenticate"].startswith("Bearer")
    reader = {
        "Authorization": f"Bearer {world.tokens['reader']}",
        "Content-Type": "application/json",
    }
    # Workers fold ~security from the same log: the reader token soon works there too.
    wait_for(
        lambda: send(url, "POST", path, body, reader)[0] == 404, timeout=30, what="token known"
    )
    with urllib.request.urlopen(f"{url}/metrics", timeout=30) as metrics:
        assert metrics.status == 200  # open, like /healthz
