"""The Apache Kafka launcher on real JVMs: start, metadata, serve, stop by pid, down/up.

Each test owns its cluster under tmp_path; the `kafka_home` fixture stops by pid every
process recorded there, even when the test fails half way. The kill -9 and restart of a
node run on the 3-node cluster tests/cluster shares (no three JVMs started for one test).
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic

from modelvc.kafka_broker import KafkaCluster, running_cluster, spec_from_json, stop_recorded
from modelvc.processes import Spawned, StackError, alive
from streams.kafka_access import KafkaAccess
from tests.conftest import BROKERS_ENV, selected_broker_kinds

pytestmark = pytest.mark.skipif(
    "kafka" not in selected_broker_kinds(),
    reason=f"Apache Kafka tier not selected: run `make kafka` and set {BROKERS_ENV}=kafka",
)


@pytest.fixture
def kafka_home(tmp_path: Path) -> Iterator[Path]:
    home = tmp_path / "kafka"
    try:
        yield home
    finally:
        stop_recorded(home, hard=True)


def recorded_processes(home: Path) -> list[Spawned]:
    record = home / "cluster.json"
    if not record.exists():
        return []
    return list(spec_from_json(record.read_text())[1].values())


def assert_nothing_left(home: Path) -> None:
    left = [s.pid for s in recorded_processes(home) if alive(s.pid)]
    assert left == [], f"Kafka processes still running: {left}"


def create_topic(access: KafkaAccess, topic: str, partitions: int, replicas: int) -> None:
    admin = KafkaAdminClient(**access.admin())
    try:
        admin.create_topics([NewTopic(topic, partitions, replicas)])
    finally:
        admin.close()


def produce(access: KafkaAccess, topic: str, values: list[bytes]) -> None:
    """acks=all and idempotent, as modelvc writes: each send is acknowledged or raises."""
    producer = KafkaProducer(**access.with_delivery("exactly-once").producer(retries=10))
    try:
        for future in [producer.send(topic, value) for value in values]:
            future.get(timeout=30)
    finally:
        producer.close()


def read_all(access: KafkaAccess, topic: str, count: int, timeout: float = 30.0) -> list[bytes]:
    """Every record from the start of each partition (no group: no rebalance to wait for)."""
    consumer = KafkaConsumer(**access.consumer(enable_auto_commit=False))
    try:
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic)]
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        got: list[bytes] = []
        deadline = time.monotonic() + timeout
        while len(got) < count and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=500).values():
                got.extend(r.value for r in records)
        return got
    finally:
        consumer.close()


def leader_of(access: KafkaAccess, topic: str, partition: int) -> tuple[int, list[int]]:
    admin = KafkaAdminClient(**access.admin())
    try:
        (described,) = admin.describe_topics([topic])
        for p in described["partitions"]:
            if p["partition_index"] == partition:
                return int(p["leader_id"]), sorted(p["isr_nodes"])
        raise AssertionError(f"no partition {partition} in {described}")
    finally:
        admin.close()


def test_one_broker_serves_stops_by_pid_and_keeps_acknowledged_writes_across_down_and_up(
    kafka_home: Path,
) -> None:
    # One JVM start per `with` costs a loaded machine tens of seconds: the same node serves,
    # stops by pid, and comes back with what it acknowledged.
    values = [f"d{i}".encode() for i in range(50)]
    with running_cluster(kafka_home, brokers=1) as cluster:
        pid = cluster.processes[1].pid
        assert alive(pid)
        admin = KafkaAdminClient(**cluster.access().admin())
        try:
            assert [b["broker_id"] for b in admin.describe_cluster()["brokers"]] == [1]
        finally:
            admin.close()
        first = cluster.bootstrap
        create_topic(cluster.access(), "durable", partitions=3, replicas=1)
        produce(cluster.access(), "durable", values)
        assert sorted(read_all(cluster.access(), "durable", 50)) == sorted(values)
    assert not alive(pid)
    assert_nothing_left(kafka_home)
    cluster_id = (kafka_home / "node-1" / "data" / "meta.properties").read_text()
    with running_cluster(kafka_home, brokers=1) as cluster:
        assert cluster.bootstrap == first  # same ports, same cluster, not reformatted
        assert (kafka_home / "node-1" / "data" / "meta.properties").read_text() == cluster_id
        assert sorted(read_all(cluster.access(), "durable", 50)) == sorted(values)
    assert_nothing_left(kafka_home)


def test_a_broker_that_cannot_start_leaves_no_process_behind(kafka_home: Path) -> None:
    planned = KafkaCluster.open(kafka_home, brokers=1)
    with socket.socket() as squatter:
        # Someone else holds the node's controller port: the JVM exits, start says so.
        squatter.bind(("127.0.0.1", planned.spec.nodes[0].controller_port))
        squatter.listen()
        with pytest.raises(StackError, match="Kafka node 1"):
            KafkaCluster.start(kafka_home, brokers=1, timeout=60)
    assert recorded_processes(kafka_home), "the start should have recorded its pid"
    assert_nothing_left(kafka_home)


def test_a_home_of_another_size_is_refused(kafka_home: Path) -> None:
    KafkaCluster.open(kafka_home, brokers=1)
    with pytest.raises(StackError, match="1-broker cluster, not 3"):
        KafkaCluster.open(kafka_home, brokers=3)
    assert not os.path.exists(kafka_home / "node-1" / "data" / "meta.properties")
