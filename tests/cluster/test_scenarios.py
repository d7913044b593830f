"""modelvc on a 3-broker Apache Kafka cluster under faults, each scenario replayable by seed.

Every scenario of modelvc under faults (1-5) ends with the same three checks
(:func:`settle`): the audit replay is clean and equals the live digest; every acknowledged
write is in the log, once; every feature event has exactly one committed prediction or dead
letter (read_committed). Scenarios 6 and 7 check the launcher's kill -9 and restart, and
the topics modelvc makes, on the same cluster rather than three more JVMs of their own.
"""

from __future__ import annotations

import random
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
from kafka import KafkaAdminClient, KafkaProducer

from modelvc.kafka_broker import KafkaCluster
from modelvc.processes import alive, stop
from modelvc.stack import Stack
from modelvc.streaming import FeatureProducer
from streams import deadletter
from streams.codec import DEAD_LETTERS, FEATURES, PREDICTIONS, REPLIES
from streams.errors import UnsafeTopic
from streams.kafka_access import negotiate_sync
from streams.logreader import read_topic
from streams.settings import Settings
from streams.topics import ensure_topics, home_partition
from tests.cluster.load import (
    FeatureStream,
    Ledger,
    WriteLog,
    Writers,
    account_for,
    all_topics,
    cluster_selected,
    lost_writes,
    partition_states,
    read,
    replay_matches_live,
    replicated,
    send,
    wait_fully_replicated,
    worker_health,
)
from tests.integration.test_rebalance import checks, one_model_per_partition
from tests.kafka.test_kafka_launcher import create_topic, leader_of, produce, read_all
from tests.kafka.test_topics_kafka import precreate, replicas_of, settings_for, topic_settings

pytestmark = [
    pytest.mark.broker,
    pytest.mark.skipif(
        not cluster_selected(),
        reason="the 3-broker cluster suite runs with MODELVC_TEST_CLUSTER=1 "
        "(or MODELVC_TEST_BROKERS=kafka)",
    ),
]

STREAM = 20_000  # feature events scored during scenarios 1-3
SCORED = "scored"  # the model the stream is scored by (its production alias)


