"""Auditing a real deployment: replay equals live, point in time, served, re-scoring, restarts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaProducer

from modelvc import audit
from modelvc.client import Client
from modelvc.stack import Stack
from modelvc.streaming import FeatureProducer
from streams.codec import PREDICTIONS, encode_event
from streams.logreader import read_topic
from streams.settings import Settings
from streams.topics import ensure_topics
from tests.conftest import train_model
from tests.integration.test_service import history
from tests.integration.test_workers import wait_for
from workers.artifacts import ArtifactLoader

pytestmark = pytest.mark.broker


def cli(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MODELVC_HOME": str(stack.home), "MODELVC_URL": stack.url}
    return subprocess.run(
        [sys.executable, "-m", "modelvc.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=180,
    )


@pytest.fixture
def serving(tmp_path: Path, bootstrap: str, namespace: str) -> Any:
    s = Stack.up(tmp_path / "home", bootstrap=bootstrap, namespace=namespace, workers=1)
    try:
        yield s
    finally:
        s.down()


def test_replay_equals_live_before_and_after_a_restart(serving: Stack, tmp_path: Path) -> None:
    c = Client(serving.url)
    history(c, "churn", [train_model(tmp_path / "a.txt", 1), train_model(tmp_path / "b.txt", 2)])
    done = cli(serving, "--json", "audit", "replay")
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout)
    assert report["violations"] == [] and report["digest"] == report["live_digest"]
    assert report["events"] == 10  # one per command of the history
    serving.restart_streams()
    after = audit.replay(serving.settings.access, serving.settings.events_topic)
    assert after.digest == Client(serving.url).digest()["digest"]


def test_a_tampered_log_fails_replay_naming_the_first_bad_event(
    tmp_path: Path, bootstrap: str, namespace: str
) -> None:
    from tests.unit.test_audit import events

    values = [encode_event(e) for e in events()]
    value = bytearray(values[4])
    value[value.index(b"golden")] ^= 0x01
    values[4] = bytes(value)
    settings = Settings.namespaced(namespace, bootstrap=bootstrap)
    topic = settings.events_topic
    # Created as modelvc creates it: Apache Kafka runs with auto.create.topics.enable=false.
    ensure_topics(settings)
    producer = KafkaProducer(bootstrap_servers=bootstrap)
    # Keyed by model, as the streams app writes: the model's home partition.
    placed = {producer.send(topic, key=b"churn", value=v).get(10).partition for v in values}
    producer.close()
    (partition,) = placed
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP": bootstrap,
        "MODELVC_NAMESPACE": namespace,
        "MODELVC_HOME": str(tmp_path),
    }
    done = subprocess.run(
        [sys.executable, "-m", "modelvc.cli", "audit", "replay", "--no-live"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 1
    assert f"broken_hash  churn#5  {topic}[{partition}]@4" in done.stdout


def test_point_in_time_log_and_refs(serving: Stack, model_file: Path) -> None:
    c = Client(serving.url)
    digest = c.upload(model_file)["sha256"]
    c.create("pit")
    first = c.commit("pit", digest, "one")
    c.set_alias("pit", "production", "main")
    time.sleep(0.05)
    moment = datetime.now(UTC).isoformat()
    time.sleep(0.05)
    second = c.commit("pit", digest, "two")
    c.set_alias("pit", "production", "main")
    then = c.refs("pit", as_of=moment)
    assert (
        then["branches"]["main"] == first["head"] and then["aliases"]["production"] == first["head"]
    )
    assert [x["message"] for x in c.log("pit", as_of=str(first["offset"]))["commits"]] == ["one"]
    assert c.refs("pit")["aliases"]["production"] == second["head"]
    out = cli(serving, "-M", "pit", "refs", "--as-of", str(first["offset"]))
    assert out.returncode == 0 and out.stdout.split("aliases:")[1].split() == ["(none)"]


def test_served_and_verify_predictions(serving: Stack, tmp_path: Path) -> None:
    import numpy as np

    c = Client(serving.url, actor="auditor-test")
    c.create("churn")
    path = train_model(tmp_path / "m.txt", 3)
    head = c.commit("churn", c.upload(path)["sha256"], "v1")["head"]
    c.set_alias("churn", "production", "main")
    x = np.random.default_rng(5).normal(size=(60, 4))
    with FeatureProducer(serving.settings.bootstrap, serving.settings.features_topic) as p:
        for i, row in enumerate(x):
            p.publish(
                "churn", {f"Column_{j}": float(v) for j, v in enumerate(row)}, event_id=f"a{i}"
            )

    def preds() -> list[dict[str, Any]]:
        return [
            PREDICTIONS.decode(r.value)
            for r in read_topic(serving.settings.access, serving.settings.predictions_topic)
            if r.value
        ]

    got = wait_for(lambda: (p := preds()) and len(p) >= 60 and p)
    done = cli(serving, "--json", "audit", "served", got[0]["prediction_id"])
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert answer["commit"]["id"] == head
    assert answer["ref_move"]["event"] == "AliasMoved" and answer["ref_move"]["to"] == head
    assert answer["ref_move"]["actor"] == "auditor-test"

    clean = cli(serving, "audit", "verify-predictions", "--all")
    assert clean.returncode == 0 and "60 predictions" in clean.stdout and "0 differ" in clean.stdout

    altered = dict(got[7])
    altered["scores"] = [altered["scores"][0] + 1e-12]
    producer = KafkaProducer(bootstrap_servers=serving.settings.bootstrap)
    producer.send(serving.settings.predictions_topic, PREDICTIONS.encode(altered)).get(10)
    producer.close()
    loader = ArtifactLoader(serving.settings.artifact_root)
    result = audit.verify_predictions(
        serving.settings.access,
        serving.settings.events_topic,
        serving.settings.predictions_topic,
        loader,
    )
    assert [m.prediction_id for m in result.mismatches] == [altered["prediction_id"]]
    assert 0 < result.largest_difference < 1e-9
    failed = cli(serving, "audit", "verify-predictions", "--all")
    assert failed.returncode == 1 and altered["prediction_id"] in failed.stdout


def test_stopping_and_starting_the_embedded_stack_keeps_history(tmp_path: Path) -> None:
    import numpy as np

    home = tmp_path / "home"
    stack = Stack.up(home, workers=1)  # its own embedded broker: memory only
    try:
        c = Client(stack.url)
        c.create("churn")
        path = train_model(tmp_path / "m.txt", 1)
        digest = c.upload(path)["sha256"]
        c.commit("churn", digest, "v1")
        c.create_branch("churn", "exp")
        head = c.commit("churn", digest, "v2", branch="exp")["head"]
        c.set_alias("churn", "production", "exp")
        before = c.digest()["digest"]
        log_before = c.log("churn")
    finally:
        stack.down()
    stack = Stack.up(home, workers=1)  # a fresh, empty broker: history comes from the archive
    try:
        assert stack.restored == 5
        c = Client(stack.url)
        assert c.digest()["digest"] == before and c.log("churn") == log_before
        nxt = c.commit("churn", digest, "v3", branch="exp")
        assert nxt["seq"] == 6
        replayed = audit.replay(stack.settings.access, stack.settings.events_topic)
        assert replayed.clean and replayed.digest == c.digest()["digest"]
        with FeatureProducer(stack.settings.bootstrap, stack.settings.features_topic) as p:
            p.publish("churn", {f"Column_{j}": 0.1 for j in range(4)}, event_id="after-restart")
        pred = wait_for(
            lambda: [
                PREDICTIONS.decode(r.value)
                for r in read_topic(stack.settings.access, stack.settings.predictions_topic)
                if r.value
            ]
        )
        assert pred[0]["commit_id"] == head  # production still serves what it served
        assert np.isfinite(pred[0]["scores"][0])
    finally:
        stack.down()
    from_archive = audit.replay(None, "modelvc.events", home / "archive")
    assert from_archive.clean and from_archive.auditor.events == 6
