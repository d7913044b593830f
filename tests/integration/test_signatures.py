"""Model signatures end to end on one stack: recorded at commit, shown, diffed, and guarding
the production alias against a model whose producers do not send its features yet.

One module-scoped stack; every step is a few API or CLI calls (seconds in all). The
display logic itself is unit-tested (tests/unit/test_signature_display.py), the reading
of signatures from files too (tests/unit/test_modelfile.py).
"""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from modelvc.client import Client, ClientError
from modelvc.stack import Stack
from streams.codec import decode_event
from streams.core.events import AliasMoved
from streams.core.model_signature import CATEGORICAL, DOUBLE, ModelSignature
from streams.logreader import read_topic
from tests.integration.test_audit import cli

pytestmark = pytest.mark.broker

MODEL = "churn"


def train_named(path: Path, names: list[str], categorical: list[str]) -> bytes:
    import lightgbm as lgb

    rng = np.random.default_rng(7)
    x = rng.normal(size=(300, len(names)))
    for name in categorical:
        x[:, names.index(name)] = rng.integers(0, 8, size=300)
    y = (x[:, 0] > 0).astype(int)
    booster = lgb.train(
        {"objective": "binary", "num_leaves": 4, "verbosity": -1, "num_threads": 1},
        lgb.Dataset(x, y, feature_name=names, categorical_feature=categorical),
        num_boost_round=3,
    )
    booster.save_model(str(path))
    return path.read_bytes()


@dataclass
class World:
    stack: Stack
    client: Client
    v1: str  # commit ids
    v2: str
    uploaded: dict[str, Any]  # the upload answer of v1's file
    v1_digest: str

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return cli(self.stack, "-M", MODEL, *args)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, bootstrap: str) -> Iterator[World]:
    files = tmp_path_factory.mktemp("models")
    v1_file, v2_file = files / "v1.txt", files / "v2.txt"
    # v2 drops "plan", makes "region" categorical and needs "tenure".
    train_named(v1_file, ["age", "plan", "region"], [])
    train_named(v2_file, ["age", "region", "tenure"], ["region"])
    home = tmp_path_factory.mktemp("signatures") / "home"
    stack = Stack.up(home, bootstrap=bootstrap, namespace=f"t{uuid.uuid4().hex[:10]}")
    try:
        c = stack.client()
        uploaded = c.upload(v1_file)
        c.create(MODEL)
        v1 = c.commit(MODEL, uploaded["sha256"], "v1")["head"]
        v2 = c.commit(MODEL, c.upload(v2_file)["sha256"], "v2")["head"]
        c.set_alias(MODEL, "production", v1)
        yield World(stack, c, v1, v2, uploaded, uploaded["sha256"])
    finally:
        stack.down()


V1 = {
    "format": "lightgbm",
    "inputs": [
        {"name": "age", "type": DOUBLE},
        {"name": "plan", "type": DOUBLE},
        {"name": "region", "type": DOUBLE},
    ],
    "outputs": 1,
}


def test_the_upload_and_the_commit_carry_the_signature_the_server_read(world: World) -> None:
    assert world.uploaded["signature"] == V1
    assert world.client.show(MODEL, world.v1)["signature"] == V1
    v2 = ModelSignature.from_plain(world.client.show(MODEL, world.v2)["signature"])
    assert v2.types() == {"age": DOUBLE, "region": CATEGORICAL, "tenure": DOUBLE}
    # A merge that brings a new model file records that file's signature.
    world.client.create_branch(MODEL, "exp", world.v1)
    world.client.commit(MODEL, world.v1_digest, "v1 again", branch="exp")
    merged = world.client.merge(
        MODEL, "exp", into="main", strategy="theirs", artifact_sha256=world.v1_digest
    )
    assert world.client.show(MODEL, merged["head"])["signature"] == V1
    world.client.rollback(MODEL, "main", world.v2, "keep main at v2 for the other tests")


def test_show_prints_the_signature(world: World) -> None:
    done = world.cli("show", world.v2)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert "signature: lightgbm, 3 input(s), 1 output(s)" in lines
    assert lines[-3:] == [
        "input    age double",
        "input    region categorical",
        "input    tenure double",
    ]


def test_diff_names_added_removed_and_retyped_features(world: World) -> None:
    done = world.cli("diff", world.v1, world.v2)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    for line in (
        "+ feature tenure (double)",
        "- feature plan (double)",
        "~ feature region: double -> categorical",
    ):
        assert line in lines
    assert not any("outputs" in line for line in lines)
    # --json prints the API's answer as it is.
    assert world.client.diff(MODEL, world.v1, world.v2)["signature"] == {
        "added": [{"name": "tenure", "type": DOUBLE}],
        "removed": [{"name": "plan", "type": DOUBLE}],
        "retyped": [{"name": "region", "old": DOUBLE, "new": CATEGORICAL}],
        "outputs": None,
        "format": None,
        "graph": [],
    }


def test_moving_production_to_a_model_that_needs_new_features_is_refused_then_allowed(
    world: World,
) -> None:
    c = world.client
    with pytest.raises(ClientError) as refused:
        c.set_alias(MODEL, "production", world.v2)
    assert refused.value.status == 409
    body = refused.value.body
    assert body["error"] == "signature_change" and body["features"] == ["tenure"]
    # The CLI's message names the features and the command that overrides it.
    done = world.cli("alias", "set", "production", world.v2)
    assert done.returncode != 0 and "'tenure'" in done.stderr, done.stderr
    assert "alias set production" in done.stderr and "--allow-signature-change" in done.stderr
    assert c.resolve(MODEL, "production")["commit"] == world.v1
    # The flag is a JSON boolean: nothing else is taken for true.
    with pytest.raises(ClientError) as junk:
        c.request(
            "PUT",
            f"/v1/models/{MODEL}/aliases/production",
            {"ref": world.v2, "allow_signature_change": "true"},
        )
    assert junk.value.status == 422 and junk.value.body["field"] == "allow_signature_change"

    done = world.cli("--json", "alias", "set", "production", world.v2, "--allow-signature-change")
    assert done.returncode == 0, done.stderr
    assert c.resolve(MODEL, "production")["commit"] == world.v2
    moves = [
        event.payload
        for event in (
            decode_event(r.value)
            for r in read_topic(
                world.stack.settings.access, world.stack.settings.events_topic, idle_timeout=10
            )
            if r.value
        )
        if event is not None and event.model == MODEL and isinstance(event.payload, AliasMoved)
    ]
    assert [(m.to_commit, m.allow_signature_change) for m in moves] == [
        (world.v1, False),
        (world.v2, True),
    ]
