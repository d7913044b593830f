"""Inference workers against a real broker: correct scores, live switches, crashes, bad input."""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import pytest
from kafka import KafkaProducer

from modelvc.client import Client
from modelvc.stack import Stack
from modelvc.streaming import FeatureProducer, feature_event
from streams.codec import DEAD_LETTERS, PREDICTIONS
from streams.logreader import read_topic

pytestmark = pytest.mark.broker
NAMES = [f"f{i}" for i in range(5)]


@pytest.fixture
def serving(tmp_path: Path, bootstrap: str, namespace: str) -> Iterator[Stack]:
    s = Stack.up(tmp_path / "home", bootstrap=bootstrap, namespace=namespace, workers=1)
    try:
        yield s
    finally:
        s.down()


def train(path: Path, seed: int) -> tuple[Path, lgb.Booster]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(400, len(NAMES)))
    y = (x[:, seed % len(NAMES)] > 0).astype(int)
    params = {"objective": "binary", "num_leaves": 7, "verbosity": -1, "num_threads": 1}
    booster = lgb.train(params, lgb.Dataset(x, y, feature_name=NAMES), num_boost_round=10)
    booster.save_model(str(path))
    return path, booster


def rows(n: int, seed: int = 99) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, len(NAMES)))


def features(row: np.ndarray) -> dict[str, float]:
    return dict(zip(NAMES, map(float, row), strict=True))


def predictions(stack: Stack) -> list[dict[str, Any]]:
    topic = stack.settings.predictions_topic
    return [
        PREDICTIONS.decode(r.value) for r in read_topic(stack.settings.bootstrap, topic) if r.value
    ]


