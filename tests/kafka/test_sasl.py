"""Kafka's own access control: SASL/SCRAM logins and the ACLs of each modelvc role.

One SASL cluster (1 broker) for the module, under its own tmp dir, stopped by pid even
when a test fails. Every denial is asserted as the broker's answer (its error code), not
as a client-side check: a refused write or read never reaches the log.
"""

from __future__ import annotations

import asyncio
import json
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.conn import create_conn
from aiokafka.errors import KafkaConnectionError, SaslAuthenticationFailed
from aiokafka.errors import TopicAuthorizationFailedError as ReadRefused
from kafka import KafkaAdminClient, KafkaProducer, TopicPartition
from kafka.admin import (
    ACLFilter,
    ACLOperation,
    ACLPermissionType,
    ACLResourcePatternType,
    ResourcePatternFilter,
    ResourceType,
)
from kafka.errors import (
    ClusterAuthorizationFailedError,
    KafkaError,
    TopicAuthorizationFailedError,
    TransactionalIdAuthorizationFailedError,
)
from kafka.structs import OffsetAndMetadata

from modelvc.client import Client
from modelvc.kafka_acl import Role, acl_plan, grant_modelvc_acls, settings_as, worker_group
from modelvc.kafka_broker import KafkaCluster, running_cluster, stop_recorded
from modelvc.processes import Spawned, free_port, stop
from modelvc.stack import ensure_home, start_streams, start_worker, with_identity
from modelvc.streaming import FeatureProducer
from streams.codec import PREDICTIONS
from streams.errors import TopicUnreadable
from streams.http_client import read_token_file
from streams.kafka_access import KafkaAccess
from streams.logreader import read_topic
from streams.settings import Settings
from streams.topics import ensure_topics
from tests.conftest import BROKERS_ENV, selected_broker_kinds, train_model
from tests.integration.test_workers import wait_for

pytestmark = pytest.mark.skipif(
    "kafka" not in selected_broker_kinds(),
    reason=f"Apache Kafka tier not selected: run `make kafka` and set {BROKERS_ENV}=kafka",
)

NS = "sasl"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaCluster]:
    home = tmp_path_factory.mktemp("sasl") / "kafka"
    try:
        with running_cluster(home, brokers=1, security="sasl") as c:
            grant_modelvc_acls(c.access("admin"), NS)
            # As the streams app does at start: it may create its own topics.
            ensure_topics(settings(c, "streams"))
            yield c
    finally:
        stop_recorded(home, hard=True)


def settings(cluster: KafkaCluster, role: Role, **kw: Any) -> Settings:
    base = Settings(namespace=NS, bootstrap=cluster.bootstrap, **kw)
    return settings_as(base, cluster.credentials_dir, role)


def topic(kind: str) -> str:
    return f"{NS}.{kind}"


def send(access: KafkaAccess, name: str, value: bytes = b"x", idempotent: bool = True) -> int:
    """One acknowledged write; the offset it got. Non-idempotent writes skip InitProducerId,
    so the broker's answer is the Produce request's own."""
    producer = KafkaProducer(
        **access.with_delivery("exactly-once").producer(
            enable_idempotence=idempotent, max_block_ms=10_000
        )
    )
    try:
        return int(producer.send(name, value).get(timeout=20).offset)
    finally:
        producer.close(timeout=5)


def values(access: KafkaAccess, name: str) -> list[bytes]:
    return [r.value for r in read_topic(access, name) if r.value is not None]


def subscribe_once(access: KafkaAccess, name: str) -> dict[Any, Any]:
    """Subscribe (no group) and fetch once, as a reader of the topic would."""

    async def run() -> dict[Any, Any]:
        consumer = AIOKafkaConsumer(**access.consumer(group_id=None))
        try:
            consumer.subscribe([name])
            await consumer.start()
            return dict(await consumer.getmany(timeout_ms=3000))
        finally:
            await consumer.stop()

    return asyncio.run(run())


# -- logins ---------------------------------------------------------------------------


def test_credentials_are_random_private_files_and_no_password_reaches_argv(
    cluster: KafkaCluster,
) -> None:
    directory = cluster.credentials_dir
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    passwords = {}
    for path in sorted(directory.glob("*.json")):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
        doc = json.loads(path.read_text())
        assert doc["username"] == path.stem
        passwords[path.stem] = doc["password"]
    assert set(passwords) >= {"admin", "streams", "worker", "producer", "auditor"}
    assert len(set(passwords.values())) == len(passwords)  # one secret per principal
    properties = cluster.node_dir(1) / "server.properties"
    assert stat.S_IMODE(properties.stat().st_mode) == 0o600  # holds the brokers' logins
    # The storage tool got salted passwords; the broker's argv names only the config file.
    record = (cluster.home / "cluster.json").read_text()
    assert not any(p in record for p in passwords.values())


