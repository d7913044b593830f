"""Inference workers against a real broker: correct scores, live switches, crashes, bad input."""

from __future__ import annotations

import json
import os
import signal
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
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from modelvc.client import Client
from modelvc.stack import Stack
from modelvc.streaming import FeatureProducer, feature_event
from streams.artifacts.store import key_for
from streams.codec import DEAD_LETTERS, PREDICTIONS
from streams.logreader import read_topic
from workers.metrics import CONTENT_TYPE_LATEST, sample_sum
from workers.settings import WorkerSettings

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
        PREDICTIONS.decode(r.value) for r in read_topic(stack.settings.access, topic) if r.value
    ]


def wait_for(condition: Callable[[], Any], timeout: float = 60.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def scrape(stack: Stack, worker: str = "worker-1") -> str:
    """The worker's /metrics, checked to be the Prometheus text format."""
    with urllib.request.urlopen(stack.worker_url(worker) + "/metrics", timeout=5) as response:
        assert response.headers["Content-Type"] == CONTENT_TYPE_LATEST
        return str(response.read().decode())


def healthz(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url + "/healthz", timeout=5) as response:
        return dict(json.load(response))


def serving_commit(stack: Stack, worker: str = "worker-1") -> dict[str, str]:
    return dict(healthz(stack.worker_url(worker))["serving"])


def setup_model(stack: Stack, tmp_path: Path) -> tuple[Client, list[str], list[lgb.Booster]]:
    c = stack.client()
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
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {serving.token}"},
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        answer = json.load(response)
    assert answer["commit_id"] == heads[0] and answer["scores"] == [expected_v0[0]]
    # Counted under one label set, by path; a prediction is counted before it is produced.
    text = scrape(serving)
    assert sample_sum(text, "modelvc_predictions_total", path="stream") == 320
    assert sample_sum(text, "modelvc_predictions_total", commit=heads[1], path="stream") == 20
    assert sample_sum(text, "modelvc_predictions_total", commit=heads[0], path="http") == 1
    assert sample_sum(text, "modelvc_serving_info", model="churn", ref="main") == 1


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
    stored = Path(serving.settings.artifacts) / key_for(digest)
    original = stored.read_bytes()
    stored.write_bytes(original + b"tampered")
    c.set_alias("churn", "production", heads[1])

    def failures() -> float:
        return sample_sum(scrape(serving), "modelvc_artifact_failures_total", model="churn")

    wait_for(lambda: failures() >= 2, what="retried load failures")
    assert serving_commit(serving)["churn@production"] == heads[0]  # still serving the old one
    stored.write_bytes(original)
    wait_for(lambda: serving_commit(serving).get("churn@production") == heads[1], what="recovery")


CRASH_AT = 3  # the batch a worker is SIGKILLed after: produced, acknowledged, not committed


def exit_status(pid: int, timeout: float) -> int | None:
    """Reap our child ``pid``: its wait status, or None while it still runs after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        waited, status = os.waitpid(pid, os.WNOHANG)
        if waited == pid:
            return status
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.05)


def committed_offsets(bootstrap: str, group: str, topic: str) -> dict[int, int]:
    """The group's committed offsets on ``topic``, read without joining the group."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    try:
        partitions = consumer.partitions_for_topic(topic) or set()
        offsets = {p: consumer.committed(TopicPartition(topic, p)) for p in partitions}
    finally:
        consumer.close()
    return {p: offset for p, offset in offsets.items() if offset is not None}


def test_kill_9_between_produce_and_commit_loses_nothing(
    stack: Stack, tmp_path: Path, namespace: str, monkeypatch: pytest.MonkeyPatch, broker_kind: str
) -> None:
    """The worker SIGKILLs itself in the one window that matters, every time (fault hook).

    At-least-once (Tansu) scores the crashed batch again; exactly-once (Apache Kafka) never
    shows its predictions to a read_committed reader, and shows each event's once."""
    setup_model(stack, tmp_path)
    monkeypatch.setenv("MODELVC_WORKER_FAULT", f"crash_before_commit:{CRASH_AT}")
    worker = stack.add_worker("worker-1")
    monkeypatch.delenv("MODELVC_WORKER_FAULT")  # the restarted worker runs without it
    delivery = healthz(stack.worker_url())["delivery"]
    assert delivery == {"tansu": "at-least-once", "kafka": "exactly-once"}[broker_kind]
    settings = stack.settings
    x = rows(200)
    sent: list[str] = []
    status: int | None = None

    def publish(count: int) -> set[str]:
        ids = [f"ev{len(sent) + i}" for i in range(count)]
        with FeatureProducer(settings.bootstrap, settings.features_topic) as p:
            for i, event_id in enumerate(ids, start=len(sent)):
                p.publish("churn", features(x[i % 200]), entity_key=f"e{i % 13}", event_id=event_id)
        sent.extend(ids)
        return set(ids)

    # Each round is scored, in one batch or more, before the next is sent: batch CRASH_AT
    # comes by round CRASH_AT at the latest.
    for _ in range(CRASH_AT):
        ids = publish(200)

        def settled(ids: set[str] = ids) -> bool:
            nonlocal status
            status = exit_status(worker.pid, 0)
            return status is not None or {p["feature_event_id"] for p in predictions(stack)} >= ids

        wait_for(settled, what="a round scored, or the worker gone")
        if status is not None:
            break
    status = status if status is not None else exit_status(worker.pid, 30)
    assert status is not None, f"the fault hook did not fire by batch {CRASH_AT}"
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, status
    assert f"crash_before_commit:{CRASH_AT}: SIGKILL" in Path(worker.log).read_text()
    # Died that way: the last batch's predictions are in the topic, its offsets are not
    # committed (the batches before it are).
    group = WorkerSettings.from_env({"MODELVC_NAMESPACE": namespace}).group_id
    committed = committed_offsets(settings.bootstrap, group, settings.features_topic)
    assert committed, "the batches before the crash were committed"
    uncommitted = {
        p["feature_event_id"]
        for p in predictions(stack)
        if p["source_offset"] >= committed.get(p["source_partition"], 0)
    }
    if delivery == "exactly-once":
        # Produced in a transaction that never commits: read_committed never sees it.
        assert not uncommitted, "a prediction of the crashed batch is visible"
    else:
        assert uncommitted, "the crashed batch was produced before the kill"

    stack.restart_worker("worker-1")
    publish(200)
    got = wait_for(
        lambda: (p := predictions(stack)) and {q["feature_event_id"] for q in p} >= set(sent) and p,
        timeout=120,
        what="a prediction for every event",
    )
    by_id: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for p in got:
        by_id[p["feature_event_id"]].append(p)
    assert set(by_id) == set(sent)  # none lost
    assert all(len(by_id[event_id]) >= 2 for event_id in uncommitted)  # scored again
    if delivery == "exactly-once":
        assert all(len(repeats) == 1 for repeats in by_id.values())
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
            for r in read_topic(serving.settings.access, serving.settings.dead_letter_topic)
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
    # Ready means assigned: worker-2's first partitions come from a rebalance that
    # worker-1 took part in (or was evicted from), so no fixed wait is needed here.
    serving.add_worker("worker-2")
    setup_model(serving, tmp_path)
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
