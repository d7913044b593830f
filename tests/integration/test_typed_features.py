"""Typed feature events end to end on one stack: the schema from the service and the CLI,
typed rows published by `modelvc publish` and by a producer with nothing but fastavro,
scored bit for bit as Booster.predict, and a schema that lacks a served feature
dead-lettered with the command that fixes it.

One module-scoped stack (streams app and one worker); each test is a few calls. The
decoding rules themselves are unit-tested (tests/unit/test_typed.py).
"""

from __future__ import annotations

import csv
import io
import json
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fastavro
import lightgbm as lgb
import numpy as np
import pytest
from kafka import KafkaProducer

from modelvc.client import Client
from modelvc.stack import Stack
from streams.codec import DEAD_LETTERS, MAGIC, fingerprint
from streams.core.model_signature import ModelSignature, feature_schema
from streams.logreader import read_topic
from tests.integration.test_audit import cli
from tests.integration.test_workers import predictions, wait_for
from tests.unit.test_typed import fingerprint_by_hand

pytestmark = pytest.mark.broker

MODEL = "churn"
V1 = ["tenure", "spend", "age", "visits"]
V2 = [*V1, "extra"]


def train(path: Path, names: list[str], seed: int) -> lgb.Booster:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(300, len(names)))
    booster = lgb.train(
        {"objective": "binary", "num_leaves": 7, "verbosity": -1, "num_threads": 1},
        lgb.Dataset(x, (x[:, 0] + x[:, 1] > 0).astype(int), feature_name=names),
        num_boost_round=8,
    )
    booster.save_model(str(path))
    return booster


@dataclass
class World:
    stack: Stack
    client: Client
    v1: str  # production
    v2: str  # main: needs "extra" too
    booster: lgb.Booster  # v1's

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return cli(self.stack, *args)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, bootstrap: str) -> Iterator[World]:
    files = tmp_path_factory.mktemp("models")
    booster = train(files / "v1.txt", V1, 1)
    train(files / "v2.txt", V2, 2)
    home = tmp_path_factory.mktemp("typed") / "home"
    stack = Stack.up(home, bootstrap=bootstrap, namespace=f"t{uuid.uuid4().hex[:10]}", workers=1)
    try:
        c = stack.client()
        c.create(MODEL)
        v1 = c.commit(MODEL, c.upload(files / "v1.txt")["sha256"], "v1")["head"]
        v2 = c.commit(MODEL, c.upload(files / "v2.txt")["sha256"], "v2")["head"]
        c.set_alias(MODEL, "production", v1)
        yield World(stack, c, v1, v2, booster)
    finally:
        stack.down()


def test_the_schema_of_a_ref_from_the_api_and_the_cli(world: World) -> None:
    answer = world.client.feature_schema(MODEL)  # default: production
    assert (answer["ref"], answer["commit_id"]) == ("production", world.v1)
    signature = ModelSignature.from_plain(answer["signature"])
    assert signature.names == tuple(V1)
    assert answer["schema"] == feature_schema(signature)
    assert answer["fingerprint"] == fingerprint(answer["schema"]).hex()
    avsc = world.cli("schema", "-M", MODEL, "--avsc")
    assert avsc.returncode == 0, avsc.stderr
    assert json.loads(avsc.stdout) == answer["schema"]
    on_main = json.loads(world.cli("--json", "schema", "-M", MODEL, "--ref", "main").stdout)
    assert on_main["commit_id"] == world.v2
    assert ModelSignature.from_plain(on_main["signature"]).names == tuple(V2)
    unknown = world.cli("schema", "-M", MODEL, "--ref", "nope")
    assert unknown.returncode == 1 and "nope" in unknown.stderr


def scored(world: World, ids: set[str]) -> dict[str, dict[str, Any]]:
    def done() -> dict[str, dict[str, Any]] | None:
        got = {p["feature_event_id"]: p for p in predictions(world.stack)}
        return got if ids <= got.keys() else None

    return wait_for(done, what=f"{len(ids)} predictions")  # type: ignore[no-any-return]


def test_typed_rows_published_by_the_cli_score_bit_equal_to_booster_predict(
    world: World, tmp_path: Path
) -> None:
    x = np.random.default_rng(5).normal(size=(30, len(V1)))
    path = tmp_path / "rows.csv"
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["event_id", *V1])
        writer.writerows([f"cli{i}", *row] for i, row in enumerate(x.tolist()))
    published = world.cli("-M", MODEL, "publish", str(path))
    assert published.returncode == 0, published.stderr
    got = scored(world, {f"cli{i}" for i in range(30)})
    assert [got[f"cli{i}"]["scores"][0] for i in range(30)] == world.booster.predict(x).tolist()
    assert {got[f"cli{i}"]["commit_id"] for i in range(30)} == {world.v1}
    typed = fingerprint(world.client.feature_schema(MODEL)["schema"])
    sent = read_topic(world.stack.settings.access, world.stack.settings.features_topic)
    assert {r.value[2:10] for r in sent if r.value} == {typed}  # typed, not the map form


def produce(world: World, values: list[bytes]) -> None:
    producer = KafkaProducer(bootstrap_servers=world.stack.settings.bootstrap)
    try:
        for value in values:
            producer.send(world.stack.settings.features_topic, key=b"k", value=value)
        producer.flush(30)
    finally:
        producer.close()


def plain_fastavro(schema: dict[str, Any], record: dict[str, Any]) -> bytes:
    """What a producer with fastavro and the schema alone writes (the Avro spec's framing)."""
    out = io.BytesIO()
    out.write(MAGIC + fingerprint_by_hand(schema))
    fastavro.schemaless_writer(out, fastavro.parse_schema(schema), record)
    return out.getvalue()


def record(event_id: str, names: list[str], row: list[float], ref: str | None) -> dict[str, Any]:
    return {
        "event_id": event_id,
        "model": MODEL,
        "ref": ref,
        "entity_key": "k",
        "event_time": 1,
        "features": dict(zip(names, row, strict=True)),
    }


def test_a_producer_with_only_fastavro_and_the_schema_is_scored(world: World) -> None:
    schema = world.client.feature_schema(MODEL)["schema"]
    x = np.random.default_rng(6).normal(size=(10, len(V1)))
    produce(
        world,
        [plain_fastavro(schema, record(f"fa{i}", V1, r, None)) for i, r in enumerate(x.tolist())],
    )
    got = scored(world, {f"fa{i}" for i in range(10)})
    assert [got[f"fa{i}"]["scores"][0] for i in range(10)] == world.booster.predict(x).tolist()


def test_a_typed_event_lacking_a_served_feature_is_dead_lettered_with_the_fix(
    world: World,
) -> None:
    v1_schema = world.client.feature_schema(MODEL)["schema"]
    # Scored by main (v2), which also needs "extra": the producer's schema is v1's.
    produce(world, [plain_fastavro(v1_schema, record("stale", V1, [0.1, 0.2, 0.3, 0.4], "main"))])
    features = world.stack.settings.features_topic

    def letter() -> dict[str, Any] | None:
        for r in read_topic(world.stack.settings.access, world.stack.settings.dead_letter_topic):
            d = DEAD_LETTERS.decode(r.value)
            if d["topic"] == features and b"stale" in (d["value"] or b""):
                return d
        return None

    dead = wait_for(letter, what="the dead letter")
    assert dead["reason"] == (
        "signature_mismatch: the event's schema lacks feature(s) 'extra'; "
        "fetch the current schema: modelvc schema -M churn --ref main"
    )
    assert "stale" not in {p["feature_event_id"] for p in predictions(world.stack)}