def test_a_client_without_credentials_or_with_a_wrong_password_is_refused(
    cluster: KafkaCluster, tmp_path: Path
) -> None:
    host, port = cluster.bootstrap.split(":")

    async def connect(access: KafkaAccess) -> None:
        login = access.client()
        del login["bootstrap_servers"]
        conn = await create_conn(host, int(port), **login)
        conn.close()

    forged = tmp_path / "admin.json"
    real = json.loads((cluster.credentials_dir / "admin.json").read_text())
    forged.write_text(json.dumps({"username": "admin", "password": real["password"] + "x"}))
    with pytest.raises(SaslAuthenticationFailed, match="invalid credentials"):
        asyncio.run(connect(KafkaAccess(cluster.bootstrap, "sasl", forged)))
    forged.write_text(json.dumps({"username": "nobody", "password": real["password"]}))
    with pytest.raises(SaslAuthenticationFailed):
        asyncio.run(connect(KafkaAccess(cluster.bootstrap, "sasl", forged)))
    # No SASL at all: the broker answers nothing but a handshake and closes the connection.
    with pytest.raises(KafkaConnectionError):
        subscribe_once(KafkaAccess(cluster.bootstrap), topic("events"))
    asyncio.run(connect(cluster.access("auditor")))  # the real login still works


# -- what each role may do ----------------------------------------------------------------


def test_each_role_does_its_job(cluster: KafkaCluster) -> None:
    streams, worker = cluster.access("streams"), cluster.access("worker")
    producer, auditor = cluster.access("producer"), cluster.access("auditor")
    send(streams, topic("events"), b"event")
    send(streams, topic("commands"), b"command")
    send(streams, topic("replies"), b"reply")
    send(streams, topic("dead-letter"), b"letter from streams")
    assert b"command" in values(streams, topic("commands"))
    send(producer, topic("features"), b"features")
    assert b"event" in values(worker, topic("events"))
    assert b"features" in values(worker, topic("features"))
    send(worker, topic("dead-letter"), b"letter from worker")

    # Exactly-once: a transaction of predictions plus the group's consumed offsets.
    group = worker_group(NS)
    txn = KafkaProducer(
        **worker.with_delivery("exactly-once").producer(
            transactional_id=f"{group}-w1", max_block_ms=20_000
        )
    )
    try:
        txn.init_transactions()
        txn.begin_transaction()
        txn.send(topic("predictions"), b"prediction")
        txn.send_offsets_to_transaction(
            {TopicPartition(topic("features"), 0): OffsetAndMetadata(1, "", -1)}, group
        )
        txn.commit_transaction()
    finally:
        txn.close(timeout=5)

    for kind, value in [
        ("events", b"event"),
        ("features", b"features"),
        ("predictions", b"prediction"),
        ("dead-letter", b"letter from worker"),
    ]:
        assert value in values(auditor, topic(kind)), kind


# -- what the broker refuses ------------------------------------------------------------------


@pytest.mark.parametrize("role", ["worker", "producer", "auditor"])
def test_only_the_streams_app_may_write_events(cluster: KafkaCluster, role: Role) -> None:
    before = len(values(cluster.access("auditor"), topic("events")))
    with pytest.raises(TopicAuthorizationFailedError):
        send(cluster.access(role), topic("events"), b"forged", idempotent=False)
    assert len(values(cluster.access("auditor"), topic("events"))) == before


def test_the_producer_writes_features_only_and_cannot_read_predictions(
    cluster: KafkaCluster,
) -> None:
    producer = cluster.access("producer")
    for kind in ("predictions", "dead-letter", "commands"):
        with pytest.raises(TopicAuthorizationFailedError):
            send(producer, topic(kind), idempotent=False)
    with pytest.raises(ReadRefused):
        subscribe_once(producer, topic("predictions"))
    with pytest.raises(ReadRefused):
        subscribe_once(producer, topic("events"))
    # The broker hides the topic from a login that may not describe it: the log reader
    # (the audit, tail) says so instead of reading an empty log.
    with pytest.raises(TopicUnreadable, match="may not read it"):
        list(read_topic(producer, topic("events")))


def test_the_auditor_reads_but_cannot_write_anything(cluster: KafkaCluster) -> None:
    auditor = cluster.access("auditor")
    for kind in ("events", "features", "predictions", "dead-letter", "commands", "replies"):
        with pytest.raises(TopicAuthorizationFailedError):
            send(auditor, topic(kind), idempotent=False)
    # Not even a producer id: the broker gives one only to a principal that may write.
    with pytest.raises(KafkaError, match=ClusterAuthorizationFailedError.__name__):
        send(auditor, topic("predictions"))