@dataclass
class Load:
    """Writers and a feature stream on one stack, started together."""

    stack: Stack
    writers: Writers
    stream: FeatureStream
    setup: WriteLog

    @classmethod
    def start(
        cls,
        stack: Stack,
        model_path: Path,
        rng: random.Random,
        events: int = STREAM,
        seconds: float = 30.0,
        threads: int = 8,
    ) -> Load:
        setup = WriteLog()
        client = stack.client(timeout=30.0)
        digest = client.upload(model_path)["sha256"]
        models = [f"m{i}" for i in range(max(1, threads // 2))]
        for model in [SCORED, *models]:
            send(lambda cid, m=model: client.create(m, command_id=cid), setup, what="create")
            send(
                lambda cid, m=model: client.commit(m, digest, "first", command_id=cid),
                setup,
                what="first commit",
            )
        send(
            lambda cid: client.set_alias(SCORED, "production", "main", command_id=cid),
            setup,
            what="alias",
        )
        assert not setup.failures, setup.failures
        s = stack.settings
        stream = FeatureStream(s.access, s.features_topic, SCORED, events, seconds, rng)
        writers = Writers(stack.url, stack.token, models, digest, rng, threads) if threads else None
        load = cls(stack, writers, stream, setup)  # type: ignore[arg-type]
        stream.start()
        if writers is not None:
            writers.start()
        return load

    def finish(self) -> WriteLog:
        self.stream.join()
        log = WriteLog()
        log.merge(self.setup)
        if self.writers is not None:
            log.merge(self.writers.stop())
        return log


def settle(
    stack: Stack, log: WriteLog, streams: list[FeatureStream], url: str | None = None
) -> Ledger:
    """The three end checks every scenario makes."""
    assert not log.failures, f"{log.summary()}: {log.failures[:5]}"
    ledger = account_for(stack, streams)
    lost = lost_writes(stack.settings, log.acknowledged)
    assert not lost, f"{log.summary()}: {lost[:5]}"
    replayed = replay_matches_live(stack, url)
    print(
        f"writes: {log.summary()}; stream: {ledger.summary()}; replay: {replayed.events} events, "
        f"{replayed.duplicates} duplicates, digest {replayed.digest[:12]}"
    )
    return ledger


def test_1_kill_9_the_leader_of_an_events_partition(
    stack: Stack, cluster: KafkaCluster, rng: random.Random, model_path: Path
) -> None:
    access = stack.settings.access
    load = Load.start(stack, model_path, rng)
    time.sleep(rng.uniform(3.0, 8.0))
    partition = rng.randrange(stack.settings.partitions)
    leader = partition_states(access, [stack.settings.events_topic])[
        (stack.settings.events_topic, partition)
    ].leader
    print(f"kill -9 broker {leader}, leader of {stack.settings.events_topic}[{partition}]")
    cluster.kill_node(leader)
    time.sleep(rng.uniform(5.0, 12.0))
    cluster.restart_node(leader)
    log = load.finish()
    wait_fully_replicated(access, all_topics(stack.settings))
    settle(stack, log, [load.stream])


def test_2_rolling_restart_of_every_broker(
    stack: Stack, cluster: KafkaCluster, rng: random.Random, model_path: Path
) -> None:
    access = stack.settings.access
    topics = all_topics(stack.settings)
    load = Load.start(stack, model_path, rng, seconds=45.0)
    order = [n.node_id for n in cluster.spec.nodes]
    rng.shuffle(order)
    print(f"rolling restart in order {order}")
    for node_id in order:
        time.sleep(rng.uniform(1.0, 4.0))
        cluster.stop_node(node_id)
        time.sleep(rng.uniform(0.5, 3.0))
        cluster.restart_node(node_id)  # waits until metadata lists all three brokers
        wait_fully_replicated(access, topics)
    log = load.finish()
    settle(stack, log, [load.stream])


def test_3_kill_9_a_worker_5_times_exactly_once(
    stack: Stack, rng: random.Random, model_path: Path
) -> None:
    assert worker_health(stack).get("delivery") == "exactly-once", worker_health(stack)
    load = Load.start(stack, model_path, rng, seconds=50.0, threads=0)
    for kill in range(5):
        time.sleep(rng.uniform(1.0, 5.0))
        print(f"kill -9 of worker-1, {kill + 1} of 5")
        stack.restart_worker("worker-1", hard=True)
    assert worker_health(stack).get("delivery") == "exactly-once"
    log = load.finish()
    settle(stack, log, [load.stream])


def test_4_two_streams_apps_one_killed_the_other_serves_its_partitions(
    stack: Stack, rng: random.Random, model_path: Path
) -> None:
    partitions = stack.settings.partitions
    log = WriteLog()
    models = one_model_per_partition(partitions)
    a = stack.client(timeout=60.0)
    digest = a.upload(model_path)["sha256"]
    for model in models.values():
        send(lambda cid, m=model: a.create(m, command_id=cid), log, what="create")
    load = Load.start(stack, model_path, rng, events=2_000, seconds=10.0, threads=0)
    b_process, b_url = stack.add_streams("streams-b")
    b = stack.client(b_url, timeout=60.0)
    heads: dict[int, str] = {}
    # Through B, one commit per model: B decides its partitions, A the others, and A's
    # answers reach B over the replies topic.
    for p, model in models.items():
        answer = send(lambda cid, m=model: b.commit(m, digest, "via b", command_id=cid), log)
        assert answer is not None, log.failures
        heads[p] = answer["head"]
    owned_by_b = {p for p, _ in checks(Path(b_process.log), 0)}
    assert owned_by_b and owned_by_b != set(range(partitions)), owned_by_b
    crossed = [
        REPLIES.decode(r.value)
        for r in read_topic(stack.settings.access, stack.settings.replies_topic)
        if r.value
    ]
    sent_ids = {ack.command_id for ack in log.acknowledged}
    assert any(r["command_id"] in sent_ids for r in crossed), "no answer crossed the instances"

    victim = rng.choice(["streams", "streams-b"])
    dead = owned_by_b if victim == "streams-b" else set(range(partitions)) - owned_by_b
    survivor = stack.client(stack.url if victim == "streams-b" else b_url, timeout=60.0)
    print(f"kill -9 of {victim}, which owned commands partitions {sorted(dead)}")
    stop(stack.processes[victim], hard=True)
    for p in sorted(dead):
        model = models[p]
        assert home_partition(model, partitions) == p
        # expect_head: deciding on a stale state would answer stale_head.
        answer = send(
            lambda cid, m=model, h=heads[p]: survivor.commit(
                m, digest, "after the kill", expect_head=h, command_id=cid
            ),
            log,
        )
        assert answer is not None and answer["partition"] == p, log.failures
        assert answer["repeated"] is False
    log.merge(load.finish())
    settle(stack, log, [load.stream], url=survivor.url)


def test_5_every_broker_stopped_and_restarted_history_from_kafka(
    tmp_path: Path, cluster: KafkaCluster, rng: random.Random, model_path: Path
) -> None:
    namespace = f"c-restart-{rng.getrandbits(32):08x}"
    home = tmp_path / "home"
    stack = Stack.up(home, bootstrap=cluster.bootstrap, namespace=namespace, workers=1)
    try:
        replicated(stack.settings)
        load = Load.start(stack, model_path, rng, events=2_000, seconds=8.0)
        time.sleep(rng.uniform(2.0, 6.0))
        log = load.finish()
        settle(stack, log, [load.stream])
        client = stack.client()
        before = client.digest()["digest"]
        history = {m["name"]: client.log(m["name"]) for m in client.models()["models"]}
    finally:
        stack.down()
    hard = rng.random() < 0.5
    print(f"stopping every broker ({'kill -9' if hard else 'SIGTERM'}) and starting them again")
    cluster.stop(hard=hard)
    cluster.start_all()
    # Nothing but Kafka holds the history now: no archive, no projection on disk.
    shutil.move(stack.settings.archive_dir, tmp_path / "archive-aside")
    shutil.rmtree(stack.settings.data_dir)
    stack = Stack.up(home, bootstrap=cluster.bootstrap, namespace=namespace, workers=1)
    try:
        assert stack.restored == 0
        wait_fully_replicated(stack.settings.access, all_topics(stack.settings))
        client = stack.client()
        assert read(lambda: client.digest(), log)["digest"] == before
        assert {m["name"]: client.log(m["name"]) for m in client.models()["models"]} == history
        settle(stack, log, [load.stream])
    finally:
        stack.down()


def test_0_the_ledger_sees_a_lost_and_a_repeated_outcome(cluster: KafkaCluster) -> None:
    """The checker every scenario ends with, on outcomes written by hand: one event scored
    twice, one never, one dead-lettered (it must fail when the worker breaks)."""
    settings = Settings(namespace=f"c-ledger-{uuid.uuid4().hex[:8]}", bootstrap=cluster.bootstrap)
    ensure_topics(settings)
    access = negotiate_sync(settings.access)
    with FeatureProducer(access, settings.features_topic) as producer:
        for event_id in ("twice", "never", "letter"):
            producer.publish(SCORED, {"Column_0": 1.0}, event_id=event_id)
    where = {
        FEATURES.decode(r.value)["event_id"]: (r.partition, r.offset)
        for r in read_topic(access, settings.features_topic)
        if r.value
    }
    out = KafkaProducer(**access.producer())
    for n in range(2):
        partition, offset = where["twice"]
        prediction = {
            "prediction_id": "p-twice",
            "feature_event_id": "twice",
            "source_topic": settings.features_topic,
            "source_partition": partition,
            "source_offset": offset,
            "model": SCORED,
            "requested_ref": "production",
            "commit_id": "c" * 64,
            "artifact_sha256": "a" * 64,
            "scores": [0.5 + n],
            "worker_id": "by-hand",
            "event_time": 0,
            "scored_at": 0,
        }
        out.send(settings.predictions_topic, PREDICTIONS.encode(prediction)).get(30)
    partition, offset = where["letter"]
    letter = deadletter.record(settings.features_topic, partition, offset, None, b"x", "bad", "w")
    out.send(settings.dead_letter_topic, DEAD_LETTERS.encode(letter)).get(30)
    out.close()
    problems = Ledger(settings).read(expected=3, timeout=10.0).problems()
    assert len(problems) == 2, problems
    assert problems[0].startswith(f"1 feature events with no outcome, e.g. [{where['never']}]")
    assert problems[1].startswith("1 feature events with more than one outcome")
    assert "0.5" in problems[1] and "1.5" in problems[1]


def test_6_the_launcher_kills_a_leader_writes_go_on_and_its_restart_rejoins(
    cluster: KafkaCluster,
) -> None:
    """The launcher's own kill -9 and restart, on a bare topic (from tests/kafka, where it
    started three JVMs of its own): acks=all writes go on with the leader gone, and the
    restarted node, on its own data, rejoins the ISR with every write."""
    topic = f"launcher-{uuid.uuid4().hex[:8]}"
    access = cluster.access()
    create_topic(access, topic, partitions=1, replicas=3)
    before = [f"b{i}".encode() for i in range(30)]
    produce(access, topic, before)
    wait_fully_replicated(access, [topic])
    leader, isr = leader_of(access, topic, 0)
    assert isr == [1, 2, 3]

    victim = cluster.processes[leader].pid
    cluster.kill_node(leader)
    assert not alive(victim)
    # min.insync.replicas=2 of 3: acks=all writes go on with one broker down.
    after = [f"a{i}".encode() for i in range(30)]
    produce(access, topic, after)

    cluster.restart_node(leader)  # same data dir: no reformat, it catches up
    assert cluster.processes[leader].pid != victim
    wait_fully_replicated(access, [topic], timeout=60.0)
    assert sorted(read_all(access, topic, 60)) == sorted(before + after)


def test_7_three_brokers_get_three_replicas_and_min_insync_two(cluster: KafkaCluster) -> None:
    """Topics modelvc creates on three brokers (from tests/kafka, where it started a cluster
    of its own); and an events topic of one replica, made by hand, is refused."""
    admin = KafkaAdminClient(bootstrap_servers=cluster.bootstrap)
    suffix = uuid.uuid4().hex[:8]
    try:
        settings = settings_for(cluster.bootstrap, f"rf-{suffix}")
        ensure_topics(settings)
        for topic in (settings.events_topic, settings.dead_letter_topic):
            assert replicas_of(admin, topic) == {3}
            assert topic_settings(admin, topic)["min.insync.replicas"] == "2"
        # An events topic made by hand with one replica, while 3 are asked: refused.
        one = f"one-{suffix}"
        precreate(admin, f"{one}.events", replicas=1)
        with pytest.raises(UnsafeTopic, match=r"1 replica\(s\) but 3 are asked"):
            ensure_topics(settings_for(cluster.bootstrap, one, replication_factor=3))
        # Left unset, the factor is min(3, brokers): refused all the same.
        with pytest.raises(UnsafeTopic, match=r"1 replica\(s\) but 3 are asked"):
            ensure_topics(settings_for(cluster.bootstrap, one))
    finally:
        admin.close()
