"""Tokens, roles and protected refs as a user meets them on the command line (issue 10)."""

from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path

import pytest

from modelvc.cli import EXIT_DENIED
from modelvc.stack import Stack
from streams.core.security import TOKEN
from tests.conftest import train_model
from tests.e2e.test_cli import IDENTITY_ENV, modelvc, ok, run_cli

pytestmark = pytest.mark.broker

EXPORTED = re.compile(r"^  export MODELVC_TOKEN=(\S+)$", re.MULTILINE)


def new_token(stack: Stack, actor: str, role: str, *extra: str) -> tuple[str, str]:
    """`modelvc token create` as the admin: the token (printed once) and its id."""
    out = ok(stack, "token", "create", actor, "--role", role, *extra)
    token = EXPORTED.search(out)
    assert token is not None, out
    match = TOKEN.fullmatch(token.group(1))
    assert match is not None, out
    assert out.count(token.group(1)) == 2  # on its own line, and in the export line
    return match.group(0), match.group(1)


def denied(done: object, *says: str) -> None:
    """Refused for who the caller is: exit 5, one 'modelvc: ' message naming ``says``."""
    assert getattr(done, "returncode", None) == EXIT_DENIED, done
    stderr = str(getattr(done, "stderr", ""))
    assert stderr.startswith("modelvc: ") and "Traceback" not in stderr, stderr
    for word in says:
        assert word in stderr, stderr


@pytest.fixture
def stack(module_stack: Stack) -> Stack:
    """This module's tests share one stack; each keeps to a model of its own (:func:`model`).

    Tokens and protections are the stack's, not a model's: each test looks up its own tokens
    by id, and the one test that protects refs leaves none behind (the others protect none).
    """
    return module_stack


def test_up_writes_an_owner_only_admin_token_the_cli_uses(stack: Stack) -> None:
    token_file = stack.home / "admin.token"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert stat.S_IMODE((stack.home / "keys").stat().st_mode) == 0o700
    text = token_file.read_text()
    assert text.endswith("\n") and TOKEN.fullmatch(text[:-1]) and text[:-1] == stack.token
    # Zero-config: the CLI finds the token in its home and is the first admin.
    me = json.loads(ok(stack, "--json", "whoami"))
    assert me["role"] == "admin" and me["actor"] == stack.admin_actor
    assert me["token_id"] == TOKEN.fullmatch(stack.token).group(1)  # type: ignore[union-attr]
    assert f"{stack.admin_actor} (role admin" in ok(stack, "whoami")
    # The streams app signs with the key `up` put under keys/ (created at first start).
    keys = json.loads(ok(stack, "--json", "key", "list"))
    assert keys["instance_key"] and keys["instance_key"] in ok(stack, "key", "list")


def test_token_create_list_revoke_and_a_revoked_token_is_refused(
    stack: Stack, model: str, tmp_path: Path
) -> None:
    alice, alice_id = new_token(stack, "alice", "committer", "--expires", "30d")
    as_alice = {"MODELVC_TOKEN": alice}
    assert "alice (role committer" in ok(stack, "whoami", **as_alice)

    # The actor of every event is the token's, whatever the command line claims.
    ok(stack, "create", model, **as_alice)
    ok(stack, "commit", str(train_model(tmp_path / "v1.txt")), "-m", "v1", **as_alice)
    assert json.loads(ok(stack, "--json", "log"))["commits"][0]["author"] == "alice"
    claimed = modelvc(stack, "--actor", "release-manager", "alias", "set", "p", "main", **as_alice)
    denied(claimed, "release-manager")
    # A committer may not manage tokens: the message names the role it lacks.
    denied(modelvc(stack, "token", "list", **as_alice), "admin")
    denied(modelvc(stack, "token", "create", "eve", "--role", "admin", **as_alice), "admin")

    listed = json.loads(ok(stack, "--json", "token", "list"))["tokens"]
    mine = {t["token_id"]: t for t in listed}[alice_id]
    assert (mine["actor"], mine["role"], mine["state"]) == ("alice", "committer", "active")
    assert mine["expires_at"] > 0 and alice not in json.dumps(listed)  # only hashes are kept
    assert alice_id in ok(stack, "token", "list") and alice not in ok(stack, "token", "list")

    assert "revoked" in ok(stack, "token", "revoke", alice_id, "--reason", "left the team")
    denied(modelvc(stack, "whoami", **as_alice))
    denied(modelvc(stack, "-M", model, "log", **as_alice))
    revoked = {t["token_id"]: t for t in json.loads(ok(stack, "--json", "token", "list"))["tokens"]}
    assert revoked[alice_id]["state"] == "revoked"
    assert revoked[alice_id]["reason"] == "left the team"
    assert "left the team" in ok(stack, "token", "list")


def test_protect_and_unprotect_an_alias_and_a_branch(
    stack: Stack, model: str, tmp_path: Path
) -> None:
    try:
        check_protect_and_unprotect(stack, model, tmp_path)
    finally:  # the stack is shared: a failure here must not leave a rule for other tests
        modelvc(stack, "unprotect", "alias", "production", "-M", model)
        modelvc(stack, "unprotect", "branch", "main")


