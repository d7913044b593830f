"""Inference workers against a real broker: correct scores, live switches, crashes, bad input.

The tests share one stack with one worker (``module_serving``, worker-1): each keeps to a
model of its own (``model``) and looks only at its own predictions, metrics and dead
letters. The worker-group tests put back what they change: the second worker is
stopped, the worker killed -9 is started again (without its fault hook).
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import urllib.request
from collections import defaultdict
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from modelvc.client import Client
from modelvc.processes import stop
from modelvc.stack import Stack
from modelvc.streaming import FeatureProducer, feature_event
from streams.artifacts.store import key_for
from streams.codec import DEAD_LETTERS, PREDICTIONS
from streams.logreader import read_topic
from workers.metrics import CONTENT_TYPE_LATEST, sample_sum
from workers.settings import WorkerSettings

pytestmark = pytest.mark.broker
NAMES = [f"f{i}" for i in range(5)]


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


def predictions(stack: Stack, model: str | None = None) -> list[dict[str, Any]]:
    """Every prediction in the stack's topic; only ``model``'s when given."""
    topic = stack.settings.predictions_topic
    found = [
        PREDICTIONS.decode(r.value) for r in read_topic(stack.settings.access, topic) if r.value
    ]
    return found if model is None else [p for p in found if p["model"] == model]


def wait_scored(stack: Stack, model: str, event_ids: Iterable[str]) -> list[dict[str, Any]]:
    """The model's predictions, once there is one for every event of ``event_ids``."""
    wanted = set(event_ids)
    return wait_for(
        lambda: (
            (p := predictions(stack, model)) and {q["feature_event_id"] for q in p} >= wanted and p
        ),
        timeout=120,
        what="a prediction for every event",
    )


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


def setup_model(
    stack: Stack, tmp_path: Path, model: str = "churn", seeds: tuple[int, ...] = (1, 2)
) -> tuple[Client, list[str], list[lgb.Booster]]:
    """``model`` with a commit on main per seed (v0, v1, ...): the client, heads, boosters.

    The same seed gives the same artifact (digest), which a worker loads once."""
    c = stack.client()
    c.create(model)
    heads, boosters = [], []
    for i, seed in enumerate(seeds):
        path, booster = train(tmp_path / f"v{i}.txt", seed)
        heads.append(c.commit(model, c.upload(path)["sha256"], f"v{i}")["head"])
        boosters.append(booster)
    return c, heads, boosters