def test_the_worker_cannot_write_commands_nor_use_another_transactional_id(
    cluster: KafkaCluster,
) -> None:
    worker = cluster.access("worker")
    with pytest.raises(TopicAuthorizationFailedError):
        send(worker, topic("commands"), idempotent=False)
    txn = KafkaProducer(
        **worker.with_delivery("exactly-once").producer(
            transactional_id=f"{NS}-streams-impostor", max_block_ms=20_000
        )
    )
    try:
        with pytest.raises(TransactionalIdAuthorizationFailedError):
            txn.init_transactions()
    finally:
        txn.close(timeout=5)


def test_another_namespace_gets_nothing_until_granted(cluster: KafkaCluster) -> None:
    other = "sasl.other"  # shares the "sasl." prefix: literal ACLs must not leak into it
    ensure_topics(settings_as(Settings(other, cluster.bootstrap), cluster.credentials_dir, "admin"))
    with pytest.raises(TopicAuthorizationFailedError):
        send(cluster.access("streams"), f"{other}.events", idempotent=False)


def test_granting_twice_leaves_exactly_the_plan(cluster: KafkaCluster) -> None:
    assert grant_modelvc_acls(cluster.access("admin"), NS) == len(acl_plan(NS))
    admin = KafkaAdminClient(**cluster.access("admin").admin())
    try:
        acls, _ = admin.describe_acls(
            ACLFilter(
                principal=None,
                host="*",
                operation=ACLOperation.ANY,
                permission_type=ACLPermissionType.ANY,
                resource_pattern=ResourcePatternFilter(
                    ResourceType.ANY, None, ACLResourcePatternType.ANY
                ),
            )
        )
    finally:
        admin.close()
    plan = acl_plan(NS)
    # Other tests grant other namespaces on this cluster: compare on this one's resources.
    names = {g.resource_name for g in plan}
    got = {
        (
            a.principal,
            a.resource_pattern.resource_type.name,
            a.resource_pattern.resource_name,
            a.resource_pattern.pattern_type.name,
            a.permission_type.name,
            a.operation.name,
        )
        for a in acls
        if a.resource_pattern.resource_name in names
    }
    assert got == {
        (
            f"User:{g.principal}",
            g.resource_type,
            g.resource_name,
            g.pattern_type,
            "ALLOW",
            g.operation,
        )
        for g in plan
    }


# -- the whole stack, each process with its own login ----------------------------------------


def test_streams_app_and_worker_serve_a_model_each_with_its_own_login(
    cluster: KafkaCluster, tmp_path: Path
) -> None:
    namespace = "sasl-stack"  # its own topics: the tests above write raw bytes to theirs
    grant_modelvc_acls(cluster.access("admin"), namespace)
    home = tmp_path / "home"
    base = Settings(
        namespace=namespace,
        bootstrap=cluster.bootstrap,
        data_dir=home / "streams",
        artifacts=str(home / "artifacts"),
        archive_dir=home / "archive",
        web_port=free_port(),
        instance_id="streams-sasl",
    )
    home.mkdir()
    ensure_home(home)
    base = with_identity(base, home)  # it issues home/admin.token as the first admin's
    started: list[Spawned] = []
    try:
        # The streams app creates its topics (ensure_topics) as "streams", not as admin.
        started.append(start_streams(settings_as(base, cluster.credentials_dir, "streams"), home))
        worker = settings_as(base, cluster.credentials_dir, "worker")
        started.append(start_worker(worker, home, "worker-1"))
        client = Client(
            f"http://127.0.0.1:{base.web_port}", token=read_token_file(home / "admin.token")
        )
        client.create("churn")
        path = train_model(tmp_path / "m.txt", 1)
        head = client.commit("churn", client.upload(path)["sha256"], "v1")["head"]
        client.set_alias("churn", "production", "main")
        with FeatureProducer(cluster.access("producer"), base.features_topic) as producer:
            producer.publish("churn", {f"Column_{j}": 0.5 for j in range(4)}, event_id="e1")

        def served() -> list[dict[str, Any]]:
            written = values(cluster.access("auditor"), base.predictions_topic)
            return [PREDICTIONS.decode(v) for v in written]

        (prediction,) = wait_for(served, timeout=90.0, what="the prediction of e1")
        assert prediction["feature_event_id"] == "e1"
        assert prediction["commit_id"] == head
    finally:
        for spawned in reversed(started):
            stop(spawned)