def check_protect_and_unprotect(stack: Stack, model: str, tmp_path: Path) -> None:
    ok(stack, "create", model)
    ok(stack, "commit", str(train_model(tmp_path / "v1.txt")), "-m", "v1")
    ok(stack, "commit", str(train_model(tmp_path / "v2.txt", seed=2)), "-m", "v2")
    bob = {"MODELVC_TOKEN": new_token(stack, "bob", "committer")[0]}
    rel = {"MODELVC_TOKEN": new_token(stack, "rita", "releaser")[0]}
    assert "no protected refs" in ok(stack, "protections")

    out = ok(stack, "protect", "alias", "production", "-M", model)
    assert f"protected alias production of {model}" in out and "releaser" in out
    rules = json.loads(ok(stack, "--json", "protections"))["rules"]
    assert rules == [{"kind": "alias", "model": model, "name": "production", "role": "releaser"}]
    denied(modelvc(stack, "-M", model, "alias", "set", "production", "main", **bob), "releaser")
    ok(stack, "-M", model, "alias", "set", "production", "main~1", **rel)
    # Only an admin changes the rules.
    denied(modelvc(stack, "unprotect", "alias", "production", "-M", model, **rel), "admin")
    ok(stack, "unprotect", "alias", "production", "-M", model)
    ok(stack, "-M", model, "alias", "set", "production", "main", **bob)

    # Without -M a rule covers every model.
    assert "of every model" in ok(stack, "protect", "branch", "main")
    assert "(every model)" in ok(stack, "protections")
    v3 = str(train_model(tmp_path / "v3.txt", seed=3))
    denied(modelvc(stack, "-M", model, "commit", v3, "-m", "v3", **bob), "releaser")
    ok(stack, "-M", model, "commit", v3, "-m", "v3", **rel)
    ok(stack, "unprotect", "branch", "main")
    assert "no protected refs" in ok(stack, "protections")


def no_service(home: Path, **env: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if k not in IDENTITY_ENV}
    return base | {"MODELVC_URL": "http://127.0.0.1:9", "MODELVC_HOME": str(home)} | env


@pytest.mark.parametrize("where", ["MODELVC_TOKEN_FILE", "admin.token"])
def test_a_token_file_others_can_read_is_refused_before_any_request(
    tmp_path: Path, where: str
) -> None:
    token_file = tmp_path / ("admin.token" if where == "admin.token" else "mine.token")
    token_file.write_text("mvc_0123456789abcdef_" + "A" * 43 + "\n")
    token_file.chmod(0o640)
    env = no_service(tmp_path, **({where: str(token_file)} if where != "admin.token" else {}))
    done = run_cli(env, "whoami")
    denied(done, f"chmod 600 {token_file}")
    token_file.chmod(0o600)  # the control: the same file, private, is used (and the
    assert run_cli(env, "whoami").returncode == 3  # unreachable service is the next problem)


def test_usage_of_the_new_commands_is_checked_before_any_request(tmp_path: Path) -> None:
    env = no_service(tmp_path)
    for args, says in [
        (("token", "create", "bob"), "--role"),
        (("token", "create", "bob", "--role", "reader", "--expires", "soon"), "30d"),
        (("token", "create", "bob", "--role", "reader", "--expires", "2001-01-01"), "future"),
        (("token", "revoke"), "TOKEN_ID"),
        (("key", "retire", "abc"), "--reason"),
    ]:
        done = run_cli(env, *args)
        assert done.returncode == 2 and says in done.stderr, (args, done.stderr)


def test_up_sign_predictions_makes_every_worker_sign_and_audit_verifies_it(
    tmp_path: Path,
) -> None:
    """`modelvc up --sign-predictions` (its own Tansu broker): the worker it starts signs."""
    from modelvc.processes import free_port

    home = tmp_path / "home"
    env = {k: v for k, v in os.environ.items() if k not in IDENTITY_ENV}
    env |= {"MODELVC_HOME": str(home)}
    env.pop("MODELVC_SIGN_PREDICTIONS", None)  # the flag alone must do it
    env.pop("KAFKA_BOOTSTRAP", None)
    ports = [str(free_port()) for _ in range(3)]
    up = ["up", "--sign-predictions", "--broker", "tansu", "--broker-port", ports[0]]
    up += ["--port", ports[1], "--worker-port", ports[2], "--workers", "1"]
    try:
        done = run_cli(env, *up, timeout=180)
        assert done.returncode == 0, done.stderr
        model = train_model(tmp_path / "m.txt")
        for args in (("create", "fraud"), ("commit", str(model), "-m", "v1")):
            assert run_cli(env, *args).returncode == 0
        features = tmp_path / "features.jsonl"
        row = {f"Column_{n}": 0.5 for n in range(4)}  # train_model's unnamed features
        features.write_text(json.dumps({"event_id": "s-1", "features": row}) + "\n")
        assert run_cli(env, "publish", str(features)).returncode == 0
        tail = ["--json", "tail", "predictions", "--from-beginning", "-n", "1"]
        done = run_cli(env, *tail, "--idle-timeout", "60", timeout=120)
        assert done.returncode == 0 and done.stdout, done.stderr
        prediction = json.loads(done.stdout.splitlines()[0])
        assert prediction["worker_id"] == "worker-1" and prediction["signature"], prediction
        assert (home / "keys" / "worker-worker-1.key").exists()
        done = run_cli(env, "--json", "audit", "verify-predictions", "--all", timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr
        verified = json.loads(done.stdout)
        assert verified["signed"] == 1 and verified["signatures"] == [], verified
    finally:
        run_cli(env, "down", timeout=120)