def wait_for(condition: Callable[[], Any], timeout: float = 60.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def serving_commit(stack: Stack, worker: str = "worker-1") -> dict[str, str]:
    with urllib.request.urlopen(stack.worker_url(worker) + "/healthz", timeout=5) as response:
        return dict(json.load(response)["serving"])


def setup_model(stack: Stack, tmp_path: Path) -> tuple[Client, list[str], list[lgb.Booster]]:
    c = Client(stack.url)
    c.create("churn")
    heads, boosters = [], []
    for i, seed in enumerate((1, 2)):
        path, booster = train(tmp_path / f"v{i}.txt", seed)
        heads.append(c.commit("churn", c.upload(path)["sha256"], f"v{i}")["head"])
        boosters.append(booster)
    return c, heads, boosters


def test_predictions_carry_the_commit_and_equal_booster_predict(
    serving: Stack, tmp_path: Path
) -> None:
    c, heads, boosters = setup_model(serving, tmp_path)
    c.set_alias("churn", "production", heads[0])
    x = rows(300)
    with FeatureProducer(serving.settings.bootstrap, serving.settings.features_topic) as producer:
        for i, row in enumerate(x):
            producer.publish("churn", features(row), entity_key=f"e{i % 17}", event_id=f"ev{i}")
        for i, row in enumerate(x[:20]):
            producer.publish("churn", features(row), ref="main", event_id=f"main{i}")
    got = wait_for(
        lambda: (p := predictions(serving)) and len(p) >= 320 and p, what="320 predictions"
    )
    by_id = {p["feature_event_id"]: p for p in got}
    expected_v0, expected_v1 = boosters[0].predict(x), boosters[1].predict(x[:20])
    for i in range(300):
        p = by_id[f"ev{i}"]
        assert (p["commit_id"], p["requested_ref"], p["scores"]) == (
            heads[0],
            "production",
            [expected_v0[i]],
        )
        assert p["source_topic"] == serving.settings.features_topic and p["source_offset"] >= 0
    for i in range(20):
        assert by_id[f"main{i}"]["commit_id"] == heads[1]
        assert by_id[f"main{i}"]["scores"] == [expected_v1[i]]
    # the HTTP endpoint resolves and scores exactly like the stream
    body = json.dumps({"features": features(x[0])}).encode()
    request = urllib.request.Request(
        serving.worker_url() + "/v1/models/churn/predict",
        data=body,
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        answer = json.load(response)
    assert answer["commit_id"] == heads[0] and answer["scores"] == [expected_v0[0]]


def test_rollback_while_events_flow_switches_without_mixing(serving: Stack, tmp_path: Path) -> None:
    c, heads, _ = setup_model(serving, tmp_path)
    c.set_alias("churn", "production", heads[1])
    stop = threading.Event()
    sent: list[str] = []

    def flow() -> None:
        x = rows(50)
        with FeatureProducer(serving.settings.bootstrap, serving.settings.features_topic, 0) as p:
            i = 0
            while not stop.is_set():
                sent.append(p.publish("churn", features(x[i % 50]), entity_key=f"e{i % 7}"))
                i += 1
                if i % 50 == 0:
                    p.flush()
                    time.sleep(0.02)

    producer = threading.Thread(target=flow)
    producer.start()
    try:
        wait_for(lambda: serving_commit(serving).get("churn@production") == heads[1], what="v1")
        time.sleep(1.0)
        c.set_alias("churn", "production", heads[0], expect=heads[1])  # the rollback
        wait_for(lambda: serving_commit(serving).get("churn@production") == heads[0], what="switch")
        switched_ms = int(time.time() * 1000)
        time.sleep(1.5)
    finally:
        stop.set()
        producer.join()
    got = wait_for(lambda: (p := predictions(serving)) and len(p) >= len(sent) and p, what="all")
    batches: dict[tuple[str, int], set[str]] = defaultdict(set)
    for p in got:
        batches[(p["worker_id"], p["scored_at"])].add(p["commit_id"])
    assert all(len(commits) == 1 for commits in batches.values()), "a batch mixed versions"
    after = [p for p in got if p["event_time"] > switched_ms]
    assert after and all(p["commit_id"] == heads[0] for p in after)
    assert {p["commit_id"] for p in got} == set(heads)


def test_a_missing_artifact_keeps_the_old_version_and_is_retried(
    serving: Stack, tmp_path: Path
) -> None:
    c, heads, _ = setup_model(serving, tmp_path)
    c.set_alias("churn", "production", heads[0])
    with FeatureProducer(serving.settings.bootstrap, serving.settings.features_topic) as p:
        p.publish("churn", features(rows(1)[0]))
    wait_for(lambda: serving_commit(serving).get("churn@production") == heads[0], what="v0")
    digest = c.show("churn", heads[1])["artifact_sha256"]
    stored = serving.settings.artifact_root / "sha256" / digest[:2] / digest
    original = stored.read_bytes()
    stored.write_bytes(original + b"tampered")
    c.set_alias("churn", "production", heads[1])

    def failures() -> float:
        with urllib.request.urlopen(serving.worker_url() + "/metrics", timeout=5) as response:
            text = response.read().decode()
        lines = [ln for ln in text.splitlines() if ln.startswith("modelvc_artifact_failures_total")]
        return float(lines[0].rsplit(" ", 1)[1]) if lines else 0.0

    wait_for(lambda: failures() >= 2, what="retried load failures")
    assert serving_commit(serving)["churn@production"] == heads[0]  # still serving the old one
    stored.write_bytes(original)
    wait_for(lambda: serving_commit(serving).get("churn@production") == heads[1], what="recovery")


def test_kill_9_a_worker_mid_stream_loses_nothing(serving: Stack, tmp_path: Path) -> None:
    setup_model(serving, tmp_path)
    x = rows(200)
    ids = [f"ev{i}" for i in range(3000)]
    with FeatureProducer(serving.settings.bootstrap, serving.settings.features_topic) as p:
        for i, event_id in enumerate(ids[:1500]):
            p.publish("churn", features(x[i % 200]), entity_key=f"e{i % 13}", event_id=event_id)
    wait_for(lambda: len(predictions(serving)) > 100, what="first predictions")
    serving.restart_worker("worker-1", hard=True)
    with FeatureProducer(serving.settings.bootstrap, serving.settings.features_topic) as p:
        for i, event_id in enumerate(ids[1500:], start=1500):
            p.publish("churn", features(x[i % 200]), entity_key=f"e{i % 13}", event_id=event_id)
    got = wait_for(
        lambda: (
            (p := predictions(serving)) and {q["feature_event_id"] for q in p} >= set(ids) and p
        ),
        timeout=120,
        what="a prediction for every event",
    )
    by_id: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for p in got:
        by_id[p["feature_event_id"]].append(p)
    for repeats in by_id.values():
        assert len({(p["prediction_id"], p["commit_id"], tuple(p["scores"])) for p in repeats}) == 1


def test_each_kind_of_bad_input_lands_in_the_dead_letter_topic(
    serving: Stack, tmp_path: Path
) -> None:
    setup_model(serving, tmp_path)
    good = features(rows(1)[0])
    bad = {
        "missing_feature": feature_event("churn", {k: v for k, v in good.items() if k != "f3"}),
        "non_finite_value": feature_event("churn", {**good, "f1": float("inf")}),
        "wrong_type": feature_event("churn", {**good, "f2": "high"}),
        "unknown_model": feature_event("nope", good),
        "unknown_ref": feature_event("churn", good, ref="no-such-branch"),
    }
    producer = KafkaProducer(bootstrap_servers=serving.settings.bootstrap)
    topic = serving.settings.features_topic
    with FeatureProducer(serving.settings.bootstrap, topic) as p:
        p.publish("churn", good, event_id="before")
        for event in bad.values():
            p.send(event)
        p.publish("churn", good, event_id="after")
    producer.send(topic, key=b"x", value=b"definitely not avro").get(10)
    producer.close()

    def letters() -> dict[str, dict[str, Any]]:
        found = [
            DEAD_LETTERS.decode(r.value)
            for r in read_topic(serving.settings.bootstrap, serving.settings.dead_letter_topic)
            if r.value
        ]
        return {d["reason"].split(":", 1)[0]: d for d in found if d["stage"] == "worker"}

    found = wait_for(lambda: (d := letters()) and len(d) >= 6 and d, what="six dead letters")
    assert set(found) == {*bad, "undecodable"}
    assert found["undecodable"]["value"] == b"definitely not avro"
    for reason, event in bad.items():
        assert found[reason]["topic"] == topic and found[reason]["offset"] >= 0
        assert event["event_id"].encode() in found[reason]["value"]
    scored = {p["feature_event_id"] for p in predictions(serving)}
    assert {"before", "after"} <= scored


def test_two_workers_in_one_group_share_the_partitions(serving: Stack, tmp_path: Path) -> None:
    serving.add_worker("worker-2")
    setup_model(serving, tmp_path)
    time.sleep(8)  # let the group rebalance onto both members (6 s session timeout)
    x = rows(100)
    ids = [f"ev{i}" for i in range(2000)]
    with FeatureProducer(serving.settings.bootstrap, serving.settings.features_topic) as p:
        for i, event_id in enumerate(ids):
            p.publish("churn", features(x[i % 100]), entity_key=f"entity-{i}", event_id=event_id)
    got = wait_for(
        lambda: (
            (p := predictions(serving)) and {q["feature_event_id"] for q in p} >= set(ids) and p
        ),
        timeout=120,
        what="every event scored",
    )
    assert {p["worker_id"] for p in got} == {"worker-1", "worker-2"}