def test_predictions_carry_the_commit_and_equal_booster_predict(
    module_serving: Stack, model: str, tmp_path: Path
) -> None:
    serving = module_serving
    c, heads, boosters = setup_model(serving, tmp_path, model)
    c.set_alias(model, "production", heads[0])
    x = rows(300)
    with FeatureProducer(serving.settings.bootstrap, serving.settings.features_topic) as producer:
        for i, row in enumerate(x):
            producer.publish(model, features(row), entity_key=f"e{i % 17}", event_id=f"ev{i}")
        for i, row in enumerate(x[:20]):
            producer.publish(model, features(row), ref="main", event_id=f"main{i}")
    got = wait_for(
        lambda: (p := predictions(serving, model)) and len(p) >= 320 and p, what="320 predictions"
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
        serving.worker_url() + f"/v1/models/{model}/predict",
        data=body,
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {serving.token}"},
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        answer = json.load(response)
    assert answer["commit_id"] == heads[0] and answer["scores"] == [expected_v0[0]]
    # Counted under one label set, by path; a prediction is counted before it is produced.
    # (The worker is shared: its counters are read for this test's model only.)
    text = scrape(serving)
    assert sample_sum(text, "modelvc_predictions_total", model=model, path="stream") == 320
    assert (
        sample_sum(text, "modelvc_predictions_total", model=model, commit=heads[1], path="stream")
        == 20
    )
    assert (
        sample_sum(text, "modelvc_predictions_total", model=model, commit=heads[0], path="http")
        == 1
    )
    assert sample_sum(text, "modelvc_serving_info", model=model, ref="main") == 1


def test_rollback_while_events_flow_switches_without_mixing(
    module_serving: Stack, model: str, tmp_path: Path
) -> None:
    serving = module_serving
    c, heads, _ = setup_model(serving, tmp_path, model)
    c.set_alias(model, "production", heads[1])
    stop_flow = threading.Event()
    sent: list[str] = []

    def flow() -> None:
        x = rows(50)
        with FeatureProducer(serving.settings.bootstrap, serving.settings.features_topic, 0) as p:
            i = 0
            while not stop_flow.is_set():
                sent.append(p.publish(model, features(x[i % 50]), entity_key=f"e{i % 7}"))
                i += 1
                if i % 50 == 0:
                    p.flush()
                    time.sleep(0.02)

    served = f"{model}@production"
    producer = threading.Thread(target=flow)
    producer.start()
    try:
        wait_for(lambda: serving_commit(serving).get(served) == heads[1], what="v1")
        time.sleep(1.0)
        c.set_alias(model, "production", heads[0], expect=heads[1])  # the rollback
        wait_for(lambda: serving_commit(serving).get(served) == heads[0], what="switch")
        switched_ms = int(time.time() * 1000)
        time.sleep(1.5)
    finally:
        stop_flow.set()
        producer.join()
    got = wait_for(
        lambda: (p := predictions(serving, model)) and len(p) >= len(sent) and p, what="all"
    )
    batches: dict[tuple[str, int], set[str]] = defaultdict(set)
    for p in got:
        batches[(p["worker_id"], p["scored_at"])].add(p["commit_id"])
    assert all(len(commits) == 1 for commits in batches.values()), "a batch mixed versions"
    after = [p for p in got if p["event_time"] > switched_ms]
    assert after and all(p["commit_id"] == heads[0] for p in after)
    assert {p["commit_id"] for p in got} == set(heads)


def test_a_missing_artifact_keeps_the_old_version_and_is_retried(
    module_serving: Stack, model: str, tmp_path: Path
) -> None:
    serving = module_serving
    # v1's artifact is one no other test here commits (seed 3): a digest the shared
    # worker loaded before would be served from memory, whatever the store holds.
    c, heads, _ = setup_model(serving, tmp_path, model, seeds=(1, 3))
    c.set_alias(model, "production", heads[0])
    served = f"{model}@production"
    with FeatureProducer(serving.settings.bootstrap, serving.settings.features_topic) as p:
        p.publish(model, features(rows(1)[0]))
    wait_for(lambda: serving_commit(serving).get(served) == heads[0], what="v0")
    digest = c.show(model, heads[1])["artifact_sha256"]
    stored = Path(serving.settings.artifacts) / key_for(digest)
    original = stored.read_bytes()
    stored.write_bytes(original + b"tampered")
    try:
        c.set_alias(model, "production", heads[1])

        def failures() -> float:
            return sample_sum(scrape(serving), "modelvc_artifact_failures_total", model=model)

        wait_for(lambda: failures() >= 2, what="retried load failures")
        assert serving_commit(serving)[served] == heads[0]  # still serving the old one
    finally:
        stored.write_bytes(original)
    wait_for(lambda: serving_commit(serving).get(served) == heads[1], what="recovery")


CRASH_AT = 3  # the batch a worker is SIGKILLed after: produced, acknowledged, not committed
FAULT = "MODELVC_WORKER_FAULT"


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


def end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    """Where the next message of each partition of ``topic`` will be written."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    try:
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        return {tp.partition: offset for tp, offset in consumer.end_offsets(partitions).items()}
    finally:
        consumer.close()


def test_kill_9_between_produce_and_commit_loses_nothing(
    module_serving: Stack,
    model: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    broker_kind: str,
) -> None:
    """The worker SIGKILLs itself in the one window that matters, every time (fault hook).

    At-least-once (Tansu) scores the crashed batch again; exactly-once (Apache Kafka) never
    shows its predictions to a read_committed reader, and shows each event's once.

    The shared worker-1 is restarted with the hook, and restarted without it after the
    crash (in ``finally`` too, should the test fail before): later tests find it as it was."""
    stack = module_serving
    settings = stack.settings
    setup_model(stack, tmp_path, model)
    group = WorkerSettings.from_env({"MODELVC_NAMESPACE": settings.namespace}).group_id
    monkeypatch.setenv(FAULT, f"crash_before_commit:{CRASH_AT}")
    restarted = False
    try:
        stack.restart_worker("worker-1")
        monkeypatch.delenv(FAULT)  # the restarted worker runs without it
        worker = stack.processes["worker-1"]
        delivery = healthz(stack.worker_url())["delivery"]
        assert delivery == {"tansu": "at-least-once", "kafka": "exactly-once"}[broker_kind]
        # The group's offsets as this test starts: what it commits is measured from here.
        before = committed_offsets(settings.bootstrap, group, settings.features_topic)
        x = rows(200)
        sent: list[str] = []
        status: int | None = None

        def publish(count: int) -> set[str]:
            ids = [f"ev{len(sent) + i}" for i in range(count)]
            with FeatureProducer(settings.bootstrap, settings.features_topic) as p:
                for i, event_id in enumerate(ids, start=len(sent)):
                    p.publish(
                        model, features(x[i % 200]), entity_key=f"e{i % 13}", event_id=event_id
                    )
            sent.extend(ids)
            return set(ids)

        # Each round is scored, in one batch or more, before the next is sent: batch CRASH_AT
        # comes by round CRASH_AT at the latest.
        for _ in range(CRASH_AT):
            ids = publish(200)

            def settled(ids: set[str] = ids) -> bool:
                nonlocal status
                status = exit_status(worker.pid, 0)
                return (
                    status is not None
                    or {p["feature_event_id"] for p in predictions(stack, model)} >= ids
                )

            wait_for(settled, what="a round scored, or the worker gone")
            if status is not None:
                break
        status = status if status is not None else exit_status(worker.pid, 30)
        assert status is not None, f"the fault hook did not fire by batch {CRASH_AT}"
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, status
        assert f"crash_before_commit:{CRASH_AT}: SIGKILL" in Path(worker.log).read_text()
        # Died that way: the last batch's predictions are in the topic, its offsets are not
        # committed (the batches before it are).
        committed = committed_offsets(settings.bootstrap, group, settings.features_topic)
        assert any(offset > before.get(p, 0) for p, offset in committed.items()), (
            "the batches before the crash were committed"
        )
        beyond = [
            p
            for p in predictions(stack)
            if p["source_offset"] >= committed.get(p["source_partition"], 0)
        ]
        uncommitted = {p["feature_event_id"] for p in beyond if p["model"] == model}
        if delivery == "exactly-once":
            # Produced in a transaction that never commits: read_committed never sees it.
            assert not beyond, "a prediction of the crashed batch is visible"
        else:
            assert uncommitted, "the crashed batch was produced before the kill"

        stack.restart_worker("worker-1")
        restarted = True
        publish(200)
        got = wait_scored(stack, model, sent)
    finally:
        monkeypatch.delenv(FAULT, raising=False)
        if not restarted:
            stack.restart_worker("worker-1")
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
    module_serving: Stack, model: str, tmp_path: Path
) -> None:
    serving = module_serving
    setup_model(serving, tmp_path, model)
    good = features(rows(1)[0])
    bad = {
        "missing_feature": feature_event(model, {k: v for k, v in good.items() if k != "f3"}),
        "non_finite_value": feature_event(model, {**good, "f1": float("inf")}),
        "wrong_type": feature_event(model, {**good, "f2": "high"}),
        "unknown_model": feature_event(f"{model}-nope", good),
        "unknown_ref": feature_event(model, good, ref="no-such-branch"),
    }
    topic = serving.settings.features_topic
    # The dead letters of the shared stack's earlier tests locate messages before these.
    start = end_offsets(serving.settings.bootstrap, topic)
    producer = KafkaProducer(bootstrap_servers=serving.settings.bootstrap)
    with FeatureProducer(serving.settings.bootstrap, topic) as p:
        p.publish(model, good, event_id="before")
        for event in bad.values():
            p.send(event)
        p.publish(model, good, event_id="after")
    producer.send(topic, key=b"x", value=b"definitely not avro").get(10)
    producer.close()

    def ours(d: dict[str, Any]) -> bool:
        return d["topic"] != topic or d["offset"] >= start.get(d["partition"], 0)

    def letters() -> dict[str, dict[str, Any]]:
        found = [
            DEAD_LETTERS.decode(r.value)
            for r in read_topic(serving.settings.access, serving.settings.dead_letter_topic)
            if r.value
        ]
        return {
            d["reason"].split(":", 1)[0]: d for d in found if d["stage"] == "worker" and ours(d)
        }

    found = wait_for(lambda: (d := letters()) and len(d) >= 6 and d, what="six dead letters")
    assert set(found) == {*bad, "undecodable"}
    assert found["undecodable"]["value"] == b"definitely not avro"
    for reason, event in bad.items():
        assert found[reason]["topic"] == topic and found[reason]["offset"] >= 0
        assert event["event_id"].encode() in found[reason]["value"]
    scored = {p["feature_event_id"] for p in predictions(serving, model)}
    assert {"before", "after"} <= scored


def test_two_workers_in_one_group_share_the_partitions(
    module_serving: Stack, model: str, tmp_path: Path
) -> None:
    serving = module_serving
    # Ready means assigned: worker-2's first partitions come from a rebalance that
    # worker-1 took part in (or was evicted from), so no fixed wait is needed here.
    serving.add_worker("worker-2")
    try:
        setup_model(serving, tmp_path, model)
        x = rows(100)
        ids = [f"ev{i}" for i in range(2000)]
        with FeatureProducer(serving.settings.bootstrap, serving.settings.features_topic) as p:
            for i, event_id in enumerate(ids):
                p.publish(model, features(x[i % 100]), entity_key=f"entity-{i}", event_id=event_id)
        got = wait_scored(serving, model, ids)
        assert {p["worker_id"] for p in got} == {"worker-1", "worker-2"}
    finally:
        # The shared stack goes back to worker-1 alone (it takes the partitions back).
        stop(serving.processes.pop("worker-2"))
        serving.save()
