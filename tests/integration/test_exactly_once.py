"""Exactly-once predictions on a broker with transactions; at-least-once, said so, elsewhere.

On Apache Kafka a worker reads, scores and writes each batch in one transaction
(``workers.loop``): killed with -9 between its sends and its commit, then
restarted, it leaves a ``read_committed`` reader exactly one prediction per
feature event. On Tansu (no transactions) it runs at-least-once and says so.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaAdminClient, KafkaProducer
from kafka.admin import NewTopic

from modelvc import audit
from modelvc.stack import Stack
from modelvc.streaming import FeatureProducer, subscribe_predictions
from streams.artifacts import open_store
from streams.codec import PREDICTIONS
from streams.kafka_access import KafkaAccess
from streams.logreader import log_consumer, partition_ends, read_topic, topic_partitions
from streams.watermarks import at_end
from tests.integration.test_workers import (
    exit_status,
    features,
    predictions,
    rows,
    scrape,
    setup_model,
    wait_for,
)
from workers.artifacts import ArtifactLoader
from workers.metrics import sample_sum
from workers.settings import WorkerSettings

pytestmark = pytest.mark.broker

EVENTS = 2000
CRASH_AT = 3  # the batch the worker is SIGKILLed in, its transaction open
DELIVERY = {"kafka": "exactly-once", "tansu": "at-least-once"}


def needs_transactions(broker_kind: str) -> None:
    if broker_kind != "kafka":
        pytest.skip("Tansu has no transactions; this runs on Apache Kafka (MODELVC_TEST_BROKERS)")


def healthz(stack: Stack, worker: str = "worker-1") -> dict[str, Any]:
    with urllib.request.urlopen(stack.worker_url(worker) + "/healthz", timeout=5) as response:
        return dict(json.load(response))


def uncommitted(access: KafkaAccess, topic: str) -> list[bytes]:
    """Every record value in the log, aborted transactions included (read_uncommitted)."""
    consumer = log_consumer(access, isolation_level="read_uncommitted")
    try:
        tps = topic_partitions(consumer, topic)
        consumer.assign(tps)
        for tp in tps:
            consumer.seek(tp, 0)
        out: list[bytes] = []
        deadline = time.monotonic() + 60
        while not at_end(consumer, tps):
            assert time.monotonic() < deadline, "read_uncommitted reader made no progress"
            for messages in consumer.poll(timeout_ms=200).values():
                out += [m.value for m in messages if m.value]
        return out
    finally:
        consumer.close()


def test_the_worker_says_which_delivery_it_runs(stack: Stack, broker_kind: str) -> None:
    worker = stack.add_worker("worker-1")
    expected = DELIVERY[broker_kind]
    health = healthz(stack)
    assert health["delivery"] == expected
    if expected == "at-least-once":
        assert "keeps its prediction_id" in health["delivery_note"]
    else:
        assert "one Kafka transaction" in health["delivery_note"]
    assert f"delivery {expected} (" in Path(worker.log).read_text()
    text = scrape(stack)
    assert sample_sum(text, "modelvc_delivery_info", delivery=expected) == 1
    assert sample_sum(text, "modelvc_delivery_info") == 1


def test_a_worker_killed_mid_transaction_leaves_each_prediction_exactly_once(
    stack: Stack, tmp_path: Path, broker_kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    needs_transactions(broker_kind)
    setup_model(stack, tmp_path)
    settings = stack.settings
    monkeypatch.setenv("MODELVC_WORKER_FAULT", f"crash_before_commit:{CRASH_AT}")
    # Small batches: the stream spans many transactions, and the crash lands mid-stream.
    monkeypatch.setenv("MODELVC_WORKER_MAX_BATCH", "100")
    worker = stack.add_worker("worker-1")
    monkeypatch.delenv("MODELVC_WORKER_FAULT")  # the restarted worker runs without it
    assert healthz(stack)["delivery"] == "exactly-once"
    x = rows(EVENTS)
    sent = [f"ev{i}" for i in range(EVENTS)]
    with FeatureProducer(settings.bootstrap, settings.features_topic) as producer:
        for i, event_id in enumerate(sent):
            producer.publish("churn", features(x[i]), entity_key=f"e{i % 13}", event_id=event_id)
    status = exit_status(worker.pid, 60)
    assert status is not None, f"the fault hook did not fire by batch {CRASH_AT}"
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, status
    assert "SIGKILL before committing" in (text := Path(worker.log).read_text())
    assert f"crash_before_commit:{CRASH_AT}" in text and "transaction left open" in text

    stack.restart_worker("worker-1")  # same transactional id: fences the dead one's transaction
    got = wait_for(
        lambda: (p := predictions(stack)) and {q["feature_event_id"] for q in p} >= set(sent) and p,
        timeout=180,
        what="a committed prediction for every event",
    )
    committed = Counter(p["feature_event_id"] for p in got)
    assert set(committed) == set(sent) and set(committed.values()) == {1}, committed.most_common(3)

    # The crashed batch's sends were acknowledged before the kill: they are in the log, in
    # an aborted transaction, and only a read_uncommitted reader sees them (a second time).
    everything = [
        PREDICTIONS.decode(v) for v in uncommitted(settings.access, settings.predictions_topic)
    ]
    seen = Counter(p["feature_event_id"] for p in everything)
    again = {event_id for event_id, n in seen.items() if n > 1}
    assert again and set(seen) == set(sent) and set(seen.values()) == {1, 2}
    for event_id in again:  # the aborted copy and the committed one are the same prediction
        copies = [p for p in everything if p["feature_event_id"] == event_id]
        assert len({(p["prediction_id"], tuple(p["scores"])) for p in copies}) == 1

    # Public readers are read_committed: the aborted copies are invisible to them.
    subscribed = Counter(
        p["feature_event_id"]
        for p in subscribe_predictions(
            settings.access, topic=settings.predictions_topic, from_beginning=True, idle_timeout_s=5
        )
    )
    assert subscribed == committed
    verified = audit.verify_predictions(
        settings.access,
        settings.events_topic,
        settings.predictions_topic,
        ArtifactLoader(open_store(settings.artifacts, settings.s3_endpoint)),
    )
    assert verified.checked == EVENTS and verified.mismatches == []

    metrics = scrape(stack)
    assert sample_sum(metrics, "modelvc_delivery_info", delivery="exactly-once") == 1
    assert sample_sum(metrics, "modelvc_transactions_total", outcome="committed") >= 1


def test_a_fenced_worker_replaces_its_producer_and_goes_on(
    stack: Stack, tmp_path: Path, broker_kind: str, namespace: str
) -> None:
    needs_transactions(broker_kind)
    setup_model(stack, tmp_path)
    worker = stack.add_worker("worker-1")
    settings = stack.settings
    x = rows(200)

    def publish(ids: range) -> None:
        with FeatureProducer(settings.bootstrap, settings.features_topic) as producer:
            for i in ids:
                producer.publish("churn", features(x[i]), entity_key=f"e{i % 7}", event_id=f"ev{i}")

    def scored(count: int) -> list[dict[str, Any]] | None:
        got = predictions(stack)
        return got if len({p["feature_event_id"] for p in got}) >= count else None

    publish(range(100))
    wait_for(lambda: scored(100), what="the first 100 predictions")
    # A producer with the worker's transactional id (as a duplicate MODELVC_WORKER_ID would
    # make) fences the worker's: its next transaction fails, it must abort, replace its
    # producer and score that batch again, not exit.
    worker_settings = WorkerSettings.from_env(
        {"MODELVC_NAMESPACE": namespace, "MODELVC_WORKER_ID": "worker-1"}
    )
    intruder = KafkaProducer(
        **KafkaAccess(settings.bootstrap, delivery="exactly-once").producer(
            transactional_id=worker_settings.transactional_id
        )
    )
    try:
        intruder.init_transactions()
    finally:
        intruder.close()
    publish(range(100, 200))
    got = wait_for(lambda: scored(200), timeout=120, what="the next 100 predictions")
    assert set(Counter(p["feature_event_id"] for p in got).values()) == {1}
    assert exit_status(worker.pid, 0) is None, "the fenced worker exited"
    metrics = scrape(stack)
    assert sample_sum(metrics, "modelvc_producer_restarts_total") == 1
    assert sample_sum(metrics, "modelvc_transactions_total", outcome="aborted") >= 1
    assert "transactional producer" in Path(worker.log).read_text()


def test_read_topic_reads_exactly_the_committed_records_and_terminates(
    bootstrap: str, broker_kind: str, namespace: str
) -> None:
    needs_transactions(broker_kind)
    access = KafkaAccess(bootstrap, delivery="exactly-once")
    topic = f"{namespace}.transactional"
    admin = KafkaAdminClient(**access.admin())
    try:
        admin.create_topics([NewTopic(topic, 2, 1)])
    finally:
        admin.close()
    producers = [
        KafkaProducer(**access.producer(transactional_id=f"{namespace}-writer-{n}"))
        for n in range(2)
    ]
    committed: list[bytes] = []
    aborted: list[bytes] = []

    def begin(producer: KafkaProducer, values: list[bytes]) -> list[bytes]:
        """A transaction left open, its records acknowledged (below the high watermark)."""
        producer.begin_transaction()
        for value in values:
            producer.send(topic, value=value, partition=value[-1] % 2)
        producer.flush()
        return values

    def end(producer: KafkaProducer, values: list[bytes], commit: bool = True) -> None:
        if commit:
            producer.commit_transaction()
            committed.extend(values)
        else:
            producer.abort_transaction()
            aborted.extend(values)

    try:
        for producer in producers:
            producer.init_transactions()
        first = producers[0]
        end(first, begin(first, [b"c%d" % i for i in range(10)]))
        end(first, begin(first, [b"a%d" % i for i in range(6)]), commit=False)
        end(first, begin(first, [b"d%d" % i for i in range(4)]))
        records = list(read_topic(access, topic, idle_timeout=20))
        assert sorted(r.value for r in records if r.value) == sorted(committed)
        # Markers take offsets: each partition ends past its last committed record.
        ends = partition_ends(access, topic)
        for p in (0, 1):
            assert ends[p] > max(r.offset for r in records if r.partition == p) + 1
        # The aborted records are in the log all the same (read_uncommitted sees them).
        assert set(aborted) <= set(uncommitted(access, topic))

        # Two writers whose transactions overlap, as two busy exactly-once workers' may: one
        # is always open, so the high watermark stays ahead of the last stable offset, where
        # a read_committed reader is held. The reader still ends, at the ends it saw first.
        stop = threading.Event()
        give_up = time.monotonic() + 20  # bounds the test if the reader chases the writers

        def write() -> None:
            a, b = producers
            n = 0
            open_a = begin(a, [b"w%d-%d" % (n, i) for i in range(4)])
            while not stop.is_set() and time.monotonic() < give_up:
                open_b = begin(b, [b"x%d-%d" % (n, i) for i in range(4)])
                end(a, open_a)
                n += 1
                open_a = begin(a, [b"w%d-%d" % (n, i) for i in range(4)])
                end(b, open_b)
            end(a, open_a)

        writer = threading.Thread(target=write)
        writer.start()
        try:
            time.sleep(0.5)
            started = time.monotonic()
            values = [r.value for r in read_topic(access, topic, idle_timeout=20)]
            took = time.monotonic() - started
        finally:
            stop.set()
            writer.join(30)
        assert took < 5, f"the reader chased the writers for {took:.1f}s"
        assert not set(values) & set(aborted)
        assert set(values) <= set(committed) and len(values) == len(set(values))
    finally:
        for producer in producers:
            producer.close()
