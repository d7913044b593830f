"""Auditing a real deployment: replay equals live, point in time, served, re-scoring, restarts.
What a stranger with write access to Kafka can slip in is test_audit_forgery.py's."""

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
from modelvc.stack import Stack
from modelvc.streaming import FeatureProducer
from streams.artifacts import open_store
from streams.codec import PREDICTIONS, decode_event
from streams.core.events import ModelEvent
from streams.kafka_access import KafkaAccess, negotiate_sync
from streams.logreader import read_topic
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


# The module's tests share one stack with a worker (module_serving), each on a model of its
# own: replay and the digests cover every model in the log, whatever the others wrote.
def test_replay_equals_live_before_and_after_a_restart(
    module_serving: Stack, model: str, tmp_path: Path
) -> None:
    stack = module_serving
    c = stack.client()
    history(c, model, [train_model(tmp_path / "a.txt", 1), train_model(tmp_path / "b.txt", 2)])
    done = cli(stack, "--json", "audit", "replay")
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout)
    assert report["violations"] == [] and report["digest"] == report["live_digest"]
    assert len(chain(stack, model)) == 10  # one per command of the history
    stack.restart_streams()
    after = audit.replay(stack.settings.access, stack.settings.events_topic)
    assert after.digest == stack.client().digest()["digest"]


def test_point_in_time_log_and_refs(module_serving: Stack, model: str, model_file: Path) -> None:
    stack = module_serving
    pit = model
    c = stack.client()
    digest = c.upload(model_file)["sha256"]
    c.create(pit)
    first = c.commit(pit, digest, "one")
    c.set_alias(pit, "production", "main")
    time.sleep(0.05)
    moment = datetime.now(UTC).isoformat()
    time.sleep(0.05)
    second = c.commit(pit, digest, "two")
    c.set_alias(pit, "production", "main")
    then = c.refs(pit, as_of=moment)
    assert (
        then["branches"]["main"] == first["head"] and then["aliases"]["production"] == first["head"]
    )
    assert [x["message"] for x in c.log(pit, as_of=str(first["offset"]))["commits"]] == ["one"]
    assert c.refs(pit)["aliases"]["production"] == second["head"]
    out = cli(stack, "-M", pit, "refs", "--as-of", str(first["offset"]))
    assert out.returncode == 0 and out.stdout.split("aliases:")[1].split() == ["(none)"]


def test_served_and_verify_predictions(module_serving: Stack, model: str, tmp_path: Path) -> None:
    import numpy as np

    serving = module_serving
    c = serving.client()
    c.create(model)
    path = train_model(tmp_path / "m.txt", 3)
    head = c.commit(model, c.upload(path)["sha256"], "v1")["head"]
    c.set_alias(model, "production", "main")
    x = np.random.default_rng(5).normal(size=(60, 4))
    with FeatureProducer(serving.settings.bootstrap, serving.settings.features_topic) as p:
        for i, row in enumerate(x):
            p.publish(model, {f"Column_{j}": float(v) for j, v in enumerate(row)}, event_id=f"a{i}")

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
    assert answer["ref_move"]["actor"] == c.whoami()["actor"]  # the token's, not a claim

    clean = cli(serving, "audit", "verify-predictions", "--all")
    assert clean.returncode == 0 and "60 predictions" in clean.stdout and "0 differ" in clean.stdout

    altered = dict(got[7])
    altered["scores"] = [altered["scores"][0] + 1e-12]
    append(serving.settings.access, serving.settings.predictions_topic, PREDICTIONS.encode(altered))
    loader = ArtifactLoader(open_store(serving.settings.artifacts))
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
        c = stack.client()
        c.create("churn")
        path = train_model(tmp_path / "m.txt", 1)
        digest = c.upload(path)["sha256"]
        c.commit("churn", digest, "v1")
        c.create_branch("churn", "exp")
        head = c.commit("churn", digest, "v2", branch="exp")["head"]
        c.set_alias("churn", "production", "exp")
        before = c.digest()["digest"]
        log_before = c.log("churn")
        # The model's 5 events, and the system chains' (tokens, each partition's writer key).
        logged = audit.replay(stack.settings.access, stack.settings.events_topic).events
    finally:
        stack.down()
    stack = Stack.up(home, workers=1)  # a fresh, empty broker: history comes from the archive
    try:
        assert stack.restored == logged
        c = stack.client()
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
    assert from_archive.clean and from_archive.auditor is not None
    assert from_archive.auditor.fold.models["churn"].seq == 6
    assert from_archive.digest == replayed.digest


# -- what a stranger who can write to Kafka can slip in -------------------------------------
def append(access: KafkaAccess, topic: str, value: bytes, partition: int | None = None) -> int:
    """Write ``value`` straight to ``topic``, as anyone with broker access can; its offset."""
    producer = KafkaProducer(**negotiate_sync(access).producer())
    try:
        return int(producer.send(topic, value, partition=partition).get(10).offset)
    finally:
        producer.close()


def chain(stack: Stack, model: str) -> list[tuple[ModelEvent, int, int]]:
    """The model's events as the log holds them: (event, partition, offset)."""
    out = []
    for r in read_topic(stack.settings.access, stack.settings.events_topic, idle_timeout=10):
        event = decode_event(r.value) if r.value else None
        if event is not None and event.model == model:
            out.append((event, r.partition, r.offset))
    return out
