"""`modelvc artifacts ls | verify | gc` as a user runs them, on a directory and on S3 (moto).

Each run starts its own stack on its own embedded Tansu broker (not the shared
`bootstrap` fixture), so the file runs in the Tansu tier only: what it checks is the
store and the command, not the broker.
"""

from __future__ import annotations

import dataclasses
import json
import os
import uuid
from pathlib import Path

import pytest

from modelvc.stack import Stack
from streams.artifacts.store import key_for
from streams.topics import ensure_topics
from tests.conftest import train_model
from tests.e2e.test_cli import IDENTITY_ENV, run_cli
from tests.s3server import BUCKET, S3Server

pytestmark = pytest.mark.broker


def store_env(kind: str, request: pytest.FixtureRequest) -> dict[str, str]:
    """The variables that point modelvc at the store: none for a directory (the stack's own,
    found through its stack.json), the bucket under a prefix of this test's for S3."""
    if kind == "local":
        return {}
    s3: S3Server = request.getfixturevalue("s3")
    return s3.env(prefix=f"cli-{uuid.uuid4().hex[:8]}")


def alter(
    kind: str, request: pytest.FixtureRequest, stack: Stack, env: dict[str, str], d: str
) -> None:
    """Change the bytes of object ``d`` behind modelvc's back (a bit rot, a hand edit)."""
    if kind == "local":
        (stack.home / "artifacts" / key_for(d)).write_bytes(b"tree\nnot the model any more\n")
        return
    s3: S3Server = request.getfixturevalue("s3")
    prefix = env["MODELVC_ARTIFACTS"].removeprefix(f"s3://{BUCKET}/")
    s3.client().put_object(Bucket=BUCKET, Key=f"{prefix}/{key_for(d)}", Body=b"not the model")


@pytest.mark.parametrize("kind", ["local", "s3"])
def test_ls_verify_and_gc_keep_every_committed_artifact(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    env = store_env(kind, request)
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():  # the stack's processes inherit the credentials
            patch.setenv(name, value)
        stack = Stack.up(
            tmp_path / "home",
            artifacts=env.get("MODELVC_ARTIFACTS"),
            s3_endpoint=env.get("MODELVC_S3_ENDPOINT"),
        )
    try:
        c = stack.client()
        c.create("churn")
        committed = []
        for n in (1, 2):
            d = c.upload(train_model(tmp_path / f"v{n}.txt", seed=n))["sha256"]
            c.commit("churn", d, f"v{n}")
            committed.append(d)
        orphan = c.upload(train_model(tmp_path / "v3.txt", seed=3))["sha256"]

        base = {k: v for k, v in os.environ.items() if k not in IDENTITY_ENV}
        cli_env = base | {"MODELVC_HOME": str(stack.home)} | env

        def modelvc(*args: str) -> tuple[int, str, str]:
            done = run_cli(cli_env, "artifacts", *args)
            return done.returncode, done.stdout, done.stderr

        def listed() -> set[str]:
            code, out, err = modelvc("ls", "--json")
            assert code == 0, err
            return {o["digest"] for o in json.loads(out)["objects"]}

        assert listed() == {*committed, orphan}
        code, out, err = modelvc("verify")
        assert code == 0 and "checked 3 objects" in out and "0 damaged" in out, out + err

        alter(kind, request, stack, env, committed[1])
        code, out, err = modelvc("verify")
        assert code == 1, out + err
        assert f"{committed[1]}: " in out and "1 damaged" in out
        assert committed[0] not in out and orphan not in out

        # Not committed, but younger than the default 30 days: an upload may await its commit.
        code, out, err = modelvc("gc", "--json")
        assert code == 0 and json.loads(out)["chosen"] == [], err
        code, out, err = modelvc("gc", "--older-than", "0d", "--dry-run")
        assert code == 0, err
        assert f"would delete {orphan}" in out and "would delete 1 of 3 objects" in out
        assert not any(d in out for d in committed)
        # A namespace whose events topic is empty (a wrong MODELVC_NAMESPACE): every object
        # would look orphaned, so gc refuses and deletes nothing, dry run or not.
        empty = dataclasses.replace(stack.settings, namespace=f"{stack.settings.namespace}-x")
        ensure_topics(empty)
        for dry_run in ((), ("--dry-run",)):
            done = run_cli(
                cli_env | {"MODELVC_NAMESPACE": empty.namespace},
                *("artifacts", "gc", "--older-than", "0d", *dry_run),
            )
            assert done.returncode == 1, done.stdout + done.stderr
            assert "Nothing was deleted" in done.stderr and "MODELVC_NAMESPACE" in done.stderr
        assert listed() == {*committed, orphan}

        code, out, err = modelvc("gc", "--older-than", "0d")  # "of 3": the dry run kept all
        assert code == 0 and f"deleted {orphan}" in out and "deleted 1 of 3" in out, out + err
        assert listed() == set(committed)  # the altered one too: an event names it

        if kind == "s3":
            # The audit opens an s3:// store given on its command line, and reaches it first.
            missing = f"s3://{BUCKET}-missing/models"
            done = run_cli(cli_env, "audit", "verify-predictions", "--artifacts", missing)
            assert done.returncode == 3, done.stderr
            assert f"{BUCKET}-missing" in done.stderr and "does not exist" in done.stderr
    finally:
        stack.down()
